"""Benchmarks: scripts that print figures for docs/benchmarks.md (run `python -m bench.NAME`)."""
