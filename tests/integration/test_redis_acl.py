"""The Redis ACL users on a real server: each tier's services log in as its
own user; each user is refused (NOPERM) what its tier has no business doing;
``switchboard acl`` renders what the suite runs under and loads with ``ACL
LOAD``; the embedded Redis refuses a client that does not log in; a tier user
works over ``rediss://``.

That the rules are *enough* is the rest of the suite: every service it starts
logs in as its tier's user, and a refusal fails the test
(``tests/support/cluster.py``)."""

from __future__ import annotations

import io
import os
import shlex
import socket
import stat
from contextlib import redirect_stdout
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from switchboard import cli
from switchboard.embedded_redis import EmbeddedRedis, free_port
from switchboard.gateway.store import GatewayStore
from switchboard.shared import acl, keys, scripts
from switchboard.shared.connection import make_client
from switchboard.shared.settings import RedisSettings, StreamSettings
from tests.support.certs import self_signed
from tests.support.cluster import tier_env
from tests.support.tlsproxy import TLSProxy


def _embedded_dir(redis_url: str) -> Path:
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return Path(admin.config_get("dir")["dir"])
    finally:
        admin.close()


@pytest.fixture(scope="module")
def tiers(redis_url):
    """Each tier's login on the suite's Redis (its embedded users)."""
    found = tier_env(redis_url)
    if set(found) != set(acl.SERVICE_TIERS):
        pytest.skip("the suite's Redis is not the embedded one (REDIS_URL is set): no tier users to test")
    return found


@pytest.fixture
def login(redis_url, tiers):
    """``login(tier)``: a client of the suite's Redis logged in as the tier's user."""
    address = RedisSettings(url=redis_url).url
    clients = []

    def connect(tier: str) -> redis.Redis:
        env = tiers[tier]
        client = redis.Redis.from_url(address, username=env["REDIS_USERNAME"],
                                      password=acl.read_password(env["REDIS_PASSWORD_FILE"]), decode_responses=True)
        clients.append(client)
        return client

    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    shas = {name: admin.script_load(scripts.source(name)) for name in scripts.names()}
    connect.sha = shas
    yield connect
    for client in clients:
        client.close()
    admin.acl_log_reset()  # the refusals below are this test's, not a cluster's
    admin.close()


def _refused(call, *args) -> str:
    """Run a command that must be refused; return the refusal."""
    with pytest.raises((NoPermissionError, ResponseError)) as caught:
        call(*args)
    message = str(caught.value)
    assert isinstance(caught.value, NoPermissionError) or "no permissions" in message.lower(), message
    return message


# -- the services ------------------------------------------------------------------------


async def test_the_suites_services_log_in_as_their_tier_users(cluster, redis_url, tiers):
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        before = admin.client_id()  # client ids only grow: later ones are the services'
        cluster.start_many(("fanout", "f"), ("worker", "w"), ("gateway", "gw"))
        # A connection still opening shows as `default` until its AUTH (its
        # last command NULL, or the AUTH/HELLO itself): only the logged-in count.
        users = {int(client["id"]): client["user"] for client in admin.client_list()
                 if int(client["id"]) > before
                 and not (client["user"] == "default" and client.get("cmd") in ("NULL", "auth", "hello"))}
    finally:
        admin.close()
    assert set(users.values()) == {acl.GATEWAY.name, acl.WORKER.name, acl.FANOUT.name}, users


# -- tight: what each tier is refused ----------------------------------------------------

USER, CONV = "victim", "c1"


def test_the_gateway_cannot_take_work_read_secrets_or_administer(login):
    gw = login("gateway")
    work = keys.work(0)
    _refused(gw.xreadgroup, keys.WORKER_GROUP, "gw-1", {work: ">"})  # take workers' notices
    _refused(gw.xrange, work)  # or read them
    _refused(gw.get, keys.lease(USER, CONV))  # a worker's lease token (it may only see that one exists)
    _refused(gw.xrange, keys.dead_letters())
    _refused(gw.execute_command, "JSON.SET", f"checkpoint:{keys.thread_id(USER, CONV)}:__empty__:x", "$", "{}")
    _refused(gw.delete, keys.outbound(USER))
    _refused(gw.execute_command, "SUBSCRIBE", keys.notify(USER))  # listen to users' events: the fanout's
    for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("SCAN", "0"), ("ACL", "LIST"),
                    ("CLIENT", "LIST"), ("MONITOR",), ("SCRIPT", "FLUSH")):
        _refused(gw.execute_command, *command)
    # A reply is the worker's to commit: the script runs with the gateway's rights.
    commit = [keys.lease(USER, CONV), keys.conversation(USER, CONV), keys.outbound(USER), keys.meta(USER),
              keys.inbound(USER, CONV), keys.lease(USER, CONV), keys.lease(USER, CONV), keys.usage(USER)]
    message = _refused(gw.evalsha, login.sha["commit"], len(commit), *commit, "t", "0-0", "1-1", "e", 10, "ch", "", 0)
    assert "ACL failure in script" in message


def test_the_worker_cannot_admit_devices_read_offsets_or_manage_users(login):
    worker = login("worker")
    admit = [keys.devices(USER), keys.device_owners(USER)]
    _refused(worker.evalsha, login.sha["admit_device"], len(admit), *admit, "d", "conn", 0, 1, 32, 1000)
    _refused(worker.hgetall, keys.offsets(USER))
    _refused(worker.get, keys.dedup(USER, "m1"))
    _refused(worker.zrange, keys.ip_connections("10.0.0.1"), 0, -1)
    _refused(worker.xadd, keys.inbound(USER, CONV), {"text": "forged"})  # messages come from gateways only
    _refused(worker.xrange, keys.dead_letters())  # it writes dead letters, never reads them
    _refused(worker.execute_command, "SUBSCRIBE", keys.gateway_delivery("gw-1"))
    for command in (("ACL", "SETUSER", "x", "on"), ("ACL", "LIST"), ("FLUSHALL",), ("CONFIG", "SET", "save", ""),
                    ("KEYS", "*")):
        _refused(worker.execute_command, *command)


def test_the_fanout_only_reads_outbound_streams(login):
    fanout = login("fanout")
    _refused(fanout.xadd, keys.inbound(USER, CONV), {"text": "forged"})
    _refused(fanout.xadd, keys.outbound(USER), {"kind": "assistant"})  # forge an event
    _refused(fanout.delete, keys.outbound(USER))  # it may DEL its liveness key, nothing else
    _refused(fanout.xtrim, keys.outbound(USER), 0)
    _refused(fanout.execute_command, "JSON.SET", f"checkpoint:{keys.thread_id(USER, CONV)}:__empty__:x", "$", "{}")
    _refused(fanout.execute_command, "JSON.GET", f"checkpoint:{keys.thread_id(USER, CONV)}:__empty__:x")
    _refused(fanout.execute_command, "FT.SEARCH", acl.CHECKPOINT_PREFIX, "*")
    _refused(fanout.xreadgroup, keys.WORKER_GROUP, "f", {keys.work(0): ">"})
    _refused(fanout.get, keys.dedup(USER, "m1"))
    _refused(fanout.hgetall, keys.usage(USER))
    _refused(fanout.set, keys.lease(USER, CONV), "stolen")
    read = [keys.dedup(USER, "m1"), keys.meta(USER)]  # its read script with a key it may not read
    _refused(fanout.evalsha, login.sha["read_outbound"], len(read), *read, "0-0", 10, 1000)
    _refused(fanout.execute_command, "FLUSHALL")
    # ... and what it needs, it has:
    assert fanout.xrange(keys.outbound(USER)) == []
    assert fanout.publish(keys.gateway_delivery("gw-1"), b"x") == 0


def test_how_redis_checks_scripts_and_module_commands(redis_url):
    """What shared/acl.py's design rests on, as this Redis does it: EVALSHA
    and JSON.GET ask for read *and* write on their keys, a script's own
    commands are checked against the caller's rights, and FT.SEARCH checks
    only the index name, never the documents it returns. (If an upgrade
    changes one, the rules and docs/security.md may be tightened.)"""
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    probe, password = "acl-probe", acl.new_password()
    try:
        admin.execute_command("FT.CREATE", "acl-probe-index", "ON", "JSON", "PREFIX", "1", "acl-probe:",
                              "SCHEMA", "$.t", "AS", "t", "TAG")
        admin.execute_command("JSON.SET", "acl-probe:1", "$", '{"t": "secret"}')
        read = admin.script_load("return redis.call('GET', KEYS[1])")
        write = admin.script_load("return redis.call('SET', KEYS[1], 'x')")
        admin.acl_setuser(probe, enabled=True, passwords=[f"+{password}"],
                          keys=["%R~acl-probe:*", "acl-probe-index"],
                          commands=["+evalsha", "+get", "+json.get", "+ft.search"])
        user = redis.Redis.from_url(RedisSettings(url=redis_url).url, username=probe, password=password,
                                    decode_responses=True)
        admin.set("acl-probe:s", "value")
        assert user.get("acl-probe:s") == "value"  # read-only is enough to read a key ...
        _refused(user.evalsha, read, 1, "acl-probe:s")  # ... not to pass it to a script, even one that reads
        _refused(user.execute_command, "JSON.GET", "acl-probe:1")  # nor for JSON.GET
        admin.acl_setuser(probe, enabled=True, keys=["~acl-probe:s", "acl-probe-index"], reset_keys=True)
        assert "ACL failure in script" in _refused(user.evalsha, write, 1, "acl-probe:s")  # SET is not granted
        admin.acl_setuser(probe, enabled=True, keys=["acl-probe-index"], reset_keys=True)
        found = user.execute_command("FT.SEARCH", "acl-probe-index", "*")
        assert "secret" in str(found)  # a document whose key the user may not touch
        user.close()
    finally:
        admin.acl_deluser(probe)
        admin.execute_command("FT.DROPINDEX", "acl-probe-index", "DD")
        admin.delete("acl-probe:s")
        admin.acl_log_reset()
        admin.close()


# -- the embedded Redis --------------------------------------------------------------------


def test_the_embedded_redis_refuses_a_client_that_does_not_log_in(redis_url, tiers):
    address = urlsplit(redis_url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as sock:
        assert _ask(sock, "PING").startswith(b"-NOAUTH")
        assert _ask(sock, "GET", keys.dead_letters()).startswith(b"-NOAUTH")
        assert _ask(sock, "AUTH", "default", "anything").startswith(b"-WRONGPASS")  # `default` is disabled
        assert _ask(sock, "AUTH", "anything").startswith(b"-WRONGPASS")  # a requirepass-style login
    with pytest.raises(AuthenticationError):
        redis.Redis(host=address.hostname, port=address.port, username=acl.GATEWAY.name, password="guess").ping()

    directory = _embedded_dir(redis_url)
    users = directory / "users"
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(directory / "users.acl").st_mode) == 0o600
    for tier in acl.USERS:
        assert stat.S_IMODE(os.stat(acl.password_path(users, tier)).st_mode) == 0o600


async def test_script_writes_survive_a_restart_under_the_acl_file(tmp_path):
    """Redis replays the AOF as the ``default`` user, and checks a replayed
    transaction (every script's writes are one) against its rights again at
    EXEC: a ``default`` without rights would lose every accepted message on a
    restart. Disabled, it keeps them (shared/acl.py, DEFAULT_USER_RULES)."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), appendfsync="always")
    server.start()
    try:
        client = make_client(RedisSettings.from_env(server.client_env("gateway")))
        accepted = await GatewayStore(client, StreamSettings()).accept("alice", "phone", "c1", "m1", "hello")
        await client.aclose()
        server.stop()
        server.start()
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        assert admin.get(keys.dedup("alice", "m1")) == accepted.id
        assert [entry_id for entry_id, _ in admin.xrange(keys.inbound("alice", "c1"))] == [accepted.id]
        assert admin.xlen(keys.outbound("alice")) == 1
        admin.close()
    finally:
        server.stop()


def _ask(sock: socket.socket, *args: str) -> bytes:
    """Send one command (RESP) and read its one-line reply."""
    sock.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args))
    reply = b""
    while not reply.endswith(b"\r\n"):
        reply += sock.recv(512)
    return reply


def _acl(*argv: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["acl", *argv]) == 0
    return out.getvalue()


def _rules_without_passwords(client: redis.Redis) -> list[str]:
    return sorted(" ".join(w for w in rule.split() if not w.startswith("#")) for rule in client.acl_list())


def test_switchboard_acl_renders_what_the_suite_runs_under_and_loads_into_a_fresh_redis(redis_url, tmp_path):
    directory = _embedded_dir(redis_url)
    # The embedded Redis loads exactly what `switchboard acl` prints for its passwords.
    assert _acl("--passwords", str(directory / "users")) == (directory / "users.acl").read_text()

    fresh = EmbeddedRedis(tmp_path / "fresh", port=free_port())
    fresh.start()
    try:
        passwords = tmp_path / "secrets"
        fresh.acl_file.write_text(_acl("--passwords", str(passwords), "--generate"))
        redis.Redis.from_url(fresh.url).execute_command("ACL", "LOAD")
        for tier in acl.USERS:
            client = redis.Redis(port=fresh.port, username=acl.USERS[tier].name,
                                 password=acl.read_password(acl.password_path(passwords, tier)))
            assert client.ping()
            client.close()
        admin = redis.Redis(port=fresh.port, username=acl.ADMIN.name, decode_responses=True,
                            password=acl.read_password(acl.password_path(passwords, "admin")))
        suite = redis.Redis.from_url(redis_url, decode_responses=True)
        assert _rules_without_passwords(admin) == _rules_without_passwords(suite)
        suite.close()
        with pytest.raises(AuthenticationError):  # the fresh server's own passwords are gone
            redis.Redis.from_url(fresh.url).ping()

        # The same users as ACL SETUSER commands (a managed Redis), with passwords printed.
        for line in _acl("--generate", "--commands").splitlines():
            assert admin.execute_command(*shlex.split(line)) == "OK"
        fanout_line = next(line for line in _acl("--generate").splitlines() if " sb-fanout " in line)
        assert " >" in fanout_line  # without --passwords, generated passwords are in the output
        admin.close()
    finally:
        fresh.stop()


# -- TLS --------------------------------------------------------------------------------


async def test_a_tier_user_logs_in_over_rediss(redis_url, tiers, tmp_path):
    cert, key = self_signed(tmp_path)
    with TLSProxy(urlsplit(redis_url).port, cert, key) as proxy:
        env = {"REDIS_URL": f"rediss://localhost:{proxy.port}/0?ssl_ca_certs={quote(str(cert))}", **tiers["gateway"]}
        client = make_client(RedisSettings.from_env(env))  # the services' own client
        try:
            await client.xadd(keys.work(9), {"user": "u", "conv": "c"})
            with pytest.raises(NoPermissionError):
                await client.xreadgroup(keys.WORKER_GROUP, "gw", {keys.work(9): ">"})
        finally:
            await client.aclose()
        wrong = make_client(RedisSettings.from_env({**env, "REDIS_PASSWORD_FILE": "", "REDIS_PASSWORD": "guess"}))
        with pytest.raises(AuthenticationError):
            await wrong.ping()
        await wrong.aclose()
        assert proxy.connections >= 2
    admin = redis.Redis.from_url(redis_url)
    admin.delete(keys.work(9))
    admin.acl_log_reset()
    admin.close()
