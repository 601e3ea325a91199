"""Tables, figures and docs pages from finished runs or per-run records; starts no run (see
benchmarks/__init__.py)."""
