"""RedisSettings' credentials: from the URL, REDIS_USERNAME, REDIS_PASSWORD
or REDIS_PASSWORD_FILE; never left in the URL, never in a repr; bad ones are
a SettingsError."""

from __future__ import annotations

import pytest

from switchboard.shared.redis_url import SentinelTarget, redacted, sentinel_target, split_credentials
from switchboard.shared.settings import RedisSettings, SettingsError, WorkerSettings


def test_the_urls_credentials_move_out_of_it():
    s = RedisSettings.from_env({"REDIS_URL": "rediss://sb-worker:p%40ss@redis:6380/0?ssl_ca_certs=%2Fca.pem"})
    assert (s.url, s.username, s.password) == ("rediss://redis:6380/0?ssl_ca_certs=%2Fca.pem", "sb-worker", "p@ss")
    s = RedisSettings(url="redis://:only-a-password@redis/0")
    assert (s.url, s.username, s.password) == ("redis://redis/0", None, "only-a-password")
    assert split_credentials("unix:///run/redis.sock?db=0&password=x") == ("unix:///run/redis.sock?db=0", None, "x")
    assert split_credentials("redis://redis:6379/0") == ("redis://redis:6379/0", None, None)


def test_the_settings_replace_the_urls_credentials():
    s = RedisSettings.from_env({"REDIS_URL": "redis://sb-admin:admin-pw@redis/0", "REDIS_USERNAME": "sb-fanout",
                                "REDIS_PASSWORD": "fanout-pw"})
    assert (s.url, s.username, s.password) == ("redis://redis/0", "sb-fanout", "fanout-pw")
    # A username in the URL and the password from a Secret's file.
    s = RedisSettings.from_env({"REDIS_URL": "redis://sb-gateway@redis/0", "REDIS_PASSWORD": "gw-pw"})
    assert (s.username, s.password) == ("sb-gateway", "gw-pw")


def test_a_password_file_is_read_without_its_line_end(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("from-a-secret\n")
    s = WorkerSettings.from_env({"REDIS_USERNAME": "sb-worker", "REDIS_PASSWORD_FILE": str(secret)}).redis
    assert (s.username, s.password) == ("sb-worker", "from-a-secret")


@pytest.mark.parametrize("env, message", [
    ({"REDIS_PASSWORD": "a", "REDIS_PASSWORD_FILE": "/x"}, "both set"),
    ({"REDIS_PASSWORD_FILE": "/nonexistent/password"}, "cannot read"),
    ({"REDIS_USERNAME": "sb-worker"}, "has no password"),
    ({"REDIS_URL": "http://sb-admin:secret-pw@redis/0"}, "not a redis://"),
])
def test_bad_credentials_are_a_settings_error(env, message):
    with pytest.raises(SettingsError, match=message) as caught:
        RedisSettings.from_env(env)
    assert "secret-pw" not in str(caught.value)


def test_an_empty_password_file_is_refused(tmp_path):
    (tmp_path / "password").write_text("\n")
    with pytest.raises(SettingsError, match="empty"):
        RedisSettings.from_env({"REDIS_PASSWORD_FILE": str(tmp_path / "password")})


def test_the_password_never_shows():
    s = RedisSettings.from_env({"REDIS_URL": "redis://sb-admin:hunter2-hunter2@redis/0"})
    assert "hunter2" not in repr(s) and "hunter2" not in s.url
    assert "hunter2" not in repr(WorkerSettings(redis=s))
    assert redacted("redis://sb-admin:hunter2@redis:6379/0?db=0") == "redis://sb-admin:***@redis:6379/0?db=0"
    assert redacted("redis://redis:6379/0") == "redis://redis:6379/0"


def test_a_sentinel_url_names_the_sentinels_and_the_master():
    s = RedisSettings.from_env({"REDIS_URL": "redis+sentinel://sb-worker:pw@s1:26380,s2,[::1]:26381/prod/2",
                                "REDIS_SENTINEL_USERNAME": "watcher", "REDIS_SENTINEL_PASSWORD": "sentinel-pw"})
    assert (s.url, s.username, s.password) == ("redis+sentinel://s1:26380,s2,[::1]:26381/prod/2", "sb-worker", "pw")
    assert (s.sentinel_username, s.sentinel_password) == ("watcher", "sentinel-pw")
    assert "sentinel-pw" not in repr(s)
    assert sentinel_target(s.url) == SentinelTarget((("s1", 26380), ("s2", 26379), ("::1", 26381)), "prod", 2)
    assert sentinel_target("redis+sentinel://s1/prod").db == 0


@pytest.mark.parametrize("env, message", [
    ({"REDIS_URL": "redis+sentinel://s1:26379"}, "name the master"),
    ({"REDIS_URL": "redis+sentinel://s1:26379/prod/x"}, "not a number"),
    ({"REDIS_URL": "redis+sentinel://s1:huge/prod"}, "not host or host:port"),
    ({"REDIS_URL": "redis+sentinel://s1,/prod"}, "not host or host:port"),
    ({"REDIS_URL": "redis+sentinel://s1/prod", "REDIS_SENTINEL_USERNAME": "w"}, "has no password"),
    ({"REDIS_URL": "redis+sentinel://s1/prod", "REDIS_SENTINEL_PASSWORD": "a",
      "REDIS_SENTINEL_PASSWORD_FILE": "/x"}, "both set"),
])
def test_a_bad_sentinel_url_is_a_settings_error(env, message):
    with pytest.raises(SettingsError, match=message):
        RedisSettings.from_env(env)


def test_waiting_for_replicas_is_off_unless_asked_and_bounded():
    assert (RedisSettings.from_env({}).wait_replicas, RedisSettings.from_env({}).wait_timeout_ms) == (0, 1000)
    s = RedisSettings.from_env({"REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT_MS": "250"})
    assert (s.wait_replicas, s.wait_timeout_ms) == (1, 250)
    with pytest.raises(SettingsError, match="below the minimum 1"):
        RedisSettings.from_env({"REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT_MS": "0"})  # WAIT 0: for ever
    with pytest.raises(SettingsError, match="not an integer"):
        RedisSettings.from_env({"REDIS_WAIT_REPLICAS": "one"})


def test_a_cluster_url_names_its_seed_nodes():
    from switchboard.shared.redis_url import cluster_nodes

    assert cluster_nodes("redis+cluster://sb-gateway:pw@a:7000,b,[::1]:7002/0") == (("a", 7000), ("b", 6379),
                                                                                   ("::1", 7002))
    assert RedisSettings(url="redis+cluster://sb-gateway:pw@a:7000").password == "pw"  # not left in the URL
    for url, message in [("redis+cluster://a/1", "only database 0"), ("redis+cluster://a:x", "not host or host:port"),
                         ("redis://a", "not a redis\\+cluster://")]:
        with pytest.raises(ValueError, match=message):
            cluster_nodes(url)
    settings = RedisSettings.from_env({"REDIS_URL": "redis+cluster://sb-gateway:pw@a:7000,b:7001"})
    assert settings.cluster and settings.url == "redis+cluster://a:7000,b:7001" and settings.password == "pw"
    assert not RedisSettings.from_env({"REDIS_URL": "redis://a:7000"}).cluster
    with pytest.raises(SettingsError, match="only database 0"):
        RedisSettings.from_env({"REDIS_URL": "redis+cluster://a:7000/2"})
    assert RedisSettings.from_env({"REDIS_URL": "redis+cluster://a:7000", "REDIS_WAIT_REPLICAS": "1"}).wait_replicas == 1
