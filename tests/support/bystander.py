"""A well-behaved second user, measured while an attack runs.

Every abuse test runs its attack while a :class:`Bystander` -- another user,
on its own connection -- keeps doing what a normal client does, and asserts
that the bystander did not notice: its latency stays under a bound and it
lost nothing. Two kinds of probe:

- ``ping``: a ``ping`` frame answered by ``pong`` (the gateway's loop, its
  outbox and the socket);
- ``turn``: a ``send`` answered by its ``assistant`` event (the whole
  pipeline: accept in Redis, a worker's turn, the fanout, delivery).

Use it as an async context manager around the attack::

    async with Bystander(url, token_for(new_user()), probe="ping") as b:
        await attack()
    b.check(p99_ms=100)  # raises AssertionError with the figures
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field

from .client import Device
from .cluster import process_memory

#: The bound of the brief: a bystander's p99 on this 2-core machine.
P99_MS = 100.0
#: Probes a check needs (the context waits for them after a short attack).
MIN_PROBES = 5
#: Probes before the attack (the first, warming up, is not counted).
BASELINE_PROBES = 11


@dataclass
class Figures:
    probe: str
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("inf")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        return (f"{self.probe}: n={len(self.latencies_ms)} p50={self.percentile(0.5):.1f} ms "
                f"p99={self.percentile(0.99):.1f} ms max={max(self.latencies_ms, default=0):.1f} ms "
                f"failures={self.failures[:3]}")


class Bystander:
    def __init__(self, url: str, token: str, *, probe: str = "ping", interval: float = 0.05,
                 timeout: float = 10.0):
        assert probe in ("ping", "turn")
        self.device = Device(url, token, f"bystander-{uuid.uuid4().hex[:6]}")
        self.probe = probe
        self.interval = interval
        self.timeout = timeout
        self.figures = Figures(probe)
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Bystander:
        await self.device.connect()
        # Probes before the attack: the connection and (for turns) the
        # conversation are warm, and the baseline is known, so the figures
        # measure what the attack adds.
        for n in range(BASELINE_PROBES):
            await self._one(-n)
        self.baseline = Figures(self.probe, self.figures.latencies_ms[1:], self.figures.failures)
        self.figures = Figures(self.probe)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        # A short attack still gets a few probes' worth of measurement.
        for _ in range(int(self.timeout / self.interval)):
            if len(self.figures.latencies_ms) + len(self.figures.failures) >= MIN_PROBES:
                break
            await asyncio.sleep(self.interval)
        self._stop.set()
        assert self._task is not None
        await self._task
        await self.device.close()

    async def _run(self) -> None:
        n = 1
        while not self._stop.is_set():
            await self._one(n)
            n += 1
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except TimeoutError:
                pass

    async def _one(self, n: int) -> None:
        start = time.perf_counter()
        try:
            if self.probe == "ping":
                seen = len(self.device.frames)
                await self.device.send_raw(json.dumps({"type": "ping"}))
                await self.device.wait_for(
                    lambda: any(f["type"] == "pong" for f in self.device.frames[seen:]), self.timeout)
            else:
                cmid = f"probe-{n}-{uuid.uuid4().hex[:6]}"
                await self.device.send("bystander", cmid, f"probe {n}")
                await self.device.wait_reply(cmid, self.timeout)
        except (AssertionError, OSError) as exc:
            self.figures.failures.append(f"probe {n}: {exc}"[:300])
            return
        self.figures.latencies_ms.append((time.perf_counter() - start) * 1000)

    def check(self, *, p99_ms: float = P99_MS, min_probes: int = MIN_PROBES) -> Figures:
        """Assert the bystander noticed nothing: no failed probe, enough
        probes, and a p99 at most ``p99_ms`` above its p99 before the attack
        (for pings that is about ``p99_ms``; a turn has its graph's own time).
        Return the figures (tests print them)."""
        f, before = self.figures, self.baseline
        print(f"bystander {f.summary()} (before the attack: {before.summary()})")
        assert not f.failures and not before.failures, f"bystander probes failed: {f.summary()}"
        assert len(f.latencies_ms) >= min_probes, f"too few bystander probes: {f.summary()}"
        bound = before.percentile(0.99) + p99_ms
        assert f.percentile(0.99) <= bound, f"bystander slowed down beyond {bound:.0f} ms: {f.summary()}"
        return f


class RedisProbe:
    """Every other client of Redis, measured: PING round trips while an
    attack runs (a script that runs long stalls every client of Redis)."""

    def __init__(self, redis_url: str, interval: float = 0.02):
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(redis_url)
        self.interval = interval
        self.figures = Figures("redis-ping")
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> RedisProbe:
        await self.client.ping()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task
        await self.client.aclose()

    async def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            await self.client.ping()
            self.figures.latencies_ms.append((time.perf_counter() - start) * 1000)
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except TimeoutError:
                pass

    def check(self, *, p99_ms: float = P99_MS) -> Figures:
        f = self.figures
        print(f"redis {f.summary()}")
        assert f.latencies_ms and f.percentile(0.99) <= p99_ms, f"Redis stalled: {f.summary()}"
        return f


def rss_bytes(pid: int) -> int:
    """A process's resident memory (Linux /proc)."""
    return process_memory(pid)["VmRSS"]
