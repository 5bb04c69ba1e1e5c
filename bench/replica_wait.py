"""What ``REDIS_WAIT_REPLICAS=1`` costs an accept: the accept script alone
against the script and ``WAIT 1`` on the same connection, on a master with
one replica, both embedded servers on this machine.

    python -m bench.replica_wait [--rounds 6] [--accepts 500] [--concurrency 1,16] [--cluster]
                                 [--out FILE.json]

Rounds alternate the two settings (off, on, off, on, ...) so that the
machine's noise falls on both alike. Each round sends ``--accepts``
messages, each to a new conversation of its own user (the common case: one
accept per turn), ``concurrency`` at a time, through the gateway's own
:class:`~switchboard.gateway.store.GatewayStore`. Printed, and written to
``--out``: the accept's latency (p50, p99) and accepts per second, per
setting and concurrency. What a commit pays is the same ``WAIT`` after its
script: the replica's acknowledgement of one more write.

``--cluster``: on a Redis Cluster of three masters with a replica each
(:mod:`.redis_cluster`), where the accept and its ``WAIT`` go to the
master of its user's slot on a connection of their own
(:func:`~switchboard.shared.connection.run_replicated`); the users spread
over the three.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import tempfile
import time
import uuid
from pathlib import Path

from switchboard.embedded_redis import EmbeddedRedis, free_port
from switchboard.gateway.store import GatewayStore
from switchboard.shared import acl
from switchboard.shared.connection import make_client
from switchboard.shared.settings import RedisSettings, StreamSettings

from .redis_cluster import RedisClusterSet
from .stats import percentile


class _Replica(EmbeddedRedis):
    """An embedded Redis replicating ``master`` as ``sb-admin``."""

    def __init__(self, data_dir: Path, master: EmbeddedRedis):
        super().__init__(data_dir, port=free_port())
        self.master = master

    def command(self) -> list[str]:
        return [*super().command(), "--replicaof", self.master.host, str(self.master.port),
                "--masteruser", acl.ADMIN.name, "--masterauth", self.master.passwords()["admin"],
                "--repl-diskless-sync-delay", "0"]


async def _wait_in_sync(master: RedisSettings, timeout: float = 20.0) -> None:
    client = make_client(master)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await client.execute_command("WAIT", 1, 100) >= 1:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("the replica did not come in sync")
    finally:
        await client.aclose()


async def _round(settings: RedisSettings, accepts: int, concurrency: int) -> dict:
    client = make_client(settings)
    store = GatewayStore(client, StreamSettings(), replicas=settings)
    await store.load()
    latencies: list[float] = []
    run = uuid.uuid4().hex[:6]
    queue = iter(range(accepts))

    async def sender() -> None:
        for i in queue:
            started = time.perf_counter()
            await store.accept(f"rw-{run}-{i}", "d", "c", f"m{i}", f"message {i} of the replica wait bench")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.aclose()
    ms = [s * 1000 for s in latencies]
    return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "per_s": accepts / elapsed}


async def _compare(base: RedisSettings, rounds: int, accepts: int, concurrencies: list[int]) -> dict:
    """``runs[setting][concurrency]``: each round's figures, the settings alternating."""
    settings = {"off": base, "on": dataclasses.replace(base, wait_replicas=1, wait_timeout_ms=5000)}
    runs: dict[str, dict[int, list[dict]]] = {name: {c: [] for c in concurrencies} for name in settings}
    for _ in range(rounds):
        for concurrency in concurrencies:
            for name, s in settings.items():
                runs[name][concurrency].append(await _round(s, accepts, concurrency))
    return runs


async def measure(rounds: int, accepts: int, concurrencies: list[int], *, on_cluster: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="sb-replica-wait-") as tmp:
        if on_cluster:
            with RedisClusterSet(Path(tmp) / "rc") as rc:
                runs = await _compare(RedisSettings(url=rc.operator_url), rounds, accepts, concurrencies)
        else:
            master = EmbeddedRedis(Path(tmp) / "master", port=free_port())
            master.start()
            replica = _Replica(Path(tmp) / "replica", master)
            try:
                replica.start()
                base = RedisSettings(url=master.url)
                await _wait_in_sync(base)
                runs = await _compare(base, rounds, accepts, concurrencies)
            finally:
                replica.stop()
                master.stop()

    def median(values: list[float]) -> float:
        return round(sorted(values)[len(values) // 2], 3)

    figures = {name: {str(c): {k: median([r[k] for r in rs]) for k in ("p50_ms", "p99_ms", "per_s")}
                      for c, rs in by_c.items()} for name, by_c in runs.items()}
    return {"rounds": rounds, "accepts_per_round": accepts, "redis": "cluster" if on_cluster else "single",
            "figures": figures, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--accepts", type=int, default=500)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--cluster", action="store_true", help="on a local cluster of three masters")
    parser.add_argument("--out", type=Path, default=None,
                        help="default bench-results/replica-wait.json (-cluster.json with --cluster)")
    a = parser.parse_args()
    out = a.out or Path(f"bench-results/replica-wait{'-cluster' if a.cluster else ''}.json")
    result = asyncio.run(measure(a.rounds, a.accepts, [int(c) for c in a.concurrency.split(",")],
                                 on_cluster=a.cluster))
    print(f"accept with and without WAIT 1 on {'a cluster of three masters' if a.cluster else 'one master'} "
          f"(medians of {a.rounds} interleaved rounds of {a.accepts} accepts)")
    print(f"{'concurrency':>11}  {'wait':>4}  {'p50 ms':>7}  {'p99 ms':>7}  {'accepts/s':>9}")
    for name, by_c in result["figures"].items():
        for c, f in by_c.items():
            print(f"{c:>11}  {name:>4}  {f['p50_ms']:>7}  {f['p99_ms']:>7}  {f['per_s']:>9.0f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
