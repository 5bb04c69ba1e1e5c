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
import re
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import redis.asyncio as aioredis

from langgraph.checkpoint.redis.util import to_storage_safe_str

from switchboard.shared import keys, scripts

from .harness import token
from .loadgen import LoadDevice
from .stats import percentile

if TYPE_CHECKING:
    from .harness import Cluster
    from .scenarios import Bench

#: The pipeline measured: the default graph, no token streaming (one write per reply).
ENV = {"STREAM_DELTAS": "0"}
GOAL = {"commands_per_turn": 15, "cpu_us_per_turn": 200}
OPERATOR_NAME = "sb-bench-redis-cost"
MARK = "sb-bench-mark"
INFO_SECTIONS = ("server", "cpu", "memory", "persistence", "stats", "commandstats")
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})


def script_names() -> dict[str, str]:
    """SHA1 -> script name, for every script of ``shared/lua`` (redis-py runs
    each by the SHA1 of the full text :func:`scripts.source` builds)."""
    return {hashlib.sha1(scripts.source(name).encode()).hexdigest(): name for name in scripts.names()}


def _resp(*args: str | bytes | int) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out += [f"${len(data)}\r\n".encode(), data, b"\r\n"]
    return b"".join(out)


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


# -- the operator's connection ------------------------------------------------------------------


class Operator:
    """One plain connection to Redis (RESP2), replies undecoded by redis-py,
    so that its own commands and bytes are known exactly and left out."""

    def __init__(self, url: str):
        self.url = url
        self.pool = aioredis.ConnectionPool.from_url(url, protocol=2)
        self.conn: Any = None
        self.addr = ""

    async def open(self) -> Operator:
        self.conn = await self.pool.get_connection()
        await self.call("CLIENT", "SETNAME", OPERATOR_NAME)
        info = _text(await self.call("CLIENT", "INFO"))
        self.addr = re.search(r"\baddr=(\S+)", info).group(1)
        return self

    async def call(self, *args: str | int) -> Any:
        await self.conn.send_command(*args)
        return await self.conn.read_response()

    async def close(self) -> None:
        if self.conn is not None:
            await self.pool.release(self.conn)
        await self.pool.aclose()


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


INFO_REQUEST = _resp("INFO", *INFO_SECTIONS)


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
    saved = _text(await op.call("CONFIG", "GET", "slowlog-*"))
    saved = dict(zip(saved[::2], saved[1::2]))
    await op.call("CONFIG", "SET", "slowlog-log-slower-than", 0, "slowlog-max-len", 200_000)
    buckets = _buckets(turns, size)
    rows, whole = [], _SlowTotals(names)
    try:
        device = await _device(url, "rc-slowlog")
        await op.call("SLOWLOG", "RESET")
        for first, last in buckets:
            await _turns(device, first, last, [])
            entries = await op.call("SLOWLOG", "GET", -1)
            await op.call("SLOWLOG", "RESET")
            bucket = _SlowTotals(names)
            for entry in sorted(entries, key=lambda e: int(e[0])):
                bucket.add(entry, op)
            whole.merge(bucket)
            rows.append({"first": first, "last": last, **bucket.per_turn(last - first + 1)})
        await device.close()
    finally:
        await op.call("CONFIG", "SET", *[x for kv in saved.items() for x in kv])
        await op.call("SLOWLOG", "RESET")
    return {"buckets": rows, "all": whole.per_turn(turns)}


class _SlowTotals:
    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.calls: Counter = Counter()  # top-level command -> calls
        self.usec: Counter = Counter()
        self.script_calls: Counter = Counter()
        self.script_usec: Counter = Counter()
        self.inner_calls: dict[str, Counter] = defaultdict(Counter)  # script -> inner command -> calls
        self.inner_usec: dict[str, Counter] = defaultdict(Counter)
        self.pending: list[tuple[str, int]] = []

    def add(self, entry: list, op: Operator) -> None:
        args, addr = entry[3], _text(entry[4])
        name = _text(entry[5]) if len(entry) > 5 else ""
        command, usec = _text(args[0]).lower(), int(entry[2])
        if not addr:  # run by a script: the script's entry comes next
            self.pending.append((command, usec))
            return
        if addr == op.addr or name == OPERATOR_NAME:
            self.pending = []
            return
        self.calls[command] += 1
        self.usec[command] += usec
        if command in SCRIPT_COMMANDS and len(args) > 1:
            sha = _text(args[1]).lower()
            script = self.names.get(sha, f"{command} {sha[:12]}")
            self.script_calls[script] += 1
            self.script_usec[script] += usec
            for inner, inner_usec in self.pending:
                self.inner_calls[script][inner] += 1
                self.inner_usec[script][inner] += inner_usec
        self.pending = []

    def merge(self, other: _SlowTotals) -> None:
        for mine, theirs in ((self.calls, other.calls), (self.usec, other.usec),
                             (self.script_calls, other.script_calls), (self.script_usec, other.script_usec)):
            mine.update(theirs)
        for name in other.inner_calls:
            self.inner_calls[name].update(other.inner_calls[name])
            self.inner_usec[name].update(other.inner_usec[name])

    def per_turn(self, turns: int) -> dict:
        by_script = {}
        for name in sorted(self.script_calls, key=lambda n: (-self.script_usec[n], n)):
            calls, inner_calls, inner_usec = self.script_calls[name], self.inner_calls[name], self.inner_usec[name]
            by_script[name] = {
                "calls": round(calls / turns, 2), "usec": round(self.script_usec[name] / turns, 1),
                "usec_per_call": round(self.script_usec[name] / calls, 1),
                "inner_per_call": round(sum(inner_calls.values()) / calls, 2),
                "inner_usec_per_call": round(sum(inner_usec.values()) / calls, 1),
                "inner_by_command_per_call": {n: {"calls": round(c / calls, 2),
                                                  "usec": round(inner_usec[n] / calls, 1)}
                                              for n, c in sorted(inner_calls.items(), key=lambda kv: -inner_usec[kv[0]])}}
        inner = Counter()
        for counts in self.inner_calls.values():
            inner.update(counts)
        return {"top_level_commands": round(sum(self.calls.values()) / turns, 2),
                "top_level_usec": round(sum(self.usec.values()) / turns, 1),
                "inner_commands": round(sum(inner.values()) / turns, 2),
                "by_command": {n: {"calls": round(self.calls[n] / turns, 2), "usec": round(self.usec[n] / turns, 1),
                                   "usec_per_call": round(self.usec[n] / self.calls[n], 1)}
                               for n in sorted(self.calls, key=lambda n: (-self.usec[n], n))},
                "by_script": by_script}


_LINE = re.compile(rb'^\+(\d+\.\d+) \[\d+ ([^\]]+)\] "([^"]*)"(?: "([^"]*)")?')


class Monitor:
    """A MONITOR connection: every top-level command, and each script's
    commands attributed to it (Redis 7+ shows a script's commands before the
    script itself; older versions after: :meth:`open` finds which)."""

    def __init__(self, url: str, names: dict[str, str]):
        self.url = urlparse(url)
        self.names = names
        #: (mark, [(command, script or None, its inner commands, bytes, in a MULTI/EXEC)]) since the mark before
        self.marks: list[tuple[str, list]] = []
        self.current: list = []
        self.pending: list[str] = []
        self.transactions: set[str] = set()  #: the clients between MULTI and EXEC
        self.inner_first = True
        self.ignore = ""  #: the operator's address
        self.seen_marks: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None

    async def open(self, op: Operator) -> None:
        self.ignore = op.addr
        self.reader, self.writer = await asyncio.open_connection(self.url.hostname, self.url.port or 6379,
                                                                 limit=1 << 28)
        if self.url.password:
            auth = [unquote(self.url.username)] if self.url.username else []
            self.writer.write(_resp("AUTH", *auth, unquote(self.url.password)))
            line = await self.reader.readline()
            assert line.startswith(b"+OK"), line
        self.writer.write(_resp("MONITOR"))
        assert (await self.reader.readline()).startswith(b"+OK")
        # Which comes first, a script's commands or the script?
        await op.call("EVAL", f"redis.call('ECHO', '{MARK}-probe') return 1", 0)
        order = []
        while len(order) < 2:
            line = await asyncio.wait_for(self.reader.readline(), 30)
            match = _LINE.match(line)
            if not match:
                continue
            if match.group(2) == op.addr.encode() and match.group(3).lower() == b"eval":
                order.append("script")
            elif match.group(2) == b"lua" and f"{MARK}-probe".encode() in line:
                order.append("inner")
        self.inner_first = order[0] == "inner"
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            line = await self.reader.readline()
            if not line:
                return
            match = _LINE.match(line)
            if not match:
                continue
            source, command = match.group(2).decode(), match.group(3).decode().lower()
            arg = (match.group(4) or b"").decode(errors="replace")
            if source == self.ignore:
                if command == "echo" and arg.startswith(MARK):
                    self.marks.append((arg, self.current))
                    self.current = []
                    self.seen_marks.put_nowait(arg)
                continue
            if source == "lua":
                if self.inner_first or not self.current or self.current[-1][1] is None:
                    self.pending.append(command)
                else:
                    self.current[-1][2].append(command)
                continue
            script = None
            if command in SCRIPT_COMMANDS:
                script = self.names.get(arg.lower(), f"{command} {arg[:12]}")
            inner: list[str] = []
            if self.pending:
                if self.inner_first and script is not None:
                    inner, self.pending = self.pending, []
                else:  # not expected: inner commands with no script to give them to
                    self.current.append(("(lua, unattributed)", None, self.pending, 0, False))
                    self.pending = []
            queued = source in self.transactions and command not in ("exec", "discard")
            if command == "multi":
                self.transactions.add(source)
            elif command in ("exec", "discard"):
                self.transactions.discard(source)
            self.current.append((command, script, inner, len(line), queued))

    async def mark(self, op: Operator, label: str) -> None:
        await op.call("ECHO", f"{MARK} {label}")
        while (await asyncio.wait_for(self.seen_marks.get(), 30)) != f"{MARK} {label}":
            pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.writer.close()


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
    rows, whole = [], _MonitorTotals()
    for (first, last), (_, commands) in zip(buckets, monitor.marks[1:]):
        bucket = _MonitorTotals()
        for command in commands:
            bucket.add(*command)
        whole.merge(bucket)
        rows.append({"first": first, "last": last, **bucket.per_turn(last - first + 1)})
    return {"inner_commands_shown": "before the script" if monitor.inner_first else "after the script",
            "buckets": rows, "all": whole.per_turn(turns)}


class _MonitorTotals:
    def __init__(self) -> None:
        self.top: Counter = Counter()
        self.queued: Counter = Counter()  #: top-level commands run by an EXEC
        self.inner: Counter = Counter()
        self.script_calls: Counter = Counter()
        self.script_bytes: Counter = Counter()
        self.script_inner: dict[str, Counter] = defaultdict(Counter)

    def add(self, command: str, script: str | None, inner: list[str], size: int, queued: bool) -> None:
        if script is None and inner:
            script = "(unattributed)"
        else:
            self.top[command] += 1
            self.queued[command] += queued
        if script is not None:
            self.script_calls[script] += command != "(lua, unattributed)"
            self.script_bytes[script] += size
            self.script_inner[script].update(inner)
        self.inner.update(inner)

    def merge(self, other: _MonitorTotals) -> None:
        self.top.update(other.top)
        self.queued.update(other.queued)
        self.inner.update(other.inner)
        self.script_calls.update(other.script_calls)
        self.script_bytes.update(other.script_bytes)
        for name, counts in other.script_inner.items():
            self.script_inner[name].update(counts)

    def per_turn(self, turns: int) -> dict:
        scripts_ = {}
        for name in sorted(self.script_inner, key=lambda n: (-self.script_calls[n], n)):
            calls, inner = self.script_calls[name], self.script_inner[name]
            per_call = max(calls, 1)
            scripts_[name] = {
                "calls": round(calls / turns, 2), "inner_per_turn": round(sum(inner.values()) / turns, 2),
                "inner_per_call": round(sum(inner.values()) / per_call, 2),
                "request_bytes_per_call": round(self.script_bytes[name] / per_call),
                "inner_by_command_per_call": {n: round(c / per_call, 2) for n, c in inner.most_common()}}
        top, inner = sum(self.top.values()), sum(self.inner.values())
        return {"top_level_commands": round(top / turns, 2), "inner_commands": round(inner / turns, 2),
                "all_commands": round((top + inner) / turns, 2),
                "top_level_by_command": {n: round(c / turns, 2) for n, c in self.top.most_common()},
                "inner_by_command": {n: round(c / turns, 2) for n, c in self.inner.most_common()},
                "in_transactions_by_command": {n: round(c / turns, 2) for n, c in self.queued.most_common() if c},
                "by_script": scripts_}


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


# -- printing --------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _grid(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table(result: dict) -> str:
    out = [f"Redis cost per turn: {result['conversations']} conversation(s) x {result['turns']} turns, "
           f"{result['env']}, Redis {result.get('redis_version', '?')}"
           + (f", Redis pinned to CPU {result['cpus_pinned']['redis']}" if result.get("cpus_pinned") else ""),
           f"background (no turns): {result['background']['commands_per_s']} commands/s, "
           f"{result['background']['cpu_us_per_s']} us CPU/s", ""]
    rows = []
    for r in result["buckets"]:
        rows.append([f"{r['first']}-{r['last']}", r["commands"], r["cpu_us"], r["cpu_main_thread_us"], r["proc_cpu_us"],
                     r.get("cmdstat_usec_top_level"), r.get("cmdstat_usec_inner"), r.get("script_overhead_usec"),
                     r.get("cpu_us_less_background"), r["memory_bytes"], r["net_in_bytes"], r["net_out_bytes"],
                     r["aof_bytes"], r["socket_reads"], r["socket_writes"], r["turn_ms_p50"],
                     r.get("checkpoint", {}).get("document_bytes"), r.get("checkpoint", {}).get("memory_bytes"),
                     r.get("checkpoint", {}).get("kept")])
    out.append(_grid(["turns", "cmds", "cpu_us", "main_us", "proc_us", "exec_us", "inner_us", "lua_us", "cpu-bg_us",
                      "mem_B", "in_B", "out_B", "aof_B", "reads", "writes", "turn_ms", "doc_B", "doc_mem_B", "kept"],
                     rows))
    out.append("(per turn. cmds: commandstats calls, script bodies' included; cpu: INFO cpu, main: its main thread, "
               "proc: /proc schedstat; exec: commandstats usec of the services' own commands, inner: of the "
               "commands scripts ran, lua: scripts' time outside their commands; cpu-bg: cpu less the idle rate; "
               "doc: the newest checkpoint document at the bucket's end, as JSON text and as stored, and the "
               "checkpoints kept)")
    names = sorted({n for f in result["ranges"].values() for n in f["by_command"]},
                   key=lambda n: -max(f["by_command"].get(n, {}).get("usec", 0) for f in result["ranges"].values()))
    header = ["command"] + [f"{k} calls/us" for k in result["ranges"]]
    rows = [[n] + [f"{f['by_command'][n]['calls']:g} / {f['by_command'][n]['usec']:g}" if n in f["by_command"]
                   else "-" for f in result["ranges"].values()] for n in names]
    rows.append(["TOTAL (usec double-counts)"] + [f"{f['commands']:g} / {f['cmdstat_usec']:g}"
                                                  for f in result["ranges"].values()])
    for key, label in (("cmdstat_usec_top_level", "executing the services' commands"),
                       ("cmdstat_usec_inner", "  of which: commands run by scripts"),
                       ("script_overhead_usec", "  of which: scripts outside them"), ("cpu_us", "Redis CPU (INFO cpu)")):
        rows.append([label] + [_cell(f.get(key)) for f in result["ranges"].values()])
    out += ["", "per command, per turn (commandstats; script bodies' commands included):", _grid(header, rows)]
    if "slowlog" in result:
        s, spread = result["slowlog"]["all"], _spread(result["slowlog"]["buckets"])
        out += ["", f"SLOWLOG: {s['top_level_commands']} top-level commands per turn (EXEC is never logged), "
                    f"{s['top_level_usec']} us executing them; {s['inner_commands']} run inside scripts"]
        out.append(_grid(["script", "calls/turn", "us/turn", "us/call", "inner/call", "inner_us/call",
                          *(f"us/call {b['first']}-{b['last']}" for b in spread), "slowest inner commands (us/call)"],
                         [[n, v["calls"], v["usec"], v["usec_per_call"], v["inner_per_call"], v["inner_usec_per_call"],
                           *(b["by_script"].get(n, {}).get("usec_per_call") for b in spread),
                           " ".join(f"{c}:{k['usec']:g}" for c, k in list(v["inner_by_command_per_call"].items())[:4])]
                          for n, v in s["by_script"].items()]))
        out.append(_grid(["top-level command", "calls/turn", "us/turn", "us/call"],
                         [[n, v["calls"], v["usec"], v["usec_per_call"]] for n, v in s["by_command"].items()]))
    if "monitor" in result:
        m = result["monitor"]["all"]
        out += ["", f"MONITOR: {m['top_level_commands']} top-level + {m['inner_commands']} inside scripts "
                    f"= {m['all_commands']} commands per turn"]
        out.append(_grid(["script", "calls/turn", "inner/call", "inner/turn", "req_B/call", "inner commands per call"],
                         [[n, v["calls"], v["inner_per_call"], v["inner_per_turn"], v["request_bytes_per_call"],
                           " ".join(f"{c}:{k:g}" for c, k in v["inner_by_command_per_call"].items())]
                          for n, v in m["by_script"].items()]))
        out.append("top level: " + " ".join(f"{c}:{k:g}" for c, k in m["top_level_by_command"].items()))
        if m["in_transactions_by_command"]:
            out.append("  of which run by an EXEC: " + " ".join(
                f"{c}:{k:g}" for c, k in m["in_transactions_by_command"].items()))
    return "\n".join(out)


def _spread(rows: list[dict], count: int = 4) -> list[dict]:
    """A few rows, first to last."""
    if len(rows) <= count:
        return rows
    return [rows[round(i * (len(rows) - 1) / (count - 1))] for i in range(count)]


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
