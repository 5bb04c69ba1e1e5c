"""/metrics of real service processes: after one streamed turn, a turn that
is dead-lettered, a bad frame and a refused hello, every metric of every
tier has moved (or, for the few that stay at zero in this scenario, is
there), and the error path moved the counters of its codes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from switchboard.embedded_redis import free_port
from tests.support.client import Device, new_user
from tests.support.cluster import token

#: One sample: (name, sorted label pairs).
Key = tuple[str, tuple[tuple[str, str], ...]]


async def scrape(port: int) -> tuple[str, dict[Key, float]]:
    """(content type, samples) of ``GET /metrics``."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    content_type = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-type:"))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    return content_type, samples


def value(samples: dict[Key, float], name: str, labels: dict[str, str]) -> float | None:
    """The sum of the samples of ``name`` whose labels include ``labels``;
    None if there is none."""
    found = [v for (n, pairs), v in samples.items() if n == name and set(labels.items()) <= set(pairs)]
    return sum(found) if found else None


def families(samples: dict[Key, float]) -> set[str]:
    """The Switchboard metrics a scrape holds, by family name (a histogram's
    or counter's samples share theirs)."""
    names = set()
    for name, _ in samples:
        if name.startswith("switchboard_"):
            for suffix in ("_bucket", "_count", "_sum", "_created", "_total"):
                if name.endswith(suffix):
                    name = name.removesuffix(suffix)
                    break
            names.add(name)
    return names


#: Each tier's checks: family -> (sample, labels, the least it moved by). A
#: histogram is checked by its count; a gauge by its value after the scenario
#: (``0``: present). Every family a tier exports must be listed here.
Check = tuple[str, dict[str, str], float]
EXPECTED: dict[str, dict[str, list[Check]]] = {
    "gateway": {
        "switchboard_gateway_connections": [("switchboard_gateway_connections", {}, 1)],
        "switchboard_gateway_welcomed_connections": [("switchboard_gateway_welcomed_connections", {}, 1)],
        "switchboard_gateway_handshakes": [
            ("switchboard_gateway_handshakes_total", {"outcome": "welcome"}, 1),
            ("switchboard_gateway_handshakes_total", {"outcome": "hello_required"}, 1)],
        "switchboard_gateway_frames_received": [
            ("switchboard_gateway_frames_received_total", {"type": t}, 1) for t in ("hello", "send", "ping",
                                                                                  "invalid")],
        "switchboard_gateway_frames_sent": [
            ("switchboard_gateway_frames_sent_total", {"type": t}, n)
            for t, n in (("welcome", 1), ("accepted", 2), ("event", 5), ("pong", 1), ("error", 2))],
        "switchboard_gateway_messages_accepted": [
            ("switchboard_gateway_messages_accepted_total", {"outcome": "new"}, 2)],
        "switchboard_gateway_errors": [
            ("switchboard_gateway_errors_total", {"code": "bad_frame"}, 1),
            ("switchboard_gateway_errors_total", {"code": "hello_required"}, 1)],
        "switchboard_gateway_closes": [("switchboard_gateway_closes_total", {"code": "4002"}, 1)],
        "switchboard_gateway_replays": [
            ("switchboard_gateway_replays_total", {"recovered": "true", "source": "new"}, 1)],
        "switchboard_gateway_events_delivered": [
            ("switchboard_gateway_events_delivered_total", {"phase": "live"}, 5)],
        "switchboard_gateway_delivery_lag_seconds": [("switchboard_gateway_delivery_lag_seconds_count", {}, 5)],
        "switchboard_redis_command_duration_seconds": [
            ("switchboard_redis_command_duration_seconds_count", {"command": c}, 1)
            for c in ("accept", "stream_state", "XADD")],
        "switchboard_redis_errors": [
            ("switchboard_redis_errors_total", {"command": "stream_state", "kind": "noscript"}, 1)],
    },
    "worker": {
        "switchboard_worker_turns": [
            ("switchboard_worker_turns_total", {"outcome": "assistant"}, 1),
            ("switchboard_worker_turns_total", {"outcome": "turn_error"}, 1)],
        "switchboard_worker_turn_duration_seconds": [("switchboard_worker_turn_duration_seconds_count", {}, 2)],
        "switchboard_worker_queue_wait_seconds": [("switchboard_worker_queue_wait_seconds_count", {}, 2)],
        "switchboard_worker_graph_duration_seconds": [("switchboard_worker_graph_duration_seconds_count", {}, 2)],
        "switchboard_worker_first_delta_seconds": [("switchboard_worker_first_delta_seconds_count", {}, 1)],
        "switchboard_worker_attempts_failed": [("switchboard_worker_attempts_failed_total", {}, 1)],
        "switchboard_worker_dead_letters": [("switchboard_worker_dead_letters_total", {}, 1)],
        "switchboard_worker_dead_letter_entries": [("switchboard_worker_dead_letter_entries", {}, 1)],
        # Seen during the slow turn (``during``), back to 0 after it:
        "switchboard_worker_work_pending_notices": [("switchboard_worker_work_pending_notices", {"shard": "0"}, 0)],
        "switchboard_worker_work_lag_notices": [("switchboard_worker_work_lag_notices", {"shard": "0"}, 0)],
        "switchboard_worker_leases_held": [("switchboard_worker_leases_held", {}, 0)],
        "switchboard_worker_conversations_taken": [("switchboard_worker_conversations_taken", {}, 0)],
        "switchboard_worker_slots_busy": [("switchboard_worker_slots_busy", {}, 0)],
        "switchboard_redis_command_duration_seconds": [
            ("switchboard_redis_command_duration_seconds_count", {"command": c}, 1) for c in ("begin", "commit",
                                                                                              "delta")],
        "switchboard_redis_errors": [
            ("switchboard_redis_errors_total", {"command": "begin", "kind": "noscript"}, 1)],
    },
    "fanout": {
        "switchboard_fanout_attached_users": [("switchboard_fanout_attached_users", {}, 1)],
        "switchboard_fanout_attachments": [("switchboard_fanout_attachments", {}, 1)],
        "switchboard_fanout_rounds": [("switchboard_fanout_rounds_total", {}, 1)],
        "switchboard_fanout_batches": [("switchboard_fanout_batches_total", {}, 1)],
        "switchboard_fanout_batch_events": [("switchboard_fanout_batch_events_total", {}, 5)],
        "switchboard_fanout_users_read": [("switchboard_fanout_users_read_total", {}, 1)],
        "switchboard_fanout_users_from_notices": [("switchboard_fanout_users_from_notices_total", {}, 1)],
        # Needs FANOUT_ROUND_BYTES pressure (tests/integration/test_abuse_delivery.py): present.
        "switchboard_fanout_users_deferred": [("switchboard_fanout_users_deferred_total", {}, 0)],
        "switchboard_redis_command_duration_seconds": [
            ("switchboard_redis_command_duration_seconds_count", {"command": c}, 1) for c in ("read_outbound",
                                                                                              "PUBLISH")],
        "switchboard_redis_errors": [
            ("switchboard_redis_errors_total", {"command": "read_outbound", "kind": "noscript"}, 1)],
    },
}

#: Polled gauges while the first turn sleeps and the second waits unread
#: (WORKER_CONCURRENCY=1, WORKER_READ_AHEAD=0).
DURING: list[Check] = [
    ("switchboard_worker_leases_held", {}, 1),
    ("switchboard_worker_conversations_taken", {}, 1),
    ("switchboard_worker_slots_busy", {}, 1),
    ("switchboard_worker_work_pending_notices", {"shard": "0"}, 1),
    ("switchboard_worker_work_lag_notices", {"shard": "0"}, 1),
]


def _moved(check: Check, before: dict[Key, float], after: dict[Key, float], gauge: bool) -> bool:
    name, labels, least = check
    now = value(after, name, labels)
    if now is None:
        return False
    if gauge:
        return now >= least
    return now - (value(before, name, labels) or 0.0) >= least


async def _until(check: Callable, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.1)


@pytest.fixture
def tiers(cluster):
    """A fanout, a gateway and a worker, each with its METRICS_PORT."""
    ports = {kind: free_port() for kind in ("fanout", "gateway", "worker")}
    common = {"HEALTH_REFRESH": "0.2"}
    cluster.start("fanout", "fanout", METRICS_PORT=str(ports["fanout"]), **common)
    cluster.start("gateway", "gateway", METRICS_PORT=str(ports["gateway"]), **common)
    cluster.start("worker", "worker", METRICS_PORT=str(ports["worker"]), GRAPH="tests.support.graphs:slow",
                  WORKER_CONCURRENCY="1", WORKER_READ_AHEAD="0", MAX_ATTEMPTS="1", **common)
    return cluster, ports


async def test_every_metric_of_every_tier_moves_with_one_turn_and_an_error(tiers, redis_client):
    cluster, ports = tiers
    # Redis forgets scripts on a restart; so here: every tier's first script call meets NOSCRIPT.
    await redis_client.script_flush()
    before = {kind: (await scrape(port))[1] for kind, port in ports.items()}

    async def worker_shows(checks: list[Check]) -> bool:
        _, now = await scrape(ports["worker"])
        return all(_moved(check, {}, now, gauge=True) for check in checks)

    phone = Device(cluster.services["gateway"].url, token(new_user()), "phone")
    await phone.connect()
    await phone.send("c1", "m1", "sleep:2 a streamed reply")
    await _until(lambda: worker_shows(DURING[:1]), 10, "the worker holding the first conversation")
    await phone.send("c2", "m2", "fail now")  # not read while c1 runs: the worker has room for one
    await _until(lambda: worker_shows(DURING), 10, "leases, slots and the backlog seen during the turn")

    assert (await phone.wait_reply("m1"))["kind"] == "assistant"
    assert (await phone.wait_reply("m2"))["kind"] == "turn_error"  # MAX_ATTEMPTS=1: dead-lettered at once
    assert any(e["kind"] == "delta" for e in phone.events), "the reply was not streamed"
    await phone.send_raw("{not json")
    assert (await phone.wait_frame("error"))["code"] == "bad_frame"
    await phone.send_raw(json.dumps({"type": "ping"}))
    await phone.wait_frame("pong")
    async with connect(cluster.services["gateway"].url) as stranger:  # a first frame that is not hello
        await stranger.send(json.dumps({"type": "ping"}))
        assert json.loads(await stranger.recv())["code"] == "hello_required"
        await stranger.wait_closed()
        assert stranger.close_code == 4002

    async def all_moved() -> bool:
        return not await _unmoved(ports, before)

    # A close is counted once the gateway's handler returns, the backlog at the next readiness check.
    try:
        await _until(all_moved, 5, "every metric moved")
    except AssertionError:
        pytest.fail(f"not moved: {await _unmoved(ports, before)}")
    await phone.close()


async def _unmoved(ports: dict[str, int], before: dict[str, dict[Key, float]]) -> list[str]:
    """What has not moved (or is not listed) on each tier."""
    problems = []
    for kind, port in ports.items():
        content_type, after = await scrape(port)
        if not content_type.startswith("text/plain; version=0.0.4"):
            problems.append(f"{kind}: content type {content_type}")
        expected = EXPECTED[kind]
        unlisted = families(after) - set(expected)
        problems += [f"{kind}: {name} is not checked by this test" for name in sorted(unlisted)]
        for family, checks in expected.items():
            for check in checks:
                gauge = not check[0].endswith(("_total", "_count"))
                if not _moved(check, before[kind], after, gauge):
                    problems.append(f"{kind}: {check} (now {value(after, check[0], check[1])})")
    return problems
