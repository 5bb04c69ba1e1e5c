"""Service processes for integration tests (the harness lives in the bench package)."""

from switchboard.bench.harness import FAST_ENV, JWT_SECRET, Cluster, Service, token

__all__ = ["FAST_ENV", "JWT_SECRET", "Cluster", "Service", "token"]
