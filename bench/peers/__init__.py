"""Peer servers for the benchmark: self-hosted LangGraph servers serving our graph, on loopback.

Each peer runs in its own cached virtualenv (``bench/.peers/<name>/``) and serves
``graph_app.py`` -- Switchboard's own default graph, copied in at start -- so one benchmark
run can compare Switchboard with what people self-host today::

    from bench.peers import available_peers, get_peer, run_turns, sequential_latency

    for name in available_peers():
        async with get_peer(name) as peer:          # install (cached), start, health-check
            figures = await run_turns(peer.url, threads=20, turns=20, mode=peer.turn_mode)
            latencies = await sequential_latency(peer.url, 50, mode=peer.turn_mode)
                                                     # stop(): server, PostgreSQL, Redis, temp dir

``python -m bench.peers`` runs exactly that as a smoke check and prints the figures.
How each peer is installed, started and stopped is in ``README.md`` beside this file.
"""

from .client import percentile, run_turns, sequential_latency
from .errors import PeerError, PeerInstallError, PeerStartError, PeerUnavailable, TurnError
from .servers import PEERS, Peer, available_peers, get_peer, unavailable_peers

__all__ = [
    "PEERS",
    "Peer",
    "PeerError",
    "PeerInstallError",
    "PeerStartError",
    "PeerUnavailable",
    "TurnError",
    "available_peers",
    "get_peer",
    "percentile",
    "run_turns",
    "sequential_latency",
    "unavailable_peers",
]
