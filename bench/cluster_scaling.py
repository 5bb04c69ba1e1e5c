"""The same load on one Redis and on a Redis Cluster of three masters (a
replica each): turns/s, and Redis CPU per turn on each node.

    python -m bench.cluster_scaling [--users 24] [--turns 10] [--rounds 2] [--out FILE]

Each round runs both, one after the other (interleaved over rounds): a
fanout, a gateway and two workers (the default graph, ``WORK_SHARDS=3`` on
both), and ``--users`` users, each with one device that sends ``--turns``
messages one after another (each waits for its reply), all users at once.
The users are picked so that each master owns as many. Redis CPU is each
node's ``INFO cpu`` (user + sys) before and after the turns, over the turns.

On a machine with fewer cores than nodes and services, turns/s compares
only the two set-ups here, not what more machines give; the per-turn CPU of
each node is what carries over: it says how a master's share of the turns
costs it, and so how many masters a load needs (docs/scaling.md).
The figures go to ``--out`` as JSON, and a plot beside it (``.png``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from switchboard.embedded_redis import EmbeddedRedis, free_port
from switchboard.shared import acl

from .harness import Cluster, token
from .loadgen import LoadDevice
from .redis_cluster import RedisClusterSet

ENV = {"WORK_SHARDS": "3", "WORKER_CONCURRENCY": "64", "OUTBOUND_MAXLEN": "100000"}


def _cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _load(url: str, users: list[str], turns: int) -> tuple[int, float]:
    devices = [LoadDevice(url, token(user), "d") for user in users]
    for device in devices:
        await device.connect()
    for device in devices:
        await device.turn("warm", "w", "warm up")

    async def one(device: LoadDevice) -> None:
        for n in range(turns):
            await device.turn("c", f"m{n}", f"message {n} about sailing")

    started = time.perf_counter()
    await asyncio.gather(*(one(d) for d in devices))
    elapsed = time.perf_counter() - started
    for device in devices:
        await device.close()
    return len(devices) * turns, elapsed


async def _run(url: str, workdir: Path, nodes: dict[str, redis.Redis], users: list[str], turns: int,
               logins: dict[str, dict[str, str]]) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    services = Cluster(url, workdir, env=ENV)
    try:
        for kind, name in (("fanout", "f"), ("gateway", "gw"), ("worker", "w0"), ("worker", "w1")):
            services.start(kind, name, 60.0, False, **logins.get(kind, {}))
        for service in services.services.values():
            services.wait_ready(service, 60.0)
        before = {name: _cpu_seconds(c) for name, c in nodes.items()}
        count, elapsed = await _load(services.services["gw"].url, users, turns)
        after = {name: _cpu_seconds(c) for name, c in nodes.items()}
    finally:
        services.stop()
    cpu = {name: round((after[name] - before[name]) * 1e6 / count, 1) for name in nodes}
    return {"turns": count, "seconds": round(elapsed, 3), "turns_per_s": round(count / elapsed, 1),
            "redis_cpu_us_per_turn": cpu, "redis_cpu_us_per_turn_total": round(sum(cpu.values()), 1)}


async def single(workdir: Path, users: list[str], turns: int) -> dict[str, Any]:
    server = EmbeddedRedis(workdir / "redis", port=free_port())
    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        return {"nodes": {"redis": "master"},
                **await _run(server.url, workdir / "services", {"redis": client}, users, turns, {})}
    finally:
        client.close()
        server.stop()


async def cluster(workdir: Path, users: list[str], turns: int) -> dict[str, Any]:
    with RedisClusterSet(workdir / "cluster") as rc:
        masters = rc.masters()
        roles = {n.name: ("master" if n in masters else "replica") for n in rc.nodes}
        login = {"username": acl.ADMIN.name, "password": rc.passwords()["admin"]}
        clients = {n.name: n.client(**login) for n in rc.nodes}
        logins = {t: rc.tier_login(t) for t in acl.SERVICE_TIERS}
        owners = {user: rc.owner_of(f"{{u:{user}}}").name for user in users}
        try:
            result = await _run(rc.operator_url, workdir / "services", clients, users, turns, logins)
        finally:
            for c in clients.values():
                c.close()
        per_master = {m.name: sum(1 for o in owners.values() if o == m.name) for m in masters}
        return {"nodes": roles, "users_per_master": per_master, **result}


def _users(count: int) -> list[str]:
    """``count`` users, as many on each of the cluster's three masters (their
    slots, by name alone: the same users go to the single Redis)."""
    with tempfile.TemporaryDirectory() as tmp, RedisClusterSet(tmp) as rc:
        groups = rc.users_on_each_master(-(-count // 3))
    users = [u for trio in zip(*groups.values()) for u in trio]
    return users[:count]


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of each set-up's turns/s and per-node CPU per turn."""
    out: dict[str, Any] = {}
    for setup in ("single", "cluster"):
        runs = [r[setup] for r in rounds]
        nodes = runs[0]["redis_cpu_us_per_turn"]
        out[setup] = {
            "turns_per_s": round(statistics.median(r["turns_per_s"] for r in runs), 1),
            "redis_cpu_us_per_turn": {n: round(statistics.median(r["redis_cpu_us_per_turn"][n] for r in runs), 1)
                                      for n in nodes},
            "redis_cpu_us_per_turn_total": round(statistics.median(r["redis_cpu_us_per_turn_total"] for r in runs), 1),
            "nodes": runs[0]["nodes"],
        }
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["median"]
    fig, (cpu_ax, rate_ax) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 1]})
    labels, values, colours = [], [], []
    for setup, colour in (("single", "tab:blue"), ("cluster", "tab:orange")):
        for node, cpu in summary[setup]["redis_cpu_us_per_turn"].items():
            role = summary[setup]["nodes"][node]
            labels.append(f"{setup}\n{node}\n({role})")
            values.append(cpu)
            colours.append(colour if role == "master" else "tab:gray")
    cpu_ax.bar(range(len(values)), values, color=colours)
    cpu_ax.set_xticks(range(len(values)), labels, fontsize=7)
    cpu_ax.set_ylabel("Redis CPU per turn of all turns (µs)")
    cpu_ax.set_title("Redis CPU per node, per turn (each master carries its users' share)")
    setups = ["single", "cluster"]
    rate_ax.bar(setups, [summary[s]["turns_per_s"] for s in setups], color=["tab:blue", "tab:orange"])
    rate_ax.set_ylabel("turns/s")
    rate_ax.set_title(f"{result['users']} users, same machine")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['users']} users x {result['turns']} turns, {result['rounds']} round(s); medians"]
    for setup in ("single", "cluster"):
        s = result["median"][setup]
        nodes = ", ".join(f"{n} ({s['nodes'][n]}) {v:g}" for n, v in s["redis_cpu_us_per_turn"].items())
        lines.append(f"{setup:8s} {s['turns_per_s']:8.1f} turns/s   Redis CPU us/turn: total "
                     f"{s['redis_cpu_us_per_turn_total']:g} = {nodes}")
    return "\n".join(lines)


async def measure(users: int, turns: int, rounds: int, workdir: Path) -> dict[str, Any]:
    names = _users(users)
    runs = []
    for n in range(rounds):
        order = ("single", "cluster") if n % 2 == 0 else ("cluster", "single")  # interleaved
        run: dict[str, Any] = {}
        for setup in order:
            directory = workdir / f"round{n}-{setup}"
            directory.mkdir(parents=True)
            run[setup] = await (single if setup == "single" else cluster)(directory, names, turns)
            print(f"round {n} {setup}: {json.dumps(run[setup])}", flush=True)
        runs.append(run)
    return {"users": users, "turns": turns, "rounds": rounds, "runs": runs, "median": summarize(runs)}


async def cluster_scaling(bench: Any) -> dict[str, Any]:
    """The ``make bench`` scenario (it starts its own Redis servers)."""
    directory = bench.workdir / "cluster-scaling"
    directory.mkdir(parents=True, exist_ok=True)
    result = await measure(bench.scale(6, 24), bench.scale(3, 10), bench.scale(1, 2), directory)
    print(table(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-results/cluster-scaling.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(measure(args.users, args.turns, args.rounds, Path(tmp)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(result, args.out.with_suffix(".png"))
    print(table(result))
    print(f"written: {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
