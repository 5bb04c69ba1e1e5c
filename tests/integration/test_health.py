"""Health endpoints of real service processes: /readyz follows Redis on every
tier while /healthz stays up, and a draining gateway says it is not ready."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from switchboard.embedded_redis import free_port
from tests.support.client import Device, new_user
from tests.support.cluster import Cluster, token

#: Readiness re-checked five times a second, so the test sees changes fast.
FAST_HEALTH = {"HEALTH_REFRESH": "0.2"}
OWN_REDIS_ENV = FAST_HEALTH  #: the own_redis fixture's services get it


async def get(port: int, path: str) -> tuple[int | None, dict | None]:
    """(status, JSON body) of ``GET path``; (None, None) if nothing listens."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
    except (OSError, TimeoutError):
        return None, None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


async def until(check, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)


def _start_tiers(cluster: Cluster) -> dict[str, int]:
    """A fanout, a gateway and a worker, each with its own METRICS_PORT; the
    health port of each, plus the gateway's WebSocket port as "ws"."""
    ports = {name: free_port() for name in ("fanout", "gateway", "worker")}
    for kind, port in ports.items():
        cluster.start(kind, kind, wait=False, METRICS_PORT=str(port))
    ports["ws"] = cluster.services["gateway"].port
    return ports


async def _statuses(ports: dict[str, int], path: str) -> dict[str, int | None]:
    answers = await asyncio.gather(*(get(port, path) for port in ports.values()))
    return {name: status for name, (status, _) in zip(ports, answers)}


async def test_readiness_follows_redis_on_every_tier_while_liveness_stays(own_redis):
    server, cluster = own_redis
    ports = _start_tiers(cluster)

    async def all_are(path: str, status: int) -> bool:
        return set((await _statuses(ports, path)).values()) == {status}

    await until(lambda: all_are("/readyz", 200), 60, "every tier ready")
    assert await all_are("/healthz", 200)

    server.stop()
    liveness_seen: list[dict[str, int | None]] = []

    async def redis_down_on_every_tier() -> bool:
        # Conditions without I/O (the fanout's lost subscription) may say so
        # first; the cached Redis check follows within HEALTH_REFRESH + its retries.
        liveness_seen.append(await _statuses(ports, "/healthz"))
        answers = await asyncio.gather(*(get(port, "/readyz") for port in ports.values()))
        return all(status == 503 and any(r.startswith("redis") for r in body["reasons"])
                   for status, body in answers)

    await until(redis_down_on_every_tier, 15, "every tier not ready, Redis named, with Redis down")
    assert all(set(seen.values()) == {200} for seen in liveness_seen), liveness_seen
    # Down for a while: still alive, still not ready.
    await asyncio.sleep(1.0)
    assert await all_are("/healthz", 200) and await all_are("/readyz", 503)

    server.start()
    liveness_seen.clear()

    async def ready_and_alive() -> bool:
        liveness_seen.append(await _statuses(ports, "/healthz"))
        return await all_are("/readyz", 200)

    await until(ready_and_alive, 30, "every tier ready again with Redis back")
    assert all(set(seen.values()) == {200} for seen in liveness_seen), liveness_seen
    assert all(s.process.poll() is None for s in cluster.services.values()), "a service exited"


async def test_a_draining_gateway_is_alive_but_not_ready_and_still_serves(cluster):
    health_port = free_port()
    cluster.start("fanout", "f")
    gateway = cluster.start("gateway", "gw", METRICS_PORT=str(health_port), DRAIN_DELAY="3", **FAST_HEALTH)
    ports = {"metrics": health_port, "ws": gateway.port}
    await until(lambda: _all(ports, "/readyz", 200), 30, "the gateway ready")
    phone = Device(gateway.url, token(new_user()), "phone")
    await phone.connect()

    gateway.process.send_signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await until(lambda: _all(ports, "/readyz", 503), 1.0, "not ready once SIGTERM arrives")
    for port in ports.values():
        status, body = await get(port, "/readyz")
        assert status == 503 and body["reasons"] == ["draining: the gateway is shutting down"]
        assert (await get(port, "/healthz"))[0] == 200
    # Still serving its connections, and new ones, while the load balancer catches up.
    await phone.send_raw(json.dumps({"type": "ping"}))
    await phone.wait_frame("pong")
    newcomer = Device(gateway.url, token(new_user()), "tablet")
    await newcomer.connect()
    assert phone.close_code is None

    await phone.wait_for(lambda: phone.close_code is not None, timeout=10)
    assert phone.close_code == 1001  # going away: reconnect elsewhere
    assert loop.time() - started >= 2.5, "closed before DRAIN_DELAY was over"
    assert gateway.process.wait(15) == 0
    await phone.close()
    await newcomer.close()


async def _all(ports: dict[str, int], path: str, status: int) -> bool:
    return set((await _statuses(ports, path)).values()) == {status}
