"""Benchmarks: `make bench` / `switchboard bench` (see BENCHMARKS.md)."""
