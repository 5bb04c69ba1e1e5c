import pytest

from switchboard.shared import keys, streamids
from switchboard.shared.settings import GatewaySettings, SettingsError, WorkerSettings


def test_stream_ids_compare_numerically_not_as_text():
    assert streamids.later("10-0", "9-5")
    assert streamids.later("5-10", "5-9")
    assert not streamids.later("5-9", "5-9")
    for bad in ("", "5", "a-b", "5-", "-5", "1-2-3"):
        assert not streamids.is_valid(bad)


def test_every_key_of_a_user_shares_one_hash_tag():
    user = "alice@example.com"
    names = [keys.inbound(user, "c"), keys.outbound(user), keys.meta(user), keys.offsets(user),
             keys.dedup(user, "m1"), keys.conversation(user, "c"), keys.lease(user, "c"), keys.notify(user),
             keys.conversations(user), keys.usage(user)]
    tags = {name[name.index("{") + 1:name.index("}")] for name in names}
    assert tags == {f"u:{user}"}
    assert keys.inbound("bob", "c") != keys.inbound(user, "c")
    assert keys.inbound(user, "c").startswith(keys.inbound_prefix(user))


def test_work_shards_are_stable_and_in_range():
    assert keys.work_shard("alice", 1) == 0
    shards = {keys.work_shard(f"user-{i}", 8) for i in range(200)}
    assert shards == set(range(8))
    assert keys.work_shard("alice", 8) == keys.work_shard("alice", 8)


def test_settings_come_from_the_environment_with_documented_defaults():
    s = GatewaySettings.from_env({"SWITCHBOARD_DEV": "1"})  # the development JWT_SECRET needs development mode
    dev = {"SWITCHBOARD_DEV": "1"}
    assert GatewaySettings.from_env({**dev, "TRUSTED_PROXIES": "10.0.0.0/8, ::1"}).trusted_proxies == (
        "10.0.0.0/8", "::1")
    assert GatewaySettings.from_env({**dev, "ALLOWED_ORIGINS": " https://a.example ,https://b.example"}).allowed_origins == (
        "https://a.example", "https://b.example")
    with pytest.raises(SettingsError, match="TRUSTED_PROXIES"):
        GatewaySettings.from_env({**dev, "TRUSTED_PROXIES": "10.0.0.0/8,nonsense"})
    assert (s.port, s.max_message_size, s.host) == (8765, 1 << 20, "127.0.0.1")
    s = GatewaySettings.from_env({"WEBSOCKET_PORT": "9000", "MAX_MESSAGE_SIZE": "2048", "REDIS_URL": "redis://x:1/0",
                                  "WORK_SHARDS": "4", "SWITCHBOARD_DEV": "1"})
    assert (s.port, s.max_message_size, s.redis.url, s.streams.work_shards) == (9000, 2048, "redis://x:1/0", 4)
    w = WorkerSettings.from_env({"CHECKPOINT_TTL": "30", "GRAPH": "pkg.mod:g"})
    assert w.checkpoint_ttl == 30 and w.graph == "pkg.mod:g"
    assert WorkerSettings.from_env({}).checkpoint_ttl is None
    assert w.redis.socket_timeout > w.read_block  # a blocking read must never time out the socket
    assert (WorkerSettings.from_env({}).stream_deltas, WorkerSettings.from_env({}).delta_interval) == (True, 0.05)
    assert WorkerSettings.from_env({"STREAM_DELTAS": "off"}).stream_deltas is False
    assert WorkerSettings.from_env({"STREAM_DELTAS": "1", "DELTA_INTERVAL": "0"}).delta_interval == 0.0
    with pytest.raises(SettingsError, match="STREAM_DELTAS"):
        WorkerSettings.from_env({"STREAM_DELTAS": "maybe"})


@pytest.mark.parametrize("env", [{"WEBSOCKET_PORT": "http"}, {"MAX_MESSAGE_SIZE": "10"},
                                 {"HEARTBEAT_INTERVAL": "-1"}])
def test_bad_settings_are_rejected_with_the_variable_name(env):
    with pytest.raises(SettingsError) as info:
        GatewaySettings.from_env(env)
    assert next(iter(env)) in str(info.value)
