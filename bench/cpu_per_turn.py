"""The CPU each process spends per turn: a cost on the hot path, measured
where wall-clock latency on a shared machine cannot show it.

    python -m bench.cpu_per_turn [--turns 300] [--rounds 1] [--out FILE]

An embedded Redis, a fanout, a gateway and a worker (the default graph),
one device sending ``--turns`` messages one after another (each waits for
its reply). The CPU time (every thread's, ``/proc/PID/task/*/schedstat``) of each
process over the turns, divided by the turns, prints per process and goes
to ``--out`` as JSON.

It measures the services of the interpreter that runs it, so to compare two
checkouts run it with each one's interpreter, this file's package on the
path (``PYTHONPATH=AFTER BEFORE/.venv/bin/python -m bench.cpu_per_turn``),
alternating, as ``bench.interleave`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from switchboard.embedded_redis import EmbeddedRedis, free_port

from .harness import Cluster, process_cpu_seconds, token
from .loadgen import LoadDevice


async def _turns(url: str, count: int, prefix: str) -> float:
    device = LoadDevice(url, token("cpu-user"), "phone")
    await device.connect()
    started = time.perf_counter()
    for n in range(count):
        await device.turn("c", f"{prefix}{n}", f"message {n} about sailing")
    elapsed = time.perf_counter() - started
    await device.close()
    return elapsed


async def measure(turns: int, workdir: Path) -> dict:
    redis = EmbeddedRedis(workdir / "redis", port=free_port())
    redis.start()
    cluster = Cluster(redis.url, workdir)
    try:
        cluster.start("fanout", "fanout")
        gateway = cluster.start("gateway", "gateway")
        cluster.start("worker", "worker")
        await _turns(gateway.url, 20, "warm")  # warm-up: imports, caches, first scripts
        pids = {name: s.process.pid for name, s in cluster.services.items()} | {"redis": redis.process.pid}
        before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
        elapsed = await _turns(gateway.url, turns, "m")
        after = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    finally:
        cluster.stop()
        redis.stop()
    return {"turns": turns, "seconds": round(elapsed, 3),
            "cpu_ms_per_turn": {name: round((after[name] - before[name]) * 1000 / turns, 3) for name in pids}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_per_turn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    runs = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            result = asyncio.run(measure(args.turns, Path(tmp)))
        runs.append(result)
        print(json.dumps(result), flush=True)
    if args.out:
        args.out.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
