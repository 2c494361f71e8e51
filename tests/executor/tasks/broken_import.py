"""A task module whose import fails (copied into the package_dir by the fixtures)."""

raise ImportError("broken_import: intentional import failure")
