"""``switchboard backup`` and ``switchboard restore`` round-trip the whole
store: data written by the real services (streams, hashes, sorted sets, the
checkpoint JSON documents and their indexes, keys with a TTL) is, after a
restore and a start, key for key what it was at the backup -- and still
after one more restart, from the AOF Redis wrote on the restored data --
while what was written after the backup is gone. A damaged backup and a
running Redis are refused, and nothing is changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import redis

from switchboard import restore
from switchboard.embedded_redis import free_port
from switchboard.shared import keys
from tests.support.certs import self_signed
from tests.support.client import Device, new_user
from tests.support.cluster import token
from tests.support.tlsproxy import TLSProxy
from tests.support.wait import until

def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "switchboard.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def state(client: redis.Redis) -> tuple[float, dict[bytes, tuple[bytes, bytes, int]]]:
    """Every key: its type, its value (DUMP: Redis's own serialization) and its time to live --
    an event stream's ``meta`` hash without its epoch, which a restore renews (see :func:`epochs`)."""
    now = time.monotonic()

    def value(key: bytes) -> object:
        if key.endswith(b":meta") and key.startswith(b"sb:{u:"):
            return sorted((k, v) for k, v in client.hgetall(key).items() if k != b"epoch")
        return client.dump(key)

    return now, {key: (client.type(key), value(key), client.pttl(key)) for key in client.scan_iter(count=1000)}


def epochs(client: redis.Redis) -> dict[bytes, bytes]:
    return {key: client.hget(key, "epoch") for key in client.scan_iter(match="sb:{u:*}:meta", count=1000)}


def assert_same(expected: tuple[float, dict], got: tuple[float, dict]) -> None:
    """The keys of ``expected`` still alive are in ``got`` with the same type and value, the
    same expiry (PTTL less the time that passed, within 1.5 s); none is added or lost."""
    elapsed_ms = (got[0] - expected[0]) * 1000
    alive = {k: v for k, v in expected[1].items() if v[2] < 0 or v[2] - elapsed_ms > 1500}
    unsure = {k for k, v in expected[1].items() if k not in alive and v[2] - elapsed_ms > -1500}
    assert set(got[1]) - unsure == set(alive), (set(got[1]) ^ set(alive)) - unsure
    for key, (kind, value, ttl) in alive.items():
        assert got[1][key][:2] == (kind, value), key
        if ttl < 0:
            assert got[1][key][2] == ttl, key
        else:
            assert abs(got[1][key][2] - (ttl - elapsed_ms)) < 1500, (key, ttl, got[1][key][2], elapsed_ms)


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


async def test_a_backup_restored_is_the_store_at_the_backup_and_stays_so(own_redis, tmp_path):
    server, cluster = own_redis
    admin = server.client_env("admin")  # sb-admin, as an operator runs it
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"))
    user = new_user()
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    await phone.connect()
    try:
        for n in (1, 2):
            await phone.send("c", f"m{n}", f"message {n}")
            reply = await phone.wait_reply(f"m{n}")
        await phone.ack(reply["id"])
        client = redis.Redis.from_url(server.url)
        await until(lambda: client.hget(keys.offsets(user), "phone"), 10, "the ack is stored")
    finally:
        await phone.close()
    cluster.stop()  # nothing writes now: what is read next is what the backup must hold

    client.set("sb-test:ttl", "expires", ex=600)
    client.json().set("sb-test:doc", "$", {"a": [1, 2, {"b": "c"}]})
    checkpoints = [k for k in client.scan_iter(match="checkpoint:*") if client.type(k) == b"ReJSON-RL"]
    assert checkpoints and client.exists(keys.outbound(user), keys.offsets(user), keys.conversations(user)) == 3
    indexes = set(client.execute_command("FT._LIST"))
    assert indexes
    at_backup = state(client)
    backup_epochs = epochs(client)

    out = tmp_path / "backup"
    run = cli(admin, "backup", "--out", str(out))
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["keys"], manifest["keys_from"], manifest["transfer"]) == (len(at_backup[1]), "rdb", "diskless")
    assert {"search", "ReJSON"} <= {m["name"] for m in manifest["modules"]}
    assert f"{len(at_backup[1])} keys" in run.stdout and run.stdout.count("\n") == 1
    again = cli(admin, "backup", "--out", str(out))
    assert again.returncode == 1 and "already holds a backup" in again.stderr

    # After the backup: new events, a changed document, a deleted stream, a new key.
    client.xadd(keys.outbound(user), {"kind": "user", "text": "after the backup"})
    client.json().set(checkpoints[0], "$.after", 1)
    client.delete(keys.offsets(user), "sb-test:ttl")
    client.set("sb-test:new", "after")
    client.close()
    server.stop()

    data = server.data_dir
    before = files(data)
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    rdb = bytearray((damaged / "dump.rdb").read_bytes())
    rdb[len(rdb) // 2] ^= 0x01
    (damaged / "dump.rdb").write_bytes(rdb)
    refused = cli(admin, "restore", str(damaged), "--data-dir", str(data))
    assert refused.returncode == 1 and "does not match its checksum" in refused.stderr, refused.stderr
    assert "nothing was changed" in refused.stderr and "Traceback" not in refused.stderr
    assert files(data) == before

    restored = cli(admin, "restore", str(out), "--data-dir", str(data))
    assert restored.returncode == 0, restored.stderr
    aside = next(data.glob("before-restore-*"))
    assert str(aside) in restored.stdout
    assert files(aside / "appendonlydir") == {k[len("appendonlydir/"):]: v for k, v in before.items()
                                              if k.startswith("appendonlydir/")}

    assert "event streams have a new epoch" in restored.stdout
    for start in ("first start", "restart"):
        server.start()
        client = redis.Redis.from_url(server.url)
        try:
            assert_same(at_backup, state(client))
            # Every stream starts a new life: a device holding events written after
            # the backup resumes with recovered: false, never on events that are gone.
            renewed = epochs(client)
            assert renewed.keys() == backup_epochs.keys() and renewed
            assert all(renewed[k] != backup_epochs[k] for k in renewed), start
            if start == "first start":
                first_epochs = renewed
            assert renewed == first_epochs  # a restart keeps them
            assert set(client.execute_command("FT._LIST")) == indexes, start
            assert client.dbsize() == manifest["keys"] - sum(
                1 for v in at_backup[1].values() if 0 <= v[2] < (time.monotonic() - at_backup[0]) * 1000)
        finally:
            client.close()
        if start == "first start":
            running = cli(admin, "restore", str(out), "--data-dir", str(data))
            assert running.returncode == 1 and "is running (pid" in running.stderr, running.stderr
            assert restore.redis_processes_on(data) == [restore.Running(server.process.pid, server.port)]
        server.stop()
    # The first start wrote a fresh incremental AOF on the restored base.
    assert sorted(p.name for p in (data / "appendonlydir").iterdir()) == [
        "appendonly.aof.1.base.rdb", "appendonly.aof.1.incr.aof", "appendonly.aof.manifest"]


def test_a_backup_over_tls_from_disk_is_the_servers_own_rdb_and_failures_are_one_line(own_redis, tmp_path):
    server, _ = own_redis
    client = redis.Redis.from_url(server.url)
    client.config_set("repl-diskless-sync", "no")  # Redis writes the snapshot to its disk, then sends it: $<length>
    for n in range(300):
        client.hset(f"sb-test:{n}", mapping={"n": n, "pad": os.urandom(500)})  # incompressible
    cert, key = self_signed(tmp_path)
    admin = server.client_env("admin")
    with TLSProxy(server.port, cert, key) as proxy:
        tls = {**admin, "REDIS_URL": f"rediss://localhost:{proxy.port}/0?ssl_ca_certs={quote(str(cert))}"}
        run = cli(tls, "backup", "--out", str(tmp_path / "b"))
        assert run.returncode == 0, run.stderr
        assert proxy.connections >= 2  # the reads and the SYNC, both through TLS
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert (manifest["transfer"], manifest["keys"], manifest["keys_from"]) == ("disk", 300, "rdb")
    # The file Redis wrote for this sync is the one received, byte for byte.
    assert (tmp_path / "b" / "dump.rdb").read_bytes() == (server.data_dir / "dump.rdb").read_bytes()
    assert manifest["rdb_bytes"] > 150_000  # several chunks
    assert (tmp_path / "b" / "dump.rdb").stat().st_mode & 0o777 == 0o600  # every user's data: this account only

    # A user who may read INFO and REPLCONF but not SYNC: refused once the transfer starts.
    client.acl_setuser("sb-test-nosync", enabled=True, passwords=["+pw"], keys=["*"],
                       commands=["+info", "+module|list", "+dbsize", "+client|setinfo", "+replconf"])
    gateway = cli({"REDIS_URL": server.address, "REDIS_USERNAME": "sb-test-nosync", "REDIS_PASSWORD": "pw"},
                  "backup", "--out", str(tmp_path / "g"))
    assert gateway.returncode == 1 and "backup failed: Redis refused the snapshot: NOPERM" in gateway.stderr, \
        gateway.stderr
    nobody = cli({**admin, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, "backup", "--out", str(tmp_path / "n"))
    assert nobody.returncode == 1 and "backup failed: ConnectionError" in nobody.stderr, nobody.stderr
    for failed in (gateway, nobody):
        assert "Traceback" not in failed.stderr and failed.stderr.count("\n") == 1
    assert not [*(tmp_path / "g").glob("dump.rdb*"), *(tmp_path / "n").glob("dump.rdb*")]  # no partial file left
    client.close()
