"""What one user, one device and one turn cost each tier, and Redis memory
over time as users chat and then go idle: the figures under the capacity
model of ``docs/scaling.md``.

    python -m bench.capacity [--users 200] [--devices 2] [--turns 10] [--waves 3] [--ttl 0.25]

The pipeline (a fanout, a gateway, a worker, the default graph) on its own
embedded Redis, with ``CHECKPOINT_TTL`` (minutes) and ``DEDUP_TTL`` short, so
that retention shows within a run. ``--waves`` times, ``--users`` new users
connect ``--devices`` devices each (idle: gateway memory and Redis memory per
connected device), then each sends ``--turns`` messages to one conversation,
one at a time, and disconnects. Over the turns: the CPU of each process per
turn (``/proc``), Redis's own CPU per turn (``INFO cpu``) and its command
calls per turn by command (``INFO commandstats``, script bodies' calls
included), Redis memory per user once they are idle. Then the run waits for
retention: Redis memory and key count are sampled every second from the
start; within 1.5× ``CHECKPOINT_TTL`` of a wave's last message (the most a
user's keys live) and the active expiry's few seconds, every key of its users
must be gone, and the keys left (the work streams, the fanouts' registry)
must not grow from wave to wave. Redis's data set outside the keys is
reported beside them (RediSearch's document table grows with the checkpoints
ever indexed, up to its ``MAXDOCTABLESIZE`` buckets).

Figures print and go to ``docs/bench/capacity.json``; the memory series is
plotted to ``docs/bench/retention.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis

from switchboard.embedded_redis import EmbeddedRedis, free_port

from .harness import Cluster, process_cpu_seconds, process_memory, token
from .loadgen import LoadDevice

OUT = Path(__file__).resolve().parent.parent / "docs" / "bench"
#: What this program itself sends Redis while it samples: not counted in a turn's calls.
OWN_COMMANDS = frozenset({"info", "dbsize", "memory|stats", "memory|usage", "scan", "ft._list", "ft.debug"})


async def _redis_state(client: aioredis.Redis) -> dict:
    memory = await client.info("memory")
    cpu = await client.info("cpu")
    stats = await client.info("commandstats")
    keys = await client.dbsize()
    breakdown = await client.memory_stats()
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    return {"used_memory": int(memory["used_memory"]), "keys": int(keys), "calls": calls,
            "dataset": int(breakdown["dataset.bytes"]), "clients": int(breakdown["clients.normal"]),
            "cpu": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])}


async def _user_bytes(client: aioredis.Redis, user: str) -> tuple[int, int]:
    """Bytes (``MEMORY USAGE``) and number of the keys holding a user: its
    ``{u:USER}`` keys and its threads' checkpoints."""
    total = count = 0
    async for key in client.scan_iter(match=f"*{{u:{user}}}*", count=1000):
        total += int(await client.memory_usage(key, samples=0) or 0)
        count += 1
    return total, count


async def _keys_back_to(client: aioredis.Redis, baseline: dict, timeout: float) -> dict | None:
    """Wait until only the keys of ``baseline`` are left; the state then, or
    None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = await _redis_state(client)
        if now["keys"] <= baseline["keys"]:
            return now
        await asyncio.sleep(1)
    return None


async def _keyspace_bytes(client: aioredis.Redis) -> int:
    """``MEMORY USAGE`` of every key (call only when few are left)."""
    return sum([int(await client.memory_usage(key, samples=0) or 0) async for key in client.scan_iter(count=1000)])


async def _collect_index_garbage(client: aioredis.Redis) -> None:
    """Run RediSearch's collection of deleted documents now. It runs on its
    own every 30 s (``FORK_GC_RUN_INTERVAL``), so between runs the checkpoint
    index holds the postings of expired checkpoints: a saw-tooth, bounded,
    that would hide (or fake) a real growth from wave to wave."""
    for index in await client.execute_command("FT._LIST"):
        await client.execute_command("FT.DEBUG", "GC_FORCEINVOKE", index)


class Sampler:
    """Redis memory and key count every second, from the start of the run."""

    def __init__(self, client: aioredis.Redis):
        self.client = client
        self.started = time.monotonic()
        self.series: list[tuple[float, int, int, int]] = []
        self.marks: list[tuple[float, str]] = []

    def mark(self, label: str) -> None:
        self.marks.append((round(time.monotonic() - self.started, 1), label))

    async def run(self) -> None:
        while True:
            state = await _redis_state(self.client)
            self.series.append((round(time.monotonic() - self.started, 1), state["used_memory"], state["keys"],
                                state["dataset"]))
            await asyncio.sleep(1.0)


async def _wave(url: str, wave: int, users: int, devices: int, turns: int, gateway_pid: int,
                client: aioredis.Redis, pids: dict[str, int], sampler: Sampler) -> dict:
    phones = [[LoadDevice(url, token(f"cap-{wave}-{u}"), f"d{d}") for d in range(devices)] for u in range(users)]
    rss_before = process_memory(gateway_pid)["VmRSS"]
    idle_before = await _redis_state(client)
    limit = asyncio.Semaphore(50)

    async def connect(device: LoadDevice) -> None:
        async with limit:
            await device.connect()

    await asyncio.gather(*(connect(d) for user in phones for d in user))
    sampler.mark(f"wave {wave}: {users * devices} devices connected")
    connected = await _redis_state(client)
    rss_connected = process_memory(gateway_pid)["VmRSS"]

    cpu_before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    redis_before = await _redis_state(client)
    started = time.perf_counter()

    async def chat(u: int, user: list[LoadDevice]) -> None:
        for n in range(turns):
            await user[0].turn("c", f"w{wave}-u{u}-m{n}", f"message {n} about the weather in harbour {u}")

    await asyncio.gather(*(chat(u, user) for u, user in enumerate(phones)))
    seconds = time.perf_counter() - started
    redis_after = await _redis_state(client)
    cpu_after = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    done = users * turns
    calls = {name: redis_after["calls"].get(name, 0) - redis_before["calls"].get(name, 0)
             for name in redis_after["calls"] if name not in OWN_COMMANDS}
    calls = {name: round(n / done, 2) for name, n in sorted(calls.items(), key=lambda kv: -kv[1]) if n}
    await asyncio.gather(*(d.close() for user in phones for d in user))
    sampler.mark(f"wave {wave}: {done} turns done, users idle")
    sample = [f"cap-{wave}-{u}" for u in range(min(users, 20))]
    held = [await _user_bytes(client, user) for user in sample]
    return {
        "users": users, "devices_per_user": devices, "turns_per_user": turns, "turns": done,
        "seconds": round(seconds, 2), "turns_per_s": round(done / seconds, 1),
        "gateway_rss_per_device_kib": round((rss_connected - rss_before) / (users * devices) / 1024, 1),
        "redis_bytes_per_connected_device": round((connected["dataset"] - idle_before["dataset"])
                                                  / (users * devices)),
        "cpu_ms_per_turn": {name: round((cpu_after[name] - cpu_before[name]) * 1000 / done, 3) for name in pids},
        "redis_own_cpu_us_per_turn": round((redis_after["cpu"] - redis_before["cpu"]) * 1e6 / done, 1),
        "redis_calls_per_turn": round(sum(calls.values()), 1),
        "redis_calls_per_turn_by_command": calls,
        "redis_bytes_per_idle_user": round(statistics.median(b for b, _ in held)),
        "redis_keys_per_idle_user": statistics.median(n for _, n in held),
    }


async def measure(args: argparse.Namespace, workdir: Path) -> dict:
    redis = EmbeddedRedis(workdir / "redis", port=free_port())
    redis.start()
    ttl_s = args.ttl * 60
    cluster = Cluster(redis.url, workdir, env={"CHECKPOINT_TTL": str(args.ttl), "DEDUP_TTL": str(max(1, int(ttl_s)))})
    client = aioredis.Redis.from_url(redis.url, decode_responses=True)
    sampler = Sampler(client)
    sampling: asyncio.Task | None = None
    try:
        cluster.start("fanout", "fanout")
        gateway = cluster.start("gateway", "gateway")
        cluster.start("worker", "worker")
        warm = LoadDevice(gateway.url, token("cap-warm"), "d")  # imports, caches, first scripts
        await warm.connect()
        for n in range(10):
            await warm.turn("c", f"warm{n}", "warming up")
        await warm.close()
        # The warm-up user's keys go with retention too: the baseline waits for them.
        await asyncio.sleep(1.5 * ttl_s + 5)
        await _collect_index_garbage(client)
        baseline = await _redis_state(client)
        baseline["keyspace"] = await _keyspace_bytes(client)
        print(json.dumps({"baseline": {k: v for k, v in baseline.items() if k != "calls"}}), flush=True)
        sampling = asyncio.create_task(sampler.run())
        sampler.mark("baseline")
        pids = {name: s.process.pid for name, s in cluster.services.items()} | {"redis": redis.process.pid}
        waves = []
        after: list[dict | None] = []  #: the state once each wave's keys are gone
        for wave in range(args.waves):
            waves.append(await _wave(gateway.url, wave, args.users, args.devices, args.turns, gateway.process.pid,
                                     client, pids, sampler))
            print(json.dumps({"wave": wave, **waves[-1]}), flush=True)
            # Each idle user's keys live up to 1.5 x CHECKPOINT_TTL after its
            # last message; Redis's active expiry then removes them within seconds.
            back = await _keys_back_to(client, baseline, 1.5 * ttl_s + 60)
            if back is not None:
                await _collect_index_garbage(client)
                back = await _redis_state(client)
                back["keyspace"] = await _keyspace_bytes(client)
            after.append(None if back is None else {k: v for k, v in back.items() if k not in ("calls", "cpu")})
            sampler.mark(f"wave {wave}: idle users' keys gone" if back else f"wave {wave}: gave up waiting")
            print(json.dumps({"wave": wave, "after": after[-1]}), flush=True)
        peak = max(s[1] for s in sampler.series)
        await asyncio.sleep(3)
        end = await _redis_state(client)
        end["left"] = {key: await client.memory_usage(key, samples=0) async for key in client.scan_iter(count=1000)}
        end["indexes"] = {}
        for index in await client.execute_command("FT._LIST"):
            info = await client.ft(index).info()
            end["indexes"][index] = {k: info.get(k) for k in ("num_docs", "max_doc_id", "num_records", "inverted_sz_mb",
                                                                "doc_table_size_mb", "total_index_memory_sz_mb")}
    finally:
        if sampling is not None:
            sampling.cancel()
        await client.aclose()
        cluster.stop()
        redis.stop()

    def median(path: str, process: str | None = None) -> float:
        values = [w[path][process] if process else w[path] for w in waves]
        return round(statistics.median(values), 3)

    return {
        "settings": {"users_per_wave": args.users, "devices_per_user": args.devices, "turns_per_user": args.turns,
                     "waves": args.waves, "checkpoint_ttl_min": args.ttl},
        "waves": waves,
        "per_turn": {"cpu_ms": {p: median("cpu_ms_per_turn", p) for p in waves[0]["cpu_ms_per_turn"]},
                     "redis_own_cpu_us": median("redis_own_cpu_us_per_turn"),
                     "redis_calls": median("redis_calls_per_turn")},
        # The gateway's memory grows with the first wave's devices; later waves
        # reuse what those left free (Python keeps its freed memory).
        "per_device": {"gateway_rss_kib": waves[0]["gateway_rss_per_device_kib"],
                       "redis_bytes": median("redis_bytes_per_connected_device")},
        "per_idle_user": {"redis_bytes": median("redis_bytes_per_idle_user"),
                          "redis_keys": median("redis_keys_per_idle_user")},
        "retention": {"baseline": {k: v for k, v in baseline.items() if k not in ("calls", "cpu")},
                      "after_each_wave": after, "peak_used_memory": peak,
                      "end": {k: v for k, v in end.items() if k not in ("calls", "cpu")},
                      "flat": _flat(after, args.slack),
                      "series": sampler.series, "marks": sampler.marks},
        "ran_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _flat(after: list[dict | None], slack: int) -> bool:
    """Every wave's keys went, and the keys left (the work streams, the
    fanouts' registry) do not grow from wave to wave. (The data set outside
    the keys -- RediSearch's document table -- is reported, not judged: it
    grows with the documents ever indexed, up to its own bound.)"""
    if not after or any(a is None for a in after):
        return False
    return all(a["keyspace"] <= after[0]["keyspace"] + slack for a in after[1:])


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result["retention"]["series"]
    fig, memory = plt.subplots(figsize=(9, 3.8))
    t = [s[0] for s in series]
    memory.plot(t, [s[1] / 2**20 for s in series], label="Redis used_memory (MiB)")
    memory.plot(t, [s[3] / 2**20 for s in series], label="of which the data set (MiB)")
    memory.set(xlabel="seconds", ylabel="MiB",
               title=f"Redis memory as users chat, then go idle (CHECKPOINT_TTL = "
                     f"{result['settings']['checkpoint_ttl_min'] * 60:g} s)")
    keys = memory.twinx()
    keys.plot(t, [s[2] for s in series], color="grey", lw=0.8, label="keys")
    keys.set_ylabel("keys")
    for at, label in result["retention"]["marks"]:
        memory.axvline(at, color="grey", lw=0.5, ls=":")
    memory.axhline(result["retention"]["baseline"]["dataset"] / 2**20, color="green", lw=0.6, ls="--",
                   label="data set at the start")
    lines = memory.get_legend_handles_labels()[0] + keys.get_legend_handles_labels()[0]
    memory.legend(lines, [ln.get_label() for ln in lines], loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200, help="new users per wave")
    parser.add_argument("--devices", type=int, default=2, help="devices per user")
    parser.add_argument("--turns", type=int, default=10, help="turns per user, one at a time")
    parser.add_argument("--waves", type=int, default=3)
    parser.add_argument("--ttl", type=float, default=0.25, help="CHECKPOINT_TTL for the run, in minutes")
    parser.add_argument("--slack", type=int, default=4096,
                        help="bytes the keys left may grow from wave to wave and still count as flat")
    parser.add_argument("--out", type=Path, default=OUT / "capacity.json")
    parser.add_argument("--plot", type=Path, default=OUT / "retention.png")
    args = parser.parse_args(argv)
    # A stopped run stops its services and Redis too (the finally above).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(measure(args, Path(tmp)))
    summary = {k: v for k, v in result.items() if k not in ("waves", "retention")}
    summary["retention"] = {k: v for k, v in result["retention"].items() if k not in ("series", "marks")}
    print(json.dumps(summary, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    plot(result, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    return 0 if result["retention"]["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
