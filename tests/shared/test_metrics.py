"""The metric definitions (metrics.py): Prometheus naming, bounded labels,
every metric documented, the parsers of encoded frames the gateway's writer
counts with, the backlog gauges, and the Redis client's measurements on a
real Redis."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from switchboard.shared import metrics as m
from switchboard.shared import protocol as p
from switchboard.shared import scripts
from switchboard.shared.connection import make_client
from switchboard.shared.settings import RedisSettings

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"

#: Label names that would carry an id or free text: never.
UNBOUNDED = {"user", "user_id", "conversation", "conversation_id", "device", "device_id", "conn", "connection",
             "id", "entry", "client_msg_id", "message", "text", "error", "reason", "token", "ip", "address"}


def _all() -> list[m.Metrics]:
    return [m.GatewayMetrics(), m.WorkerMetrics(work_shards=2), m.FanoutMetrics()]


def _families(metrics: m.Metrics):
    return [f for f in metrics.registry.collect() if f.name.startswith(m.PREFIX + "_")]


def _samples(metrics: m.Metrics) -> dict[tuple[str, tuple], float]:
    text = metrics.exposition()[0].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


# -- naming ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("metrics", _all(), ids=lambda x: x.tier)
def test_names_follow_the_prometheus_conventions(metrics):
    metrics.redis.observe("XADD", 0.001)  # the Redis families have no child until used
    metrics.redis.failed("XADD", ConnectionError())
    families = _families(metrics)
    assert families
    for family in families:
        assert re.fullmatch(rf"switchboard_({metrics.tier}|redis)_[a-z][a-z0-9_]*[a-z0-9]", family.name), family.name
        if family.type == "counter":
            assert {s.name for s in family.samples} <= {family.name + "_total"}, family.name
        elif family.type == "histogram":
            assert family.name.endswith(("_seconds", "_bytes")), family.name
        else:
            assert family.type == "gauge", family.name
            assert not family.name.endswith(("_total", "_count", "_sum", "_bucket")), family.name
        for sample in family.samples:
            assert not UNBOUNDED & set(sample.labels), (family.name, sample.labels)


def test_the_helpers_refuse_names_against_the_conventions():
    metrics = m.GatewayMetrics()
    with pytest.raises(ValueError, match="_total"):
        metrics.counter("frames", "no _total")
    with pytest.raises(ValueError, match="only a counter"):
        metrics.gauge("open_total", "a gauge named as a counter")
    with pytest.raises(ValueError, match="base unit"):
        metrics.histogram("turn_duration_ms", "not a base unit", (1, 2))


def test_every_metric_is_listed_in_docs_operations():
    listed = OPERATIONS.read_text()
    names = {f.name for metrics in _all() for f in _families(metrics)} | {
        "switchboard_redis_command_duration_seconds", "switchboard_redis_errors"}
    missing = sorted(name for name in names
                     if f"`{name}`" not in listed and f"`{name}_total`" not in listed)
    assert not missing, f"not in docs/operations.md: {missing}"


def test_each_process_has_its_own_registry():
    one, two = m.GatewayMetrics(), m.GatewayMetrics()
    one.accepted_new.inc()
    assert _samples(one)[("switchboard_gateway_messages_accepted_total", (("outcome", "new"),))] == 1
    assert _samples(two)[("switchboard_gateway_messages_accepted_total", (("outcome", "new"),))] == 0
    assert m.GatewayMetrics(CollectorRegistry()).registry is not one.registry


def test_the_exposition_is_the_prometheus_text_format():
    body, content_type = m.FanoutMetrics().exposition()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# TYPE switchboard_fanout_rounds_total counter" in body
    assert b"_created" not in body  # one series per counter, not two


# -- bounded labels -----------------------------------------------------------------------------------


def test_codes_outside_the_known_sets_count_as_other():
    metrics = m.GatewayMetrics()
    series = len(_samples(metrics))
    for code in range(3000, 5000):  # every close code a client may send
        metrics.closed(code)
    for n in range(100):
        metrics.error(f"made-up-{n}")
    assert len(_samples(metrics)) == series
    samples = _samples(metrics)
    assert samples[("switchboard_gateway_closes_total", (("code", "other"),))] == sum(
        str(code) not in m.CLOSE_CODES for code in range(3000, 5000))
    assert samples[("switchboard_gateway_closes_total", (("code", "4005"),))] == 1
    assert samples[("switchboard_gateway_errors_total", (("code", "other"),))] == 100


@pytest.mark.parametrize("bound", [m.MAX_COMMAND_LABELS, 7])
def test_redis_command_labels_are_bounded(bound):
    redis = m.RedisMetrics(CollectorRegistry(), max_commands=bound)
    labels = {redis.label((f"CMD{n}", "k")) for n in range(3 * bound)}
    assert len(labels) == bound + 1 and m.OTHER in labels
    assert redis.label(("XADD", "k")) == m.OTHER  # the bound holds for later ones too
    assert redis.label(("CMD1", "k")) == "CMD1"  # and for those already seen


def test_a_script_is_labelled_with_its_name():
    redis = m.RedisMetrics(CollectorRegistry())
    for name, script in scripts.register(aioredis.Redis(), "accept", "commit").items():
        assert redis.label(("EVALSHA", script.sha, 1, "k")) == name
    assert redis.label(("EVALSHA", "0" * 40, 0)) == "EVALSHA"  # not one of ours
    assert redis.label((b"xadd", "k")) == "XADD"


@pytest.mark.parametrize("exc, kind", [
    (m.BusyLoadingError("LOADING"), "loading"), (m.RedisConnectionError("refused"), "connection"),
    (m.RedisTimeoutError("slow"), "timeout"), (m.NoScriptError("NOSCRIPT"), "noscript"),
    (m.ResponseError("WRONGTYPE"), "response"), (m.RedisError("pool"), "client"), (ValueError("x"), "other"),
])
def test_errors_have_a_bounded_kind(exc, kind):
    assert m.error_kind(exc) == kind and kind in m.ERROR_KINDS


# -- the gateway's writer ------------------------------------------------------------------------------


def _event(entry_id: str, kind: str = "assistant") -> bytes:
    return p.encode(p.Event(id=entry_id, conversation_id="c", kind=kind, text="héllo \"x\"", client_msg_id="m"))


def test_the_parsers_read_the_encoding_of_events_and_errors():
    # Pins the field order of Event and Error: if it changed, the writer would count nothing.
    assert m.event_ms(_event("1712345678901-3")) == 1712345678901
    assert m.event_ms(p.encode(p.Pong())) is None
    assert m.error_code(p.encode(p.Error(code=p.ErrorCode.BAD_FRAME, message="no"))) == "bad_frame"
    assert m.error_code(_event("1-0")) is None


def test_every_server_frame_type_has_its_own_key():
    frames = {"welcome": p.Welcome(user_id="u", device_id="d", epoch="e", resume_from="0-0", recovered=True),
              "accepted": p.Accepted(client_msg_id="m", id="1-0"), "event": p.Event(id="1-0", conversation_id="c",
                                                                                   kind="user", text="t"),
              "history": p.HistoryResult(conversation_id="c", messages=[]), "pong": p.Pong(),
              "conversations": p.ConversationsResult(conversations=[]),
              "refreshed": p.Refreshed(expires_at=1), "error": p.Error(code=p.ErrorCode.INTERNAL, message="x")}
    assert set(frames) | {m.OTHER} == set(m.SENT_TYPES)
    metrics = m.GatewayMetrics()
    metrics.written([p.encode(frame) for frame in frames.values()], live_after_ms=0)
    samples = _samples(metrics)
    for name in frames:
        assert samples[("switchboard_gateway_frames_sent_total", (("type", name),))] == 1, name
    assert samples[("switchboard_gateway_frames_sent_total", (("type", "other"),))] == 0
    assert samples[("switchboard_gateway_errors_total", (("code", "internal"),))] == 1


def test_events_after_the_hello_are_live_and_their_lag_is_measured():
    metrics = m.GatewayMetrics()
    now_ms = int(m.time.time() * 1000)
    hello_ms = now_ms - 10_000
    metrics.written([_event(f"{hello_ms - 5000}-0", "user"), _event(f"{hello_ms}-7"),  # replayed
                     _event(f"{now_ms - 40}-0", "delta"), _event(f"{now_ms + 60_000}-0")],  # live; a clock ahead
                    live_after_ms=hello_ms)
    samples = _samples(metrics)
    assert samples[("switchboard_gateway_events_delivered_total", (("phase", "replay"),))] == 2
    assert samples[("switchboard_gateway_events_delivered_total", (("phase", "live"),))] == 2
    assert samples[("switchboard_gateway_delivery_lag_seconds_count", ())] == 2
    assert samples[("switchboard_gateway_delivery_lag_seconds_bucket", (("le", "0.01"),))] == 1  # skew: 0
    assert samples[("switchboard_gateway_delivery_lag_seconds_bucket", (("le", "0.025"),))] == 1
    assert samples[("switchboard_gateway_delivery_lag_seconds_bucket", (("le", "0.05"),))] == 2


def test_received_frames_count_by_type():
    metrics = m.GatewayMetrics()
    for frame in (p.Hello(token="t", device_id="d"), p.Ping(), p.Ping(), p.Ack(id="1-0")):
        metrics.frame_received(frame)
    samples = _samples(metrics)
    assert [samples[("switchboard_gateway_frames_received_total", (("type", t),))] for t in ("hello", "ping", "ack")
            ] == [1, 2, 1]


# -- the worker's polled gauges -------------------------------------------------------------------------


def test_the_backlog_gauges_follow_xinfo_groups_and_xlen():
    metrics = m.WorkerMetrics(work_shards=2)
    groups = [[{"name": "other", "pending": 9, "lag": 9}, {"name": "workers", "pending": 3, "lag": 5}],
              [{"name": "workers", "pending": 1, "lag": None}]]
    metrics.backlog(groups, "workers", 4)
    metrics.backlog([m.ResponseError("no such key"), [{"name": "workers", "pending": 0, "lag": None}]],
                    "workers", m.ResponseError("down"))
    samples = _samples(metrics)
    assert samples[("switchboard_worker_work_pending_notices", (("shard", "0"),))] == 3  # an error left it
    assert samples[("switchboard_worker_work_lag_notices", (("shard", "0"),))] == 5
    assert samples[("switchboard_worker_work_pending_notices", (("shard", "1"),))] == 0
    assert samples[("switchboard_worker_work_lag_notices", (("shard", "1"),))] == 0  # nil: not known, not set
    assert samples[("switchboard_worker_dead_letter_entries", ())] == 4


def test_the_fanout_exports_its_own_counts_at_scrape():
    metrics = m.FanoutMetrics()
    counts = {"reads": 0, "direct": 0, "deferred": 0}
    metrics.count_users(counts)
    counts.update(reads=3, direct=7)
    samples = _samples(metrics)
    assert samples[("switchboard_fanout_users_read_total", ())] == 3
    assert samples[("switchboard_fanout_users_from_notices_total", ())] == 7
    assert samples[("switchboard_fanout_users_deferred_total", ())] == 0


# -- the Redis client, on a real Redis -----------------------------------------------------------------


async def test_the_client_measures_commands_scripts_pipelines_and_errors(clean_redis):
    metrics = m.WorkerMetrics()
    client = make_client(RedisSettings(url=clean_redis), metrics=metrics.redis)
    try:
        await client.script_flush()
        renew = scripts.register(client, "renew")["renew"]
        assert await renew(keys=["sb:test:lease"], args=["token", 1000]) == 0  # NOSCRIPT, loaded, run again
        await client.set("k", "v")
        pipe = client.pipeline(transaction=False)
        pipe.get("k").xadd("s", {"a": "1"})
        assert (await pipe.execute())[0] == "v"
        with pytest.raises(m.ResponseError):
            await client.incrby("k", 1)  # not an integer
        assert await client.xread({"s": "$"}, block=50) in ([], {}, None)  # blocked for 50 ms: not timed
    finally:
        await client.aclose()
    samples = _samples(metrics)

    def count(command: str) -> float:
        return samples.get(("switchboard_redis_command_duration_seconds_count", (("command", command),)), 0)

    assert (count("renew"), count("SET"), count("GET"), count("INCRBY"), count("XREAD")) == (1, 1, 1, 0, 0)
    assert samples[("switchboard_redis_errors_total", (("command", "renew"), ("kind", "noscript")))] == 1
    assert samples[("switchboard_redis_errors_total", (("command", "INCRBY"), ("kind", "response")))] == 1
    assert samples[("switchboard_redis_command_duration_seconds_sum", (("command", "GET"),))] < 1.0
