"""Test task sources copied into a temporary ``package_dir`` by the executor fixtures."""
