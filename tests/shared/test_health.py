"""The health endpoints: the pure rules, and the HTTP server on a real loopback socket."""

from __future__ import annotations

import asyncio
import http
import json
import socket
import time

import pytest

from switchboard.shared import health
from switchboard.shared.settings import HealthSettings, SettingsError


def _settings(**overrides) -> HealthSettings:
    return HealthSettings(**{"port": 0, **overrides})


# -- the request line -------------------------------------------------------------------------


def test_parse_head_takes_the_method_and_the_path_without_its_query():
    assert health.parse_head(b"GET /readyz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n") == health.Request("GET", "/readyz")
    assert health.parse_head(b"GET /healthz HTTP/1.0\r\n\r\n") == health.Request("GET", "/healthz")


@pytest.mark.parametrize("head, status", [
    (b"GET /healthz\r\n\r\n", 400),                   # HTTP/0.9 style
    (b"GET  /healthz HTTP/1.1\r\n\r\n", 400),         # two spaces
    (b"GET /healthz HTTP/1.1 extra\r\n\r\n", 400),
    (b"G(T /healthz HTTP/1.1\r\n\r\n", 400),          # not a token
    (b"GET /healthz HTTQ/1.1\r\n\r\n", 400),
    (b"GET /health\xffz HTTP/1.1\r\n\r\n", 400),      # not ASCII
    (b"GET /heal\x7fthz HTTP/1.1\r\n\r\n", 400),      # a control character
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # a TLS ClientHello
    (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
    (b"", 400),
])
def test_parse_head_refuses_malformed_request_lines(head, status):
    with pytest.raises(health.BadRequest) as caught:
        health.parse_head(head)
    assert caught.value.status == status


# -- the answers ---------------------------------------------------------------------------------


def test_liveness_fails_once_the_heartbeat_is_older_than_the_bound():
    assert health.liveness(now=109.9, last_beat=100.0, stall_after=10.0).ok
    answer = health.liveness(now=110.5, last_beat=100.0, stall_after=10.0)
    assert answer.status == 503
    assert json.loads(answer.body) == {
        "status": "fail", "reasons": ["event loop stalled: no heartbeat for 10.5 s (HEALTH_STALL_AFTER 10 s)"]}


def test_readiness_needs_no_condition_and_a_fresh_clean_check():
    assert health.readiness([], (99.0, ()), now=100.0, stall_after=10.0).ok
    assert json.loads(health.readiness(["draining"], (99.0, ("redis: unreachable",)), 100.0, 10.0).body) == {
        "status": "fail", "reasons": ["draining", "redis: unreachable"]}
    assert json.loads(health.readiness([], None, 100.0, 10.0).body)["reasons"] == ["readiness not checked yet"]
    stale = health.readiness([], (80.0, ()), now=100.0, stall_after=10.0)
    assert json.loads(stale.body)["reasons"] == ["readiness not checked for 20.0 s"]


def test_routes_paths_and_methods():
    checks = health.Health(_settings())
    assert checks.answer("GET", "/nope").status == 404
    assert checks.answer("GET", "/metrics").status == 404  # no hook yet
    refused = checks.answer("POST", "/healthz")
    assert (refused.status, refused.allow) == (405, "GET")
    assert checks.answer("GET", "/healthz").ok
    checks.metrics = lambda: (b"up 1\n", "text/plain; version=0.0.4")
    assert checks.answer("GET", "/metrics") == health.Answer(http.HTTPStatus.OK, b"up 1\n", "text/plain; version=0.0.4")

    def broken():
        raise RuntimeError("exporter bug")

    checks.metrics = broken
    assert checks.answer("GET", "/metrics").status == 500


def test_health_settings_from_the_environment():
    s = HealthSettings.from_env({"METRICS_PORT": "9090", "METRICS_HOST": "0.0.0.0", "HEALTH_STALL_AFTER": "5"})
    assert (s.port, s.host, s.stall_after, s.refresh) == (9090, "0.0.0.0", 5.0, 1.0)
    assert HealthSettings.from_env({}).port == 0  # off unless asked for
    for bad in ({"METRICS_PORT": "70000"}, {"METRICS_PORT": "-1"}, {"METRICS_PORT": "x"},
                {"HEALTH_STALL_AFTER": "0.5"}, {"HEALTH_MAX_REQUEST_BYTES": "10"}):
        with pytest.raises(SettingsError):
            HealthSettings.from_env(bad)


# -- background checks ------------------------------------------------------------------------------


async def test_a_blocked_loop_fails_liveness_and_recovers():
    checks = health.Health(_settings(stall_after=1.0))
    async with checks.running():
        assert checks.liveness().ok
        time.sleep(1.2)  # the loop is blocked: nothing else runs
        assert checks.liveness().status == 503
        await asyncio.sleep(0.05)  # the heartbeat runs again
        assert checks.liveness().ok


async def test_readiness_probes_run_in_the_background_not_per_request():
    calls = 0

    async def probe() -> str | None:
        nonlocal calls
        calls += 1
        return None

    checks = health.Health(_settings(refresh=0.2))
    checks.add_probe("counted", probe)
    async with checks.running():
        await asyncio.sleep(0.05)
        for _ in range(1000):
            assert checks.readiness().ok
        await asyncio.sleep(0.5)
    assert 2 <= calls <= 5


async def test_a_hanging_or_raising_probe_is_a_reason_without_its_message():
    async def hangs() -> str | None:
        await asyncio.sleep(60)
        return None

    async def raises() -> str | None:
        raise ValueError("redis://:hunter2@redis:6379 refused")

    checks = health.Health(_settings(check_timeout=0.1))
    checks.add_probe("slow", hangs)
    checks.add_probe("broken", raises)
    reasons = await checks.check()
    assert reasons == ("slow: no answer within 0.1 s", "broken: check failed (ValueError)")
    assert b"hunter2" not in checks.readiness().body


# -- the server, over a real socket --------------------------------------------------------------------


async def _exchange(port: int, request: bytes, *, wait: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), wait)  # to EOF: the server closes
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body)
    return int(lines[0].split(" ")[1]), headers, body


@pytest.fixture
async def served():
    checks = health.Health(_settings(port=_free_port(), request_timeout=0.3, max_request_bytes=1024,
                                     max_connections=4), "test")
    state = {"reason": None}
    checks.add_condition(lambda: state["reason"])
    async with checks.running():
        await asyncio.sleep(0.05)  # the first readiness check
        yield checks, state


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_server_answers_health_and_readiness(served):
    checks, state = served
    status, headers, body = await _exchange(checks.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert headers["Content-Type"] == "application/json" and headers["Connection"] == "close"
    assert (await _exchange(checks.port, b"GET /readyz HTTP/1.1\r\n\r\n"))[0] == 200
    state["reason"] = "draining"
    status, _, body = await _exchange(checks.port, b"GET /readyz HTTP/1.1\r\n\r\n")
    assert (status, json.loads(body)) == (503, {"status": "fail", "reasons": ["draining"]})


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /elsewhere HTTP/1.1\r\n\r\n", 404),
    (b"GET /metrics HTTP/1.1\r\n\r\n", 404),
    (b"POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405),
    (b"BREW /healthz HTCPCP/1.0\r\n\r\n", 400),
    (b"GET /healthz HTTP/3.0\r\n\r\n", 505),
    (b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 2000 + b"\r\n\r\n", 431),  # over max_request_bytes
])
async def test_server_refuses_what_it_does_not_serve(served, request_bytes, status):
    checks, _ = served
    assert (await _exchange(checks.port, request_bytes))[0] == status


async def test_server_times_out_a_slow_request_and_serves_the_next(served):
    checks, _ = served
    started = time.monotonic()
    status, _, _ = await _exchange(checks.port, b"GET /healthz HTTP/1.1\r\n")  # no blank line, ever
    assert status == 408 and 0.25 < time.monotonic() - started < 2.0
    assert (await _exchange(checks.port, b"GET /healthz HTTP/1.1\r\n\r\n"))[0] == 200


async def test_server_refuses_connections_beyond_its_bound_at_once(served):
    checks, _ = served
    idle = [await asyncio.open_connection("127.0.0.1", checks.port) for _ in range(4)]
    await asyncio.sleep(0.05)
    try:
        started = time.monotonic()
        status, _, _ = await _exchange(checks.port, b"GET /healthz HTTP/1.1\r\n\r\n")
        assert status == 503 and time.monotonic() - started < 0.25
    finally:
        for _, writer in idle:
            writer.close()
    await asyncio.sleep(0.05)
    assert (await _exchange(checks.port, b"GET /healthz HTTP/1.1\r\n\r\n"))[0] == 200


async def test_a_taken_port_fails_at_start():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        checks = health.Health(_settings(port=sock.getsockname()[1]))
        with pytest.raises(SettingsError, match="METRICS_PORT"):
            async with checks.running():
                pass
