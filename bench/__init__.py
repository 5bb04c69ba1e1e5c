"""Benchmarks: `make bench` / `python -m bench` from the repository root (see BENCHMARKS.md).

Not part of the installed package: it runs from a checkout, on top of the
runtime package (``switchboard``), and imports nothing from ``tests``."""
