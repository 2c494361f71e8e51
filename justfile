# Developer tasks. `just setup` once, then `just test`.

python := env_var_or_default("PYTHON", "python")

# Install the package and its development tools (editable).
setup:
    {{python}} -m pip install -q -e '.[dev]'

# Run the whole suite (includes ruff and mypy --strict, as CI does).
test *ARGS:
    {{python}} -m pytest {{ARGS}}

# Lint and strict type-check only.
lint:
    {{python}} -m ruff check .
    {{python}} -m ruff format --check .
    {{python}} -m mypy

# Run the embedded default: a local cluster, workers and the bundled example job.
local *ARGS:
    {{python}} -m worker local {{ARGS}}

# Benchmarks (figures, never pass/fail).
bench:
    {{python}} -m bench

# Regenerate the gRPC stubs from worker/transport/protos.
protos:
    {{python}} -m worker.transport.codegen

# Install Graphviz's `dot` (Debian/Ubuntu, as root), which `just statecharts` uses to render SVG.
setup-graphviz:
    apt-get update && apt-get install -y graphviz

# Regenerate statecharts/ (Mermaid, DOT, and SVG when Graphviz's `dot` is installed).
statecharts:
    {{python}} -m worker diagram

# Regenerate the configuration reference block of docs/configuration.md from worker/config.py.
config-reference:
    {{python}} -m worker.config_reference

# Build the documentation site strictly into site/.
docs:
    {{python}} -m mkdocs build --strict
