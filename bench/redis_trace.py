"""What Redis itself says a load did, read without disturbing it: an
operator's connection whose own commands are known and left out, and the
tallies of its two logs of commands -- ``SLOWLOG`` (each command's execution
time) and ``MONITOR`` (every command, and each script's inner commands) --
by command and by script (for :mod:`.redis_cost`)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter, defaultdict
from typing import Any
from urllib.parse import unquote, urlparse

import redis.asyncio as aioredis

#: The client name of :class:`Operator`'s connection.
OPERATOR_NAME = "sb-bench-redis-cost"
#: What :class:`Monitor`'s marks start with (``ECHO``'s argument).
MARK = "sb-bench-mark"
SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})


def resp(*args: str | bytes | int) -> bytes:
    """A command as RESP, for a connection written to by hand (:class:`Monitor`)."""
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out += [f"${len(data)}\r\n".encode(), data, b"\r\n"]
    return b"".join(out)


def decoded(value: Any) -> Any:
    """A RESP2 reply with its bytes decoded (lists too)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list):
        return [decoded(v) for v in value]
    return value


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
        info = decoded(await self.call("CLIENT", "INFO"))
        self.addr = re.search(r"\baddr=(\S+)", info).group(1)
        return self

    async def call(self, *args: str | int) -> Any:
        await self.conn.send_command(*args)
        return await self.conn.read_response()

    async def close(self) -> None:
        if self.conn is not None:
            await self.pool.release(self.conn)
        await self.pool.aclose()


class SlowlogTotals:
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
        args, addr = entry[3], decoded(entry[4])
        name = decoded(entry[5]) if len(entry) > 5 else ""
        command, usec = decoded(args[0]).lower(), int(entry[2])
        if not addr:  # run by a script: the script's entry comes next
            self.pending.append((command, usec))
            return
        if addr == op.addr or name == OPERATOR_NAME:
            self.pending = []
            return
        self.calls[command] += 1
        self.usec[command] += usec
        if command in SCRIPT_COMMANDS and len(args) > 1:
            sha = decoded(args[1]).lower()
            script = self.names.get(sha, f"{command} {sha[:12]}")
            self.script_calls[script] += 1
            self.script_usec[script] += usec
            for inner, inner_usec in self.pending:
                self.inner_calls[script][inner] += 1
                self.inner_usec[script][inner] += inner_usec
        self.pending = []

    def merge(self, other: SlowlogTotals) -> None:
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
            self.writer.write(resp("AUTH", *auth, unquote(self.url.password)))
            line = await self.reader.readline()
            assert line.startswith(b"+OK"), line
        self.writer.write(resp("MONITOR"))
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


class MonitorTotals:
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

    def merge(self, other: MonitorTotals) -> None:
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
