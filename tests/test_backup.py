"""The pure parts of ``switchboard backup``/``restore``: the SYNC reply, the
start of an RDB, the manifest and the checks made before a restore."""

from __future__ import annotations

import io
import json
from pathlib import Path

import msgspec
import pytest

from switchboard import backup, restore
from switchboard.backup import BackupError, Manifest, Module, SyncReader

MARK = b"f8195b67b855c321263d01b99a42e9752594cc41"


def feed_all(reader: SyncReader, chunks: list[bytes]) -> bytes:
    return b"".join(reader.feed(chunk) for chunk in chunks)


# -- the SYNC reply -------------------------------------------------------------------------


def test_a_sized_payload_after_keepalives_is_exactly_its_length():
    reader = SyncReader()
    out = feed_all(reader, [b"\n", b"\n\n$1", b"0\r\n0123", b"456789", b"*1\r\n$4\r\nPING\r\n"])
    assert out == b"0123456789" and reader.done and reader.payload.length == 10
    assert reader.feed(b"more") == b""  # what follows the payload is not the snapshot


def test_fullresync_then_an_eof_marked_payload_split_anywhere():
    body = b"REDIS0012" + bytes(range(256)) * 3
    stream = b"\n\n+FULLRESYNC 8de1 0\r\n\n$EOF:" + MARK + b"\r\n" + body + MARK + b"\r\n*1\r\n"
    for size in (1, 7, 39, 40, 41, 1000, len(stream)):
        reader = SyncReader()
        out = feed_all(reader, [stream[i:i + size] for i in range(0, len(stream), size)])
        assert (out, reader.done, reader.received) == (body, True, len(body)), size
        assert reader.payload.eof_mark == MARK


def test_an_eof_payload_without_its_mark_is_not_done():
    reader = SyncReader()
    out = feed_all(reader, [b"$EOF:" + MARK + b"\r\n", b"x" * 100, MARK[:39]])
    assert not reader.done and out == (b"x" * 100 + MARK[:39])[:-40]


@pytest.mark.parametrize("reply, message", [
    (b"-NOPERM this user has no permissions to run the 'sync' command\r\n", "refused the snapshot: NOPERM"),
    (b"+OK\r\n", "unexpected reply to SYNC"),
    (b"$EOF:short\r\n", "unexpected reply to SYNC"),
    (b"$-1\r\n", "unexpected reply to SYNC"),
    (b"$" + b"9" * 600, "no SYNC header within"),
])
def test_a_refusal_or_a_strange_header_is_a_backup_error(reply, message):
    with pytest.raises(BackupError, match=message):
        SyncReader().feed(reply)


# -- the start of an RDB ----------------------------------------------------------------------


def length(n: int) -> bytes:
    if n < 64:
        return bytes([n])
    if n < 16384:
        return bytes([0x40 | (n >> 8), n & 0xFF])
    return b"\x80" + n.to_bytes(4, "big")


def string(s: bytes) -> bytes:
    return length(len(s)) + s


def aux(name: bytes, value: bytes) -> bytes:
    return b"\xfa" + string(name) + value


RDB_START = (b"REDIS0012" + aux(b"redis-ver", string(b"8.2.3")) + aux(b"ctime", b"\xc2" + (1764780000).to_bytes(4, "little"))
             + aux(b"lzf", b"\xc3" + length(3) + length(30) + b"abc")
             # a module's aux data: its id (64 bits), when (UINT), then typed values up to EOF (0)
             + b"\xf7\x81" + (123).to_bytes(8, "big") + b"\x02\x01"
             + b"\x02" + length(70000) + b"\x03" + b"\0" * 4 + b"\x04" + b"\0" * 8 + b"\x05" + string(b"x" * 300)
             + b"\x00"
             + b"\xf5" + string(b"#!lua name=lib\n..."))


def test_the_key_count_of_database_0_comes_from_resizedb():
    rdb = RDB_START + b"\xfe\x00\xfb" + length(70000) + length(3) + b"\x00" + string(b"k") + string(b"v")
    summary = backup.rdb_summary(io.BytesIO(rdb))
    assert (summary.version, summary.keys) == (12, 70000)
    assert summary.aux == {"redis-ver": "8.2.3", "ctime": "1764780000"}


@pytest.mark.parametrize("rest", [b"\xfe\x01\xfb\x05\x00", b"\xff" + b"\0" * 8])
def test_no_database_0_is_no_keys(rest):
    assert backup.rdb_summary(io.BytesIO(RDB_START + rest)).keys == 0


@pytest.mark.parametrize("rest", [b"\x00" + string(b"k"), b"\xfe\x00\xfb", b"", b"\xf7\x81" + b"\0" * 8 + b"\x02\x01\x09"])
def test_a_layout_not_understood_leaves_the_key_count_unknown(rest):
    assert backup.rdb_summary(io.BytesIO(RDB_START + rest)).keys is None


@pytest.mark.parametrize("data", [b"", b"REDIS", b"NOTREDIS0012....", b"REDISxxxx\xff"])
def test_what_is_not_an_rdb_is_refused(data):
    with pytest.raises(BackupError, match="not an RDB"):
        backup.rdb_summary(io.BytesIO(data))


# -- the manifest and the restore's checks ------------------------------------------------------


def write_backup(directory: Path, rdb: bytes = b"REDIS0012\xff" + b"\0" * 8, **changes) -> Manifest:
    import hashlib

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "dump.rdb").write_bytes(rdb)
    manifest = Manifest(format=backup.FORMAT, version=backup.FORMAT_VERSION, created="2026-01-01T00:00:00Z",
                        redis_version="8.2.3", modules=[Module("search", 21005)], rdb_file="dump.rdb",
                        rdb_bytes=len(rdb), rdb_sha256=hashlib.sha256(rdb).hexdigest(), rdb_version=12, keys=0,
                        keys_from="rdb", transfer="diskless", source="redis://127.0.0.1:6379/0")
    manifest = msgspec.structs.replace(manifest, **changes)
    (directory / "manifest.json").write_bytes(msgspec.json.encode(manifest))
    return manifest


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """An embedded Redis's data directory as a stopped Redis leaves it."""
    d = tmp_path / "data" / "redis"
    (d / "appendonlydir").mkdir(parents=True)
    (d / "appendonlydir" / "appendonly.aof.manifest").write_text("file appendonly.aof.1.base.rdb seq 1 type b\n")
    (d / "appendonlydir" / "appendonly.aof.1.base.rdb").write_bytes(b"REDIS0012old")
    (d / "users.acl").write_text("user default off\n")
    (d / "users").mkdir()
    (d / "users" / "sb-admin").write_text("secret\n")
    return d


def test_restore_puts_the_rdb_in_as_the_aof_base_and_keeps_the_old_aof(tmp_path, data_dir):
    rdb = b"REDIS0012" + b"\x01" * 100_000 + b"\xff" + b"\0" * 8
    write_backup(tmp_path / "b", rdb)
    (data_dir / "dump.rdb").write_bytes(b"REDIS0012stale")
    done = restore.restore(tmp_path / "b", data_dir, now=1767225600)
    assert done.aof == data_dir / "appendonlydir"
    assert snapshot(done.aof) == {"appendonly.aof.1.base.rdb": rdb,
                                  "appendonly.aof.manifest": b"file appendonly.aof.1.base.rdb seq 1 type b\n"}
    assert done.aside == data_dir / "before-restore-20260101T000000Z"
    assert snapshot(done.aside) == {"appendonlydir/appendonly.aof.1.base.rdb": b"REDIS0012old",
                                    "appendonlydir/appendonly.aof.manifest":
                                        b"file appendonly.aof.1.base.rdb seq 1 type b\n",
                                    "dump.rdb": b"REDIS0012stale"}
    assert (data_dir / "users" / "sb-admin").read_text() == "secret\n" and (data_dir / "users.acl").exists()
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "appendonlydir", "before-restore-20260101T000000Z", "users", "users.acl"]


def test_restore_into_a_new_data_directory_moves_nothing_aside(tmp_path):
    write_backup(tmp_path / "b")
    done = restore.restore(tmp_path / "b", tmp_path / "fresh")
    assert done.aside is None and (done.aof / "appendonly.aof.1.base.rdb").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda b: (b / "dump.rdb").write_bytes(b"REDIS0012\xfe" + b"\0" * 8), "does not match its checksum"),
    (lambda b: (b / "dump.rdb").write_bytes(b"REDIS0012\xff" + b"\0" * 9), "has 19 bytes, the manifest says 18"),
    (lambda b: (b / "dump.rdb").unlink(), "is missing"),
    (lambda b: (b / "manifest.json").unlink(), "holds no backup"),
    (lambda b: (b / "manifest.json").write_text("{"), "cannot be read"),
    (lambda b: (b / "manifest.json").write_text(json.dumps({"format": "x"})), "cannot be read"),
    (lambda b: write_backup(b, version=2), "not a switchboard-backup manifest of version 1"),
    (lambda b: write_backup(b, rdb_file="../dump.rdb"), "outside its directory"),
])
def test_a_damaged_or_missing_backup_is_refused_and_nothing_changes(tmp_path, data_dir, damage, message):
    write_backup(tmp_path / "b")
    damage(tmp_path / "b")
    before = snapshot(data_dir.parent)
    with pytest.raises(BackupError, match=message):
        restore.restore(tmp_path / "b", data_dir)
    assert snapshot(data_dir.parent) == before
    assert sorted(p.name for p in data_dir.iterdir()) == ["appendonlydir", "users", "users.acl"]


def test_a_data_dir_given_for_the_redis_directory_is_named(tmp_path, data_dir):
    write_backup(tmp_path / "b")
    with pytest.raises(BackupError, match="is a DATA_DIR; the embedded Redis's data directory is .*/data/redis"):
        restore.restore(tmp_path / "b", data_dir.parent)


def test_the_newest_start_in_a_redis_log_gives_its_pid_and_port():
    log = (b"12823:C 03 Dec 2026 16:54:22.420 * oO0OoO0OoO0Oo Redis is starting oO0OoO0OoO0Oo\n"
           b"12823:M 03 Dec 2026 16:54:22.421 * Running mode=standalone, port=52779.\n"
           b"12823:M 03 Dec 2026 16:54:22.646 # Redis is now ready to exit, bye bye...\n"
           b"12829:M 03 Dec 2026 16:54:23.541 * Running mode=standalone, port=6380.\n")
    assert restore.last_start(log) == (12829, 6380)
    assert restore.last_start(b"nothing here\n") is None


def test_the_default_data_dir_is_the_embedded_redis_one():
    assert restore.default_data_dir({}) == Path(".data/redis")
    assert restore.default_data_dir({"DATA_DIR": "/srv/sb"}) == Path("/srv/sb/redis")


def test_two_restores_in_the_same_second_keep_both_earlier_states(tmp_path, data_dir):
    write_backup(tmp_path / "b")
    first = restore.restore(tmp_path / "b", data_dir, now=1767225600)
    second = restore.restore(tmp_path / "b", data_dir, now=1767225600)
    assert (first.aside.name, second.aside.name) == ("before-restore-20260101T000000Z",
                                                     "before-restore-20260101T000000Z-2")
    assert (first.aside / "appendonlydir" / "appendonly.aof.1.base.rdb").read_bytes() == b"REDIS0012old"
    assert (second.aside / "appendonlydir" / "appendonly.aof.1.base.rdb").read_bytes() == b"REDIS0012\xff" + b"\0" * 8
