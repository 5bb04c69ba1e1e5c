"""The benchmark scenarios. Each takes a :class:`Bench` and returns a dict of
figures; the runner (:mod:`.run`) writes them out with plots and a table."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.redis.aio import AsyncRedisSaver

from switchboard.gateway.store import GatewayStore
from switchboard.shared import keys
from switchboard.shared.settings import StreamSettings
from switchboard.worker.graph import build

from .graphs import THINK_MS, TOKEN_MS
from .harness import Cluster, token
from .loadgen import LoadDevice
from .prehello import prehello
from .cluster_scaling import cluster_scaling
from .redis_cost import redis_cost
from .stats import percentile, summary_ms

THINK_GRAPH = "bench.graphs:thinking"  # "sleep:<s> ..." texts think for <s> seconds
REALISTIC_GRAPH = "bench.graphs:realistic"
BENCH_ENV = {"LOG_LEVEL": "INFO", "CLAIM_IDLE": "15", "LEASE_TTL": "15", "FANOUT_SWEEP": "2",
             "FANOUT_ALIVE_TTL": "3", "OUTBOUND_MAXLEN": "100000", "WORKER_CONCURRENCY": "128"}


class Bench:
    def __init__(self, redis_url: str, workdir: Path, quick: bool):
        self.redis_url = redis_url
        self.workdir = workdir
        self.quick = quick
        self._n = 0

    def cluster(self, *specs: tuple[str, str], **env: str) -> Cluster:
        self._n += 1
        directory = self.workdir / f"run{self._n}"
        directory.mkdir(parents=True, exist_ok=True)
        cluster = Cluster(self.redis_url, directory, env={**BENCH_ENV, **env})
        try:
            cluster.start_many(*specs, timeout=60)
        except BaseException:
            cluster.stop()  # never leave half a cluster running
            raise
        return cluster

    def scale(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    async def flush(self) -> None:
        client = aioredis.Redis.from_url(self.redis_url)
        await client.flushall()
        await client.aclose()


def _client(url: str) -> aioredis.Redis:
    """A client that waits for a free connection instead of failing."""
    return aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
        url, max_connections=256, timeout=30, socket_timeout=30, decode_responses=True))


def _user(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def graph_time(turns: int) -> list[float]:
    """The default graph's own time per turn (no checkpointer, no I/O)."""
    graph = build().compile()
    state: dict[str, Any] = {"messages": []}
    times = []
    for i in range(turns):
        state["messages"] = list(state["messages"]) + [HumanMessage(f"message {i} about sailing")]
        start = time.perf_counter()
        state = await graph.ainvoke(state)
        times.append(time.perf_counter() - start)
    return times


# -- 1. turn latency --------------------------------------------------------------------


async def turn_latency(bench: Bench) -> dict:
    turns = bench.scale(30, 300)
    await bench.flush()
    cluster = bench.cluster(("fanout", "f"), ("worker", "w"), ("gateway", "gw"))
    try:
        user = _user("lat")
        device = LoadDevice(cluster.services["gw"].url, token(user), "d")
        await device.connect()
        for i in range(5):  # warm-up: imports, script loads, index creation
            await device.turn("warm", f"w{i}", "warming up")
        latencies = []
        for i in range(turns):
            latencies.append(await device.turn("c", f"m{i}", f"message {i} about sailing"))
        await device.close()
    finally:
        cluster.stop()
    own = await graph_time(turns)
    graph_p50 = percentile(own, 50)
    overhead = [max(0.0, t - graph_p50) for t in latencies]
    early = overhead[:50]
    result = {"turns": turns, "end_to_end": summary_ms(latencies), "graph_own": summary_ms(own),
              "overhead": summary_ms(overhead), "overhead_first_50_turns": summary_ms(early),
              "series_ms": [round(t * 1000, 3) for t in latencies]}
    result["goal"] = {"p50_ms": 5.0, "p99_ms": 20.0}
    result["met"] = result["overhead"]["p50_ms"] <= 5.0 and result["overhead"]["p99_ms"] <= 20.0
    return result


# -- 2. throughput vs the floor ----------------------------------------------------------


async def _closed_loop(urls: list[str], conversations: int, turns: int, text: str = "hello there") -> dict:
    devices = []
    for i in range(conversations):
        user = _user("tp")
        device = LoadDevice(urls[i % len(urls)], token(user), "d")
        await device.connect()
        devices.append(device)
    for device in devices:  # warm-up
        await device.turn("warm", "w", "warm")

    async def one(device: LoadDevice) -> list[float]:
        return [await device.turn("c", f"m{i}", f"{text} {i}") for i in range(turns)]

    start = time.monotonic()
    results = await asyncio.gather(*(one(d) for d in devices))
    elapsed = time.monotonic() - start
    for device in devices:
        await device.close()
    latencies = [t for r in results for t in r]
    return {"turns": len(latencies), "seconds": round(elapsed, 3), "turns_per_s": round(len(latencies) / elapsed, 1),
            "latency": summary_ms(latencies)}


async def floor(redis_url: str, conversations: int, turns: int, durability: str | None = None) -> dict:
    """The same graph, run directly with ainvoke on the same checkpointer, same concurrency."""
    client = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
        redis_url, max_connections=conversations + 8, socket_timeout=10))
    saver = AsyncRedisSaver(redis_client=client)
    await saver.asetup()
    graph = build().compile(checkpointer=saver)
    threads = [f"floor-{uuid.uuid4().hex[:8]}" for _ in range(conversations)]
    kwargs = {"durability": durability} if durability else {}

    async def one(thread: str, n: int, tag: str) -> list[float]:
        config = {"configurable": {"thread_id": thread}}
        out = []
        for i in range(n):
            start = time.monotonic()
            await graph.ainvoke({"messages": [HumanMessage(f"hello there {tag}{i}")]}, config, **kwargs)
            out.append(time.monotonic() - start)
        return out

    await asyncio.gather(*(one(t + "-warm", 1, "w") for t in threads))
    start = time.monotonic()
    results = await asyncio.gather(*(one(t, turns, "") for t in threads))
    elapsed = time.monotonic() - start
    await client.aclose()
    latencies = [t for r in results for t in r]
    return {"turns": len(latencies), "seconds": round(elapsed, 3), "turns_per_s": round(len(latencies) / elapsed, 1),
            "latency": summary_ms(latencies), "durability": durability or "async (default)"}


async def throughput(bench: Bench) -> dict:
    conversations, turns = bench.scale(8, 20), bench.scale(5, 20)
    await bench.flush()
    cluster = bench.cluster(("fanout", "f"), ("worker", "w"), ("gateway", "gw"))
    try:
        system = await _closed_loop([cluster.services["gw"].url], conversations, turns)
    finally:
        cluster.stop()
    await bench.flush()
    base = await floor(bench.redis_url, conversations, turns)
    exit_mode = await floor(bench.redis_url, conversations, turns, durability="exit")
    ratio = system["turns_per_s"] / base["turns_per_s"]
    return {"conversations": conversations, "turns_each": turns, "system": system, "floor": base,
            "floor_durability_exit": exit_mode, "ratio": round(ratio, 3), "goal": {"ratio": 1.0},
            "met": ratio >= 1.0}


# -- 4. offered load with a realistic, streaming graph -----------------------------------------


async def offered_load(bench: Bench) -> dict:
    """Turns offered at a fixed rate (open loop), each a new conversation, with
    :data:`bench.graphs.realistic`: 200 ms to the first token, then
    a word every 10 ms, streamed as ``delta`` events. Latency to the first
    delta and to the final event, as the rate rises to saturation."""
    rates = [5, 10, 20] if bench.quick else [10, 25, 50, 100, 150, 200, 300]
    seconds = bench.scale(3, 10)
    await bench.flush()
    cluster = bench.cluster(("fanout", "f"), ("worker", "w"), ("gateway", "gw"), GRAPH=REALISTIC_GRAPH)
    points = []
    try:
        users = 50
        devices = []
        for i in range(users):
            device = LoadDevice(cluster.services["gw"].url, token(_user("ol")), "d")
            await device.connect()
            devices.append(device)
        for rate in rates:
            sends: list[tuple[LoadDevice, str, float]] = []
            start = time.monotonic()
            n = int(rate * seconds)
            for i in range(n):
                target = start + i / rate
                delay = target - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                device = devices[i % users]
                cmid = f"r{rate}-{i}"
                # Each turn is a new conversation: turns of one conversation queue.
                sends.append((device, cmid, await device.send(f"c{rate}-{i}", cmid, "think about it")))
            finals, firsts = [], []
            timeouts = 0
            for device, cmid, sent in sends:
                try:
                    finals.append(await device.reply(cmid, timeout=60) - sent)
                except TimeoutError:
                    timeouts += 1
                    continue
                if cmid in device.first_deltas:
                    firsts.append(device.first_deltas[cmid] - sent)
            elapsed = max(device.replies.get(cmid, start) for device, cmid, _ in sends) - start
            points.append({"offered_per_s": rate, "achieved_per_s": round(len(finals) / max(elapsed, 1e-9), 1),
                           "first_delta": summary_ms(firsts), "final": summary_ms(finals),
                           "streamed": len(firsts), "timeouts": timeouts})
        for device in devices:
            await device.close()
    finally:
        cluster.stop()
    return {"think_ms": THINK_MS, "token_ms": TOKEN_MS, "points": points, "met": None}


# -- 5. connections ---------------------------------------------------------------------------


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def connections(bench: Bench) -> dict:
    count = bench.scale(300, 10_000)
    await bench.flush()
    cluster = bench.cluster(("fanout", "f"), ("gateway", "gw"))
    try:
        url, pid = cluster.services["gw"].url, cluster.services["gw"].process.pid
        await asyncio.sleep(1.0)
        before = _rss(pid)
        devices = [LoadDevice(url, token(f"conn-{i}"), "d") for i in range(count)]
        semaphore = asyncio.Semaphore(200)

        async def connect(device: LoadDevice) -> None:
            async with semaphore:
                await device.connect()

        start = time.monotonic()
        await asyncio.gather(*(connect(d) for d in devices))
        elapsed = time.monotonic() - start
        await asyncio.sleep(2.0)
        after = _rss(pid)
        for device in devices:
            await device.close()
    finally:
        cluster.stop()
    per_conn = (after - before) / count / 1024
    return {"connections": count, "gateway_rss_before_mb": round(before / 2**20, 1),
            "gateway_rss_after_mb": round(after / 2**20, 1), "rss_per_connection_kib": round(per_conn, 1),
            "handshakes_per_s": round(count / elapsed, 1), "goal": {"rss_per_connection_kib": 40},
            "met": per_conn <= 40 if count >= 10_000 else None}


# -- 6. fanout ----------------------------------------------------------------------------------


async def fanout(bench: Bench) -> dict:
    events, device_count = bench.scale(2_000, 30_000), 10
    await bench.flush()
    cluster = bench.cluster(("fanout", "f"), ("gateway", "gw"))
    try:
        user = _user("fan")
        devices = [LoadDevice(cluster.services["gw"].url, token(user), f"d{i}") for i in range(device_count)]
        for device in devices:
            await device.connect()
        done = asyncio.Event()
        received = 0
        total = events * device_count

        def count(frame, now):  # noqa: ANN001
            nonlocal received
            received += 1
            if received >= total:
                done.set()

        for device in devices:
            device.on_event = count
            device.event_ids = []
        client = _client(bench.redis_url)
        store = GatewayStore(client, StreamSettings(outbound_maxlen=1_000_000))
        start = time.monotonic()
        await _append_events(store, user, events)
        appended = time.monotonic() - start
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.monotonic() - start
        await asyncio.sleep(0.5)  # anything repeated would arrive now
        # Every device saw every event once, in stream order.
        stream_ids = [i for i, _ in await client.xrange(keys.outbound(user))]
        gaps = sum(d.event_ids != stream_ids for d in devices)
        await client.aclose()
        for device in devices:
            await device.close()
    finally:
        cluster.stop()
    rate = total / elapsed
    return {"devices": device_count, "events": events, "deliveries": total, "seconds": round(elapsed, 3),
            "append_seconds": round(appended, 3), "deliveries_per_s": round(rate, 1), "gaps": gaps,
            "goal": {"deliveries_per_s": 20_000}, "met": rate >= 20_000 and gaps == 0}


async def _append_events(store: GatewayStore, user: str, count: int, batch: int = 200) -> None:
    """Append user events with the gateway's accept script, one script call
    per event as the gateway makes it, ``batch`` calls per pipeline: the
    load's own Redis client then costs little of the CPU that the services
    being measured share with it."""
    for first in range(0, count, batch):
        tag = uuid.uuid4().hex[:6]
        await store.accept_many(user, "bench", "c", [(f"e{i}-{tag}", f"event {i}")
                                                     for i in range(first, min(count, first + batch))])


# -- 7. replay ----------------------------------------------------------------------------------


async def replay(bench: Bench) -> dict:
    missed = bench.scale(2_000, 10_000)
    storm_devices = bench.scale(200, 5_000)
    await bench.flush()
    cluster = bench.cluster(("fanout", "f"), ("gateway", "gw"), OUTBOUND_MAXLEN="1000000")
    client = _client(bench.redis_url)
    store = GatewayStore(client, StreamSettings(outbound_maxlen=1_000_000))
    try:
        url = cluster.services["gw"].url
        user = _user("replay")
        device = LoadDevice(url, token(user), "d")
        welcome = await device.connect()
        await device.close()
        await _append_events(store, user, missed)
        first = (await client.xrange(keys.outbound(user), count=1))[0][0]
        replayer = LoadDevice(url, token(user), "d")
        got = asyncio.Event()
        replayer.on_event = lambda frame, now: got.set() if replayer.events >= missed - 1 else None
        start = time.monotonic()
        await replayer.connect(last_id=first, epoch=welcome.epoch)
        await asyncio.wait_for(got.wait(), 60)
        replay_s = time.monotonic() - start
        await replayer.close()

        storm = await _storm(url, client, store, storm_devices)
    finally:
        await client.aclose()
        cluster.stop()
    return {"missed_events": missed, "replay_seconds": round(replay_s, 3),
            "replay_events_per_s": round((missed - 1) / replay_s, 1), "storm": storm,
            "goal": {"replay_seconds": 1.0, "storm_seconds": 30.0},
            "met": (replay_s <= 1.0 and storm["seconds"] <= 30.0 and storm["gaps"] == 0
                    if not bench.quick else None)}


async def _storm(url: str, client: aioredis.Redis, store: GatewayStore, count: int, per_user: int = 5,
                 missed: int = 5) -> dict:
    users = [_user("storm") for _ in range(max(1, count // per_user))]
    devices = [LoadDevice(url, token(u), f"d{i}") for u in users for i in range(per_user)]
    sem = asyncio.Semaphore(200)

    async def connect(device: LoadDevice, **kw: Any) -> None:
        async with sem:
            await device.connect(**kw)

    await asyncio.gather(*(connect(d) for d in devices))
    epochs = {d.device_id + d.token: d.welcome.epoch for d in devices}
    for device in devices:
        await device.close()
    for user in users:
        await _append_events(store, user, missed, batch=missed)
    ids = {u: [i for i, _ in await client.xrange(keys.outbound(u))] for u in users}
    for device in devices:
        device.event_ids = []
    start = time.monotonic()
    # Everyone at once: no connection limit beyond the listen backlog.
    await asyncio.gather(*(d.connect(last_id=d.welcome.resume_from if d.welcome else None,
                                     epoch=epochs[d.device_id + d.token]) for d in devices))
    by_device = {id(d): users[i // per_user] for i, d in enumerate(devices)}
    deadline = time.monotonic() + 120
    while any(len(d.event_ids) < len(ids[by_device[id(d)]]) for d in devices) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - start
    gaps = sum(d.event_ids != ids[by_device[id(d)]] for d in devices)
    recovered = sum(bool(d.welcome.recovered) for d in devices)
    for device in devices:
        await device.close()
    return {"devices": len(devices), "seconds": round(elapsed, 3), "gaps": gaps, "recovered": recovered}


# -- 8. scaling ----------------------------------------------------------------------------------


async def scaling(bench: Bench) -> dict:
    conversations, turns = bench.scale(8, 40), bench.scale(3, 10)
    out: dict[str, Any] = {"workers": {}, "users": {}}
    for workers in (1, 2):
        await bench.flush()
        specs = [("fanout", "f"), ("gateway", "gw")] + [("worker", f"w{i}") for i in range(workers)]
        cluster = bench.cluster(*specs, GRAPH=THINK_GRAPH)  # the harness puts bench/ on PYTHONPATH
        try:
            # A graph that waits 20 ms (an LLM call, say) so workers overlap turns.
            out["workers"][str(workers)] = await _closed_loop([cluster.services["gw"].url], conversations, turns,
                                                              text="sleep:0.02 think")
        finally:
            cluster.stop()
    for users in bench.scale([4, 16], [10, 100, 400]):
        await bench.flush()
        cluster = bench.cluster(("fanout", "f"), ("worker", "w"), ("gateway", "gw"))
        try:
            result = await _closed_loop([cluster.services["gw"].url], users, bench.scale(2, 5))
            result["ms_per_turn_cpu_bound"] = round(1000 / result["turns_per_s"], 3)
            out["users"][str(users)] = result
        finally:
            cluster.stop()
    out["met"] = None
    return out


SCENARIOS = {
    "turn_latency": turn_latency,
    "throughput": throughput,
    "offered_load": offered_load,
    "connections": connections,
    "fanout": fanout,
    "replay": replay,
    "scaling": scaling,
    "prehello": prehello,
    "redis_cost": redis_cost,
    "cluster_scaling": cluster_scaling,
}
