"""What one conversation turn costs Redis, against the conversation's
length: commands, CPU and memory per turn, by command and by script.

    python -m bench.redis_cost [--turns 300] [--conversations 4] [--bucket 10] [--pin] [--out FILE.json]

The full pipeline (a fanout, a gateway, a worker; the default graph,
``STREAM_DELTAS=0``) on an embedded Redis. Each conversation is a new user
with one device that sends ``--turns`` messages, one after another (each
waits for its reply); the conversations run one after the other. Three
passes, each on its own conversations, so that what one pass does to Redis
never shows in another's figures:

1. *Cost* (``--conversations``): every ``--bucket`` turns an operator
   connection reads ``INFO server cpu memory stats commandstats``. Per turn,
   by bucket: commands (the sum of ``cmdstat_*`` calls, so the commands
   scripts run count too, beside the ``EVALSHA`` itself; this program's own
   ``INFO`` calls left out), Redis's CPU (``used_cpu_sys + used_cpu_user``,
   and the main thread's), ``/proc`` schedstat CPU of the Redis process when
   it runs on this machine, the commandstats ``usec`` (a script's includes
   its inner commands'), network bytes in and out, and ``used_memory``
   growth; and at each bucket's end the conversation's newest checkpoint
   document (its JSON size and ``MEMORY USAGE``: it holds every message, so
   it is what grows with the conversation) and how many checkpoints its
   thread keeps. An idle stretch before the turns measures what the services send
   with no turn at all (sweeps, renewals): the ``background`` figures.
2. *SLOWLOG* (one conversation; ``slowlog-log-slower-than 0``): every
   top-level command with its execution time, so the time of each script
   (``EVALSHA <sha>``, named from :mod:`switchboard.shared.scripts`).
3. *MONITOR* (one conversation): every top-level command and every command
   a script runs (``[0 lua]`` lines), so each script's inner commands. MONITOR
   costs Redis CPU: pass 1 never runs with it.

Figures print as tables and go to ``--out`` as JSON (the plot beside it,
``.png``); ``python -m bench`` runs the same as scenario ``redis_cost``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langgraph.checkpoint.redis.util import to_storage_safe_str

from switchboard.shared import keys, scripts

from .harness import token
from .loadgen import LoadDevice
from .redis_cost_table import table
from .redis_trace import SCRIPT_COMMANDS, Monitor, MonitorTotals, Operator, SlowlogTotals, decoded, resp
from .stats import percentile

if TYPE_CHECKING:
    from .harness import Cluster
    from .scenarios import Bench

#: The pipeline measured: the default graph, no token streaming (one write per reply).
ENV = {"STREAM_DELTAS": "0"}
GOAL = {"commands_per_turn": 15, "cpu_us_per_turn": 200}
INFO_SECTIONS = ("server", "cpu", "memory", "persistence", "stats", "commandstats")


def script_names() -> dict[str, str]:
    """SHA1 -> script name, for every script of ``shared/lua`` (redis-py runs
    each by the SHA1 of the full text :func:`scripts.source` builds)."""
    return {hashlib.sha1(scripts.source(name).encode()).hexdigest(): name for name in scripts.names()}








@dataclass
class Snapshot:
    at: float
    cpu: float  #: used_cpu_sys + used_cpu_user, s
    cpu_main: float | None  #: the main thread's (Redis >= 6.2)
    proc_cpu: float | None  #: /proc schedstat of every thread, s (Redis on this machine)
    memory: int
    net_in: int
    net_out: int
    processed: int  #: total_commands_processed
    stats: dict[str, tuple[int, int]]  #: command -> (calls, usec)
    info_bytes: int  #: this INFO's reply on the wire (in the next delta's net_out)
    reads: int  #: total_reads_processed (read calls on client sockets)
    writes: int  #: total_writes_processed
    aof: int  #: aof_current_size (0: AOF off)
    forks: int  #: total_forks (an AOF rewrite forks)


INFO_REQUEST = resp("INFO", *INFO_SECTIONS)


def _parse_info(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            name, _, value = line.partition(":")
            values[name] = value
    return values


def _proc_cpu(pid: int) -> tuple[float, float] | None:
    """(all threads, main thread) CPU seconds of a local process, or None."""
    task = Path(f"/proc/{pid}/task")
    try:
        if not Path(f"/proc/{pid}/comm").read_text().startswith("redis"):
            return None
        total = 0
        for thread in task.iterdir():
            try:
                total += int((thread / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        main = int((task / str(pid) / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9, main / 1e9


async def snapshot(op: Operator) -> Snapshot:
    raw = await op.call("INFO", *INFO_SECTIONS)
    values = _parse_info(raw.decode())
    stats = {}
    for name, value in values.items():
        if name.startswith("cmdstat_"):
            fields = dict(part.split("=", 1) for part in value.split(","))
            stats[name.removeprefix("cmdstat_").lower()] = (int(fields["calls"]), int(fields["usec"]))
    main = None
    if "used_cpu_sys_main_thread" in values:
        main = float(values["used_cpu_sys_main_thread"]) + float(values["used_cpu_user_main_thread"])
    proc = _proc_cpu(int(values.get("process_id", "0")))
    return Snapshot(time.monotonic(), float(values["used_cpu_sys"]) + float(values["used_cpu_user"]), main,
                    proc[0] if proc else None, int(values["used_memory"]), int(values["total_net_input_bytes"]),
                    int(values["total_net_output_bytes"]), int(values["total_commands_processed"]), stats,
                    len(raw) + len(f"${len(raw)}\r\n\r\n"), int(values.get("total_reads_processed", 0)),
                    int(values.get("total_writes_processed", 0)), int(values.get("aof_current_size", 0)),
                    int(values.get("total_forks", 0)))


@dataclass
class Delta:
    """What Redis did between two snapshots, this program's INFO left out."""

    seconds: float = 0.0
    cpu_us: float = 0.0
    cpu_main_us: float | None = 0.0
    proc_cpu_us: float | None = 0.0
    memory: int = 0
    net_in: int = 0
    net_out: int = 0
    processed: int = 0
    reads: int = 0
    writes: int = 0
    aof: int = 0
    forks: int = 0
    calls: Counter = field(default_factory=Counter)
    usec: Counter = field(default_factory=Counter)

    @classmethod
    def between(cls, a: Snapshot, b: Snapshot) -> Delta:
        calls, usec = Counter(), Counter()
        for name, (n, us) in b.stats.items():
            n0, us0 = a.stats.get(name, (0, 0))
            if n - n0:
                calls[name], usec[name] = n - n0, us - us0
        # Ours: the INFO that took snapshot `a` (counted once it ran), its reply's
        # bytes, and the request of snapshot `b` (read before `b` was counted).
        own_us = usec["info"] / calls["info"] if calls["info"] else 0.0
        calls["info"] -= 1
        usec["info"] -= own_us
        if calls["info"] <= 0:
            del calls["info"], usec["info"]
        proc = None if a.proc_cpu is None or b.proc_cpu is None else (b.proc_cpu - a.proc_cpu) * 1e6 - own_us
        main = None if a.cpu_main is None or b.cpu_main is None else (b.cpu_main - a.cpu_main) * 1e6 - own_us
        return cls(b.at - a.at, (b.cpu - a.cpu) * 1e6 - own_us, main, proc, b.memory - a.memory,
                   b.net_in - a.net_in - len(INFO_REQUEST), b.net_out - a.net_out - a.info_bytes,
                   b.processed - a.processed - 1, b.reads - a.reads - 1, b.writes - a.writes - 1,
                   max(0, b.aof - a.aof), b.forks - a.forks, calls, usec)

    def add(self, other: Delta) -> None:
        self.seconds += other.seconds
        self.cpu_us += other.cpu_us
        self.cpu_main_us = None if self.cpu_main_us is None or other.cpu_main_us is None \
            else self.cpu_main_us + other.cpu_main_us
        self.proc_cpu_us = None if self.proc_cpu_us is None or other.proc_cpu_us is None \
            else self.proc_cpu_us + other.proc_cpu_us
        self.memory += other.memory
        self.net_in += other.net_in
        self.net_out += other.net_out
        self.processed += other.processed
        self.reads += other.reads
        self.writes += other.writes
        self.aof += other.aof
        self.forks += other.forks
        self.calls.update(other.calls)
        self.usec.update(other.usec)


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def per_turn(delta: Delta, turns: int, background: Delta | None = None) -> dict:
    """A delta's figures divided by the turns it covers; with ``background``
    (an idle stretch's), also with that rate of idle work taken out."""
    by_command = {name: {"calls": round(delta.calls[name] / turns, 2), "usec": round(delta.usec[name] / turns, 1)}
                  for name in sorted(delta.calls, key=lambda n: (-delta.usec[n], n))}
    out = {
        "turns": turns,
        "ms_per_turn": round(delta.seconds * 1000 / turns, 2),
        "commands": round(sum(delta.calls.values()) / turns, 2),
        "commands_processed": round(delta.processed / turns, 2),
        "cpu_us": round(delta.cpu_us / turns, 1),
        "cpu_main_thread_us": _r(delta.cpu_main_us and delta.cpu_main_us / turns),
        "proc_cpu_us": _r(delta.proc_cpu_us and delta.proc_cpu_us / turns),
        "cmdstat_usec": round(sum(delta.usec.values()) / turns, 1),
        "memory_bytes": round(delta.memory / turns),
        "net_in_bytes": round(delta.net_in / turns),
        "net_out_bytes": round(delta.net_out / turns),
        "socket_reads": round(delta.reads / turns, 2),
        "socket_writes": round(delta.writes / turns, 2),
        "aof_bytes": round(delta.aof / turns),
        "forks": delta.forks,
        "by_command": by_command,
    }
    if background is not None and background.seconds > 0:
        scale = delta.seconds / background.seconds / turns
        out["background"] = {"commands": round(sum(background.calls.values()) * scale, 2),
                             "cpu_us": round(background.cpu_us * scale, 1)}
        out["commands_less_background"] = round(out["commands"] - out["background"]["commands"], 2)
        out["cpu_us_less_background"] = round(out["cpu_us"] - out["background"]["cpu_us"], 1)
    return out


def _buckets(turns: int, size: int) -> list[tuple[int, int]]:
    return [(first, min(first + size - 1, turns)) for first in range(1, turns + 1, size)]


def _ranges(turns: int, size: int) -> list[tuple[int, int]]:
    """Turn ranges summarised side by side: the first 20, 61-80, the last 20
    (on bucket edges)."""
    span = max(size, 20 // size * size)
    ranges = [(1, min(span, turns))]
    if turns >= 100:
        ranges.append((61, 60 + span))
    if turns >= 2 * span:
        last = (turns - 1) // size * size + 1
        ranges.append((max(1, last - span + size), turns))
    return list(dict.fromkeys(ranges))


# -- driving turns ---------------------------------------------------------------------------


async def _device(url: str, prefix: str) -> LoadDevice:
    device = await _user_device(url, prefix)
    return device[1]


async def _user_device(url: str, prefix: str) -> tuple[str, LoadDevice]:
    user = f"{prefix}-{uuid.uuid4().hex[:8]}"
    device = LoadDevice(url, token(user), "d")
    await device.connect()
    return user, device


async def checkpoint_size(op: Operator, user: str) -> dict:
    """The newest checkpoint document of ``user``'s conversation ``c``: its
    size as stored (``MEMORY USAGE``) and as JSON text, and how many of them
    the thread keeps. Read between two snapshots: never counted."""
    thread = keys.thread_id(user, "c")
    latest = await op.call("GET", f"checkpoint_latest:{thread}:{to_storage_safe_str('')}")
    if not latest:
        return {"document_bytes": 0, "memory_bytes": 0, "kept": 0}
    document = await op.call("JSON.GET", latest)
    memory = await op.call("MEMORY", "USAGE", latest)
    kept = await op.call("ZCARD", keys.thread_checkpoints(thread))
    return {"document_bytes": len(document or b""), "memory_bytes": int(memory or 0), "kept": int(kept)}


async def _turns(device: LoadDevice, first: int, last: int, latencies: list[float]) -> None:
    for n in range(first, last + 1):
        latencies.append(await device.turn("c", f"m{n}", f"message {n} about sailing"))


async def warm_up(url: str, turns: int = 20) -> None:
    """Imports, caches, script loads, the checkpoint index, on a user of its own."""
    device = await _device(url, "rc-warm")
    await _turns(device, 1, turns, [])
    await device.close()


async def cost_pass(url: str, op: Operator, conversations: int, turns: int, size: int,
                    idle_seconds: float) -> dict:
    """Pass 1: INFO snapshots every ``size`` turns of each conversation."""
    start = await snapshot(op)
    await asyncio.sleep(idle_seconds)
    background = Delta.between(start, await snapshot(op))
    buckets = _buckets(turns, size)
    totals = [Delta() for _ in buckets]
    latencies: list[list[float]] = [[] for _ in buckets]
    sizes: list[list[dict]] = [[] for _ in buckets]
    for _ in range(conversations):
        user, device = await _user_device(url, "rc")
        before = await snapshot(op)
        for i, (first, last) in enumerate(buckets):
            await _turns(device, first, last, latencies[i])
            after = await snapshot(op)
            totals[i].add(Delta.between(before, after))
            sizes[i].append(await checkpoint_size(op, user))
            before = await snapshot(op)  # the size's reads left out
        await device.close()
    rows = []
    for (first, last), total, times, size_of in zip(buckets, totals, latencies, sizes):
        row = {"first": first, "last": last, **per_turn(total, (last - first + 1) * conversations, background)}
        row["turn_ms_p50"] = round(percentile(times, 50) * 1000, 2)
        row["checkpoint"] = {name: round(sum(s[name] for s in size_of) / len(size_of)) for name in size_of[0]}
        rows.append(row)
    ranges = {}
    for first, last in _ranges(turns, size):
        total = Delta()
        for (b_first, b_last), delta in zip(buckets, totals):
            if first <= b_first and b_last <= last:
                total.add(delta)
        ranges[f"{first}-{last}"] = per_turn(total, (last - first + 1) * conversations, background)
    whole = Delta()
    for delta in totals:
        whole.add(delta)
    return {"background": {"seconds": round(background.seconds, 2),
                           "commands_per_s": round(sum(background.calls.values()) / background.seconds, 1),
                           "cpu_us_per_s": round(background.cpu_us / background.seconds, 1),
                           "by_command_per_s": {n: round(c / background.seconds, 2)
                                                for n, c in background.calls.most_common()}},
            "buckets": rows, "ranges": ranges, "all": per_turn(whole, turns * conversations, background)}


async def slowlog_pass(url: str, op: Operator, turns: int, size: int, names: dict[str, str]) -> dict:
    """Pass 2: every command with its execution time (SLOWLOG at 0 µs). A
    command a script runs is logged too, with no client address, just before
    the script's own entry: so each script's time, and its inner commands'."""
    saved = decoded(await op.call("CONFIG", "GET", "slowlog-*"))
    saved = dict(zip(saved[::2], saved[1::2]))
    await op.call("CONFIG", "SET", "slowlog-log-slower-than", 0, "slowlog-max-len", 200_000)
    buckets = _buckets(turns, size)
    rows, whole = [], SlowlogTotals(names)
    try:
        device = await _device(url, "rc-slowlog")
        await op.call("SLOWLOG", "RESET")
        for first, last in buckets:
            await _turns(device, first, last, [])
            entries = await op.call("SLOWLOG", "GET", -1)
            await op.call("SLOWLOG", "RESET")
            bucket = SlowlogTotals(names)
            for entry in sorted(entries, key=lambda e: int(e[0])):
                bucket.add(entry, op)
            whole.merge(bucket)
            rows.append({"first": first, "last": last, **bucket.per_turn(last - first + 1)})
        await device.close()
    finally:
        await op.call("CONFIG", "SET", *[x for kv in saved.items() for x in kv])
        await op.call("SLOWLOG", "RESET")
    return {"buckets": rows, "all": whole.per_turn(turns)}








async def monitor_pass(url: str, redis_url: str, op: Operator, turns: int, size: int,
                       names: dict[str, str]) -> dict:
    """Pass 3: top-level commands and each script's inner commands, by bucket."""
    monitor = Monitor(redis_url, names)
    await monitor.open(op)
    buckets = _buckets(turns, size)
    try:
        device = await _device(url, "rc-monitor")
        await monitor.mark(op, "start")
        for first, last in buckets:
            await _turns(device, first, last, [])
            await monitor.mark(op, f"{first}-{last}")
        await device.close()
    finally:
        await monitor.close()
    rows, whole = [], MonitorTotals()
    for (first, last), (_, commands) in zip(buckets, monitor.marks[1:]):
        bucket = MonitorTotals()
        for command in commands:
            bucket.add(*command)
        whole.merge(bucket)
        rows.append({"first": first, "last": last, **bucket.per_turn(last - first + 1)})
    return {"inner_commands_shown": "before the script" if monitor.inner_first else "after the script",
            "buckets": rows, "all": whole.per_turn(turns)}




# -- the whole measurement -------------------------------------------------------------------


def split_usec(figures: dict, monitor: dict) -> None:
    """Split commandstats usec -- a script's holds its inner commands', an
    EXEC's the commands it ran -- by the share of each command's calls that
    MONITOR saw at top level, in a MULTI/EXEC or inside a script:
    ``cmdstat_usec_top_level`` (executing what the services sent, each
    script and transaction whole), ``cmdstat_usec_inner`` (the commands
    scripts ran) and ``script_overhead_usec``: scripts' time outside their
    commands (Lua, and each ``redis.call``'s checks and conversions)."""
    top, queued, inner = (monitor["top_level_by_command"], monitor.get("in_transactions_by_command", {}),
                          monitor["inner_by_command"])
    top_usec = inner_usec = script_usec = 0.0
    for name, value in figures["by_command"].items():
        calls = top.get(name, 0) + inner.get(name, 0)
        alone = (top.get(name, 0) - queued.get(name, 0)) / calls if calls else 1.0
        top_usec += value["usec"] * alone
        inner_usec += value["usec"] * (inner.get(name, 0) / calls if calls else 0.0)
        if name in SCRIPT_COMMANDS:
            script_usec += value["usec"]
    figures["cmdstat_usec_top_level"] = round(top_usec, 1)
    figures["cmdstat_usec_inner"] = round(inner_usec, 1)
    figures["script_overhead_usec"] = round(script_usec - inner_usec, 1)


def pin(redis_pid: int) -> dict | None:
    """Give Redis (every thread) the last CPU of this process's and keep this
    process -- and so the services it starts next -- off it: Redis's commands
    then take no time waiting for a core, as on a server of its own. None
    when Redis is not a local process or there is one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or _proc_cpu(redis_pid) is None:
        return None
    for task in Path(f"/proc/{redis_pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), {cpus[-1]})
        except OSError:
            pass  # a thread that just ended
    os.sched_setaffinity(0, cpus[:-1])
    return {"redis": cpus[-1:], "others": cpus[:-1]}


async def measure(bench: Bench, *, turns: int, conversations: int, size: int = 10, idle_seconds: float = 3.0,
                  slowlog: bool = True, monitor: bool = True, pinned: bool = False) -> dict:
    await bench.flush()
    names = script_names()
    op = await Operator(bench.redis_url).open()
    server = _parse_info((await op.call("INFO", "server")).decode())
    affinity = os.sched_getaffinity(0)
    cluster: Cluster | None = None
    try:
        pins = pin(int(server.get("process_id", "0"))) if pinned else None
        cluster = bench.cluster(("fanout", "f"), ("worker", "w"), ("gateway", "gw"), **ENV)
        url = cluster.services["gw"].url
        await warm_up(url)
        started = time.monotonic()
        result: dict[str, Any] = {"turns": turns, "conversations": conversations, "bucket": size,
                                  "env": ENV, "redis_version": server.get("redis_version", ""), "cpus_pinned": pins,
                                  **await cost_pass(url, op, conversations, turns, size, idle_seconds)}
        result["cost_pass_s"] = round(time.monotonic() - started, 1)
        if slowlog:
            result["slowlog"] = await slowlog_pass(url, op, turns, size, names)
        if monitor:
            result["monitor"] = await monitor_pass(url, bench.redis_url, op, turns, size, names)
            for name, figures in result["ranges"].items():
                first, last = map(int, name.split("-"))
                rows = [r for r in result["monitor"]["buckets"] if first <= r["first"] and r["last"] <= last]
                if rows:
                    split_usec(figures, _mean_monitor(rows))
            split_usec(result["all"], result["monitor"]["all"])
            for row, mon in zip(result["buckets"], result["monitor"]["buckets"]):
                split_usec(row, mon)
    finally:
        await op.close()
        if cluster is not None:
            cluster.stop()
        os.sched_setaffinity(0, affinity)
    overall = result["all"]
    result["goal"] = GOAL
    result["met"] = (overall["commands"] <= GOAL["commands_per_turn"]
                     and overall["cpu_us"] <= GOAL["cpu_us_per_turn"]) if turns >= 300 else None
    return result


def _mean_monitor(rows: list[dict]) -> dict:
    top, queued, inner = Counter(), Counter(), Counter()
    for row in rows:
        top.update(row["top_level_by_command"])
        queued.update(row["in_transactions_by_command"])
        inner.update(row["inner_by_command"])
    return {"top_level_by_command": top, "in_transactions_by_command": queued, "inner_by_command": inner}


async def redis_cost(bench: Bench) -> dict:
    result = await measure(bench, turns=bench.scale(30, 300), conversations=bench.scale(2, 4),
                           idle_seconds=bench.scale(1.0, 3.0))
    print(table(result), flush=True)
    return result


# -- standalone ------------------------------------------------------------------------------


async def _standalone(args: argparse.Namespace, workdir: Path) -> dict:
    from switchboard.embedded_redis import EmbeddedRedis, free_port

    from .scenarios import Bench

    redis = EmbeddedRedis(workdir / "redis", port=free_port())
    redis.start()
    try:
        bench = Bench(redis.url, workdir, quick=False)
        return await measure(bench, turns=args.turns, conversations=args.conversations, size=args.bucket,
                             idle_seconds=args.idle, slowlog=args.slowlog, monitor=args.monitor, pinned=args.pin)
    finally:
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--bucket", type=int, default=10, help="turns between two INFO readings")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of no turns, for the background")
    parser.add_argument("--slowlog", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--monitor", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--pin", action="store_true",
                        help="Redis alone on the last CPU, everything else on the others (no waiting for a core)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="switchboard-redis-cost-") as tmp:
        result = asyncio.run(_standalone(args, Path(tmp)))
    print(table(result), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        from .report import redis_cost_plot

        redis_cost_plot(result, args.out.with_suffix(".png"))
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
