"""Why a peer server could not be installed, started or driven.

::

    PeerError
     ├── PeerUnavailable    this machine lacks what the peer needs (a Python, PostgreSQL, Redis)
     ├── PeerInstallError   creating its virtualenv or ``pip install`` failed (see install.log)
     ├── PeerStartError     a process exited, or the server never became healthy (log tail inside)
     └── TurnError          a turn failed where every turn must succeed (``sequential_latency``)
"""

from __future__ import annotations


class PeerError(Exception):
    """Base of every error this package raises."""


class PeerUnavailable(PeerError):
    """The peer cannot run on this machine; the message says why."""


class PeerInstallError(PeerError):
    """The peer's virtualenv could not be created or populated."""


class PeerStartError(PeerError):
    """A peer process died or did not become healthy in time."""


class TurnError(PeerError):
    """One conversation turn failed (HTTP error, server error, or a wrong reply)."""
