"""Service processes for integration tests (the harness lives in the bench package:
tests import bench, bench never imports tests)."""

from bench.harness import FAST_ENV, JWT_SECRET, Cluster, Service, process_memory, token

__all__ = ["FAST_ENV", "JWT_SECRET", "Cluster", "Service", "process_memory", "token"]
