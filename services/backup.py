"""``switchboard backup``: the whole store as one RDB file, Redis's own
snapshot format, and the manifest that says what it is.

*Backup* takes the snapshot over the network the way ``redis-cli --rdb``
does, as the operator (``sb-admin``), so it works for the embedded Redis and
for a remote one whose files the command line cannot read: ``REPLCONF capa
eof`` (the payload may come as ``$EOF:<mark>``, from a diskless sync),
``REPLCONF rdb-only 1`` (Redis 7+: the snapshot only, no replication stream
after it), then ``SYNC``. Redis forks and writes a point-in-time RDB to the
connection; the reply is read here with :class:`SyncReader` (no I/O) and
streamed in chunks to ``DIR/dump.rdb``. ``DIR/manifest.json`` says what the
file is (:class:`Manifest`).

*Restore* is :mod:`switchboard.restore`'s.

The backup holds data only: the data directory's ACL file and password
files stay as they are.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Literal

import msgspec

from switchboard.shared.errors import SwitchboardError

FORMAT = "switchboard-backup"
FORMAT_VERSION = 1
RDB_FILE = "dump.rdb"
MANIFEST_FILE = "manifest.json"
CHUNK = 64 * 1024  #: bytes read from the socket or a file at a time
SILENCE_TIMEOUT = 60.0  #: seconds without a byte from Redis before a backup gives up
HEADER_MAX = 512  #: bytes a SYNC reply line may take (``+FULLRESYNC <id> <offset>`` is ~60)
EOF_MARK_SIZE = 40  #: the random mark around a diskless payload (RDB_EOF_MARK_SIZE in Redis)


class BackupError(SwitchboardError):
    """A backup cannot be taken, or a backup cannot be restored (nothing was changed)."""


# -- the SYNC reply (no I/O) ---------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """What follows the SYNC header: ``length`` bytes, or bytes up to ``eof_mark``."""

    length: int | None = None
    eof_mark: bytes | None = None


class SyncReader:
    """The master's side of a ``SYNC``, fed bytes as they arrive.

    Before the payload Redis may send newlines (keepalives while the fork
    starts, or while a diskless sync waits ``repl-diskless-sync-delay`` for
    more replicas) and, to a PSYNC-capable client, ``+FULLRESYNC <id>
    <offset>``; then ``$<len>\\r\\n`` (from a file on Redis's disk) or
    ``$EOF:<40 bytes>\\r\\n`` (straight from the fork, ended by the same 40
    bytes). :meth:`feed` returns the payload bytes to keep; :attr:`done` says
    the payload is complete. Anything after it is ignored."""

    def __init__(self) -> None:
        self.payload: Payload | None = None
        self.received = 0  #: payload bytes returned so far
        self.done = False
        self._line = b""
        self._tail = b""  #: the last bytes of an EOF-marked payload, held back

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        if self.payload is None:
            data = self._header(data)
            if self.payload is None:
                return b""
        return self._eof_body(data) if self.payload.eof_mark else self._sized_body(data)

    def _header(self, data: bytes) -> bytes:
        while self.payload is None:
            if not self._line:
                data = data.lstrip(b"\n")  # keepalives
            end = data.find(b"\n")
            if end < 0:
                self._line += data
                if len(self._line) > HEADER_MAX:
                    raise BackupError(f"Redis sent no SYNC header within {HEADER_MAX} bytes")
                return b""
            line, data = (self._line + data[:end]).rstrip(b"\r"), data[end + 1:]
            self._line = b""
            if line.startswith(b"-"):
                raise BackupError(f"Redis refused the snapshot: {line[1:].decode(errors='replace')}")
            if line.startswith((b"+FULLRESYNC", b"+CONTINUE")):
                continue
            if line.startswith(b"$EOF:") and len(line) == 5 + EOF_MARK_SIZE:
                self.payload = Payload(eof_mark=line[5:])
            elif line.startswith(b"$") and line[1:].isdigit():
                self.payload = Payload(length=int(line[1:]))
            else:
                raise BackupError(f"unexpected reply to SYNC: {line[:80]!r}")
        return data

    def _sized_body(self, data: bytes) -> bytes:
        assert self.payload is not None and self.payload.length is not None
        data = data[:self.payload.length - self.received]
        self.received += len(data)
        self.done = self.received == self.payload.length
        return data

    def _eof_body(self, data: bytes) -> bytes:
        mark = self.payload.eof_mark  # type: ignore[union-attr]
        data = self._tail + data
        end = data.find(mark)
        if end >= 0:  # the mark is 40 random characters: Redis relies on it not occurring in the RDB
            self.done = True
            self._tail = b""
            self.received += end
            return data[:end]
        keep = max(len(data) - EOF_MARK_SIZE, 0)
        self._tail = data[keep:]
        self.received += keep
        return data[:keep]


# -- what the RDB says about itself ----------------------------------------------------------

_AUX, _MODULE_AUX, _FUNCTION, _SELECTDB, _RESIZEDB, _EOF, _SLOT_INFO = 0xFA, 0xF7, 0xF5, 0xFE, 0xFB, 0xFF, 0xF4


@dataclass(frozen=True)
class RdbSummary:
    version: int  #: the RDB format version (12 for Redis 7.4 .. 8.2)
    keys: int | None  #: keys of database 0 when the snapshot was taken (RESIZEDB); None: not found
    aux: dict[str, str]  #: the short auxiliary fields (redis-ver, ctime, ...)


class _Reader:
    def __init__(self, f: BinaryIO):
        self.f = f

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise BackupError("the RDB ends early")
        return data

    def skip(self, n: int) -> None:
        self.f.seek(n, io.SEEK_CUR)

    def length(self) -> tuple[int, bool]:
        """Redis's length encoding: (value, True when it names a string encoding)."""
        b = self.take(1)[0]
        kind = b >> 6
        if kind == 0:
            return b & 0x3F, False
        if kind == 1:
            return ((b & 0x3F) << 8) | self.take(1)[0], False
        if b == 0x80:
            return int.from_bytes(self.take(4), "big"), False
        if b == 0x81:
            return int.from_bytes(self.take(8), "big"), False
        if kind == 3:
            return b & 0x3F, True
        raise BackupError(f"bad length byte {b:#x} in the RDB")

    def string(self, keep: int = 0) -> str | None:
        """A string (its value when short and plain or an integer, else None: skipped)."""
        n, encoded = self.length()
        if not encoded:
            if n <= keep:
                return self.take(n).decode(errors="replace")
            self.skip(n)
            return None
        if n in (0, 1, 2):  # an integer in 1, 2 or 4 bytes, little endian
            return str(int.from_bytes(self.take(1 << n), "little", signed=True))
        if n == 3:  # LZF: compressed length, plain length, data
            compressed, _ = self.length()
            self.length()
            self.skip(compressed)
            return None
        raise BackupError(f"unknown string encoding {n} in the RDB")


def rdb_summary(f: BinaryIO) -> RdbSummary:
    """Read the start of an RDB (up to database 0's size, never the keys).
    Not an RDB: :class:`BackupError`. A layout this reader does not know
    (a newer Redis): ``keys`` is None."""
    r = _Reader(f)
    magic = f.read(9)
    if len(magic) != 9 or not magic.startswith(b"REDIS") or not magic[5:].isdigit():
        raise BackupError("not an RDB file (no REDIS magic)")
    version, aux = int(magic[5:]), {}
    try:
        return _summary(r, version, aux)
    except BackupError:
        return RdbSummary(version, None, aux)


def _summary(r: _Reader, version: int, aux: dict[str, str]) -> RdbSummary:
    db: int | None = None
    while True:
        op = r.take(1)[0]
        if op == _AUX:
            name, value = r.string(64), r.string(256)
            if name is not None and value is not None:
                aux[name] = value
        elif op == _MODULE_AUX:  # module id, UINT "when", then typed values up to EOF (0)
            r.length()
            r.length()
            r.length()
            while (opcode := r.length()[0]) != 0:
                if opcode in (1, 2):
                    r.length()
                elif opcode in (3, 4):
                    r.skip(4 if opcode == 3 else 8)
                elif opcode == 5:
                    r.string()
                else:
                    raise BackupError(f"unknown module value type {opcode} in the RDB")
        elif op == _FUNCTION:
            r.string()
        elif op == _SLOT_INFO:
            r.length(), r.length(), r.length()
        elif op == _SELECTDB:
            db = r.length()[0]
            if db != 0:  # databases come in order: database 0 has no keys
                return RdbSummary(version, 0, aux)
        elif op == _RESIZEDB and db == 0:
            return RdbSummary(version, r.length()[0], aux)
        elif op == _EOF:
            return RdbSummary(version, 0, aux)
        else:
            raise BackupError(f"unexpected opcode {op:#x} before the keys of the RDB")


# -- the manifest ------------------------------------------------------------------------------


class Module(msgspec.Struct, frozen=True):
    name: str
    version: int


class Manifest(msgspec.Struct, frozen=True):
    """``manifest.json``: what ``dump.rdb`` is. New fields get defaults."""

    format: str
    version: int  #: FORMAT_VERSION
    created: str  #: ISO 8601, UTC: when the transfer ended (this machine's clock)
    redis_version: str  #: INFO server's redis_version of the source
    modules: list[Module]  #: loaded in the source; a Redis without them cannot load the RDB
    rdb_file: str
    rdb_bytes: int
    rdb_sha256: str
    rdb_version: int  #: the RDB format version (from the file's magic)
    keys: int  #: keys in database 0 at the snapshot
    keys_from: Literal["rdb", "dbsize"]  #: counted in the RDB itself, or DBSIZE just before SYNC
    transfer: Literal["disk", "diskless"]  #: how Redis produced the snapshot
    source: str  #: the Redis URL, without credentials


_manifest_decoder = msgspec.json.Decoder(Manifest)


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_FILE
    try:
        manifest = _manifest_decoder.decode(path.read_bytes())
    except FileNotFoundError:
        raise BackupError(f"{directory} holds no backup: {MANIFEST_FILE} is missing") from None
    except (OSError, msgspec.DecodeError) as exc:  # ValidationError is a DecodeError
        raise BackupError(f"{path} cannot be read: {exc}") from None
    if manifest.format != FORMAT or manifest.version != FORMAT_VERSION:
        raise BackupError(f"{path} is not a {FORMAT} manifest of version {FORMAT_VERSION}")
    if Path(manifest.rdb_file).name != manifest.rdb_file:
        raise BackupError(f"{path} names an RDB outside its directory: {manifest.rdb_file!r}")
    return manifest


def copy_hashed(src: BinaryIO, dst: BinaryIO, limit: int | None = None) -> tuple[int, str]:
    """Copy in chunks (at most ``limit`` bytes); return the bytes copied and their sha256."""
    digest, total = hashlib.sha256(), 0
    while limit is None or total < limit:
        chunk = src.read(CHUNK if limit is None else min(CHUNK, limit - total))
        if not chunk:
            break
        digest.update(chunk)
        dst.write(chunk)
        total += len(chunk)
    return total, digest.hexdigest()


def check_copy(manifest: Manifest, size: int, sha256: str) -> None:
    """The bytes read from a backup's RDB are the ones it recorded."""
    if size != manifest.rdb_bytes:
        raise BackupError(f"{manifest.rdb_file} has {size} bytes, the manifest says {manifest.rdb_bytes}")
    if sha256 != manifest.rdb_sha256:
        raise BackupError(f"{manifest.rdb_file} does not match its checksum (sha256 {sha256}, the manifest "
                          f"says {manifest.rdb_sha256}): the file is damaged")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def private_file(path: Path) -> BinaryIO:
    """A new file only this account reads: a snapshot holds every user's data."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def time_stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# -- backup ------------------------------------------------------------------------------------


def take_backup(settings, out: Path, *, force: bool = False,  # noqa: ANN001 - RedisSettings
                timeout: float = SILENCE_TIMEOUT) -> Manifest:
    """Snapshot the Redis of ``settings`` into ``out`` (``dump.rdb``, then ``manifest.json``)."""
    from switchboard.shared.connection import make_sync_client

    if not force and ((out / MANIFEST_FILE).exists() or (out / RDB_FILE).exists()):
        raise BackupError(f"{out} already holds a backup; choose another directory or pass --force")
    try:
        out.mkdir(parents=True, exist_ok=True)
        # Replacing a backup: its manifest goes first, so that a backup cut
        # short never pairs the new RDB with the old manifest.
        (out / MANIFEST_FILE).unlink(missing_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot write into {out}: {exc}") from None
    partial = out / (RDB_FILE + ".partial")
    client = make_sync_client(settings)
    try:
        version = str(client.info("server").get("redis_version", "unknown"))
        modules = [Module(str(m["name"]), int(m["ver"])) for m in client.module_list()]
        dbsize = int(client.dbsize())
        with private_file(partial) as f:
            reader, sha256 = _sync_into(client, f, timeout)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        client.close()
    with open(partial, "rb") as f:
        try:
            summary = rdb_summary(f)
        except BackupError as exc:
            partial.unlink(missing_ok=True)
            raise BackupError(f"Redis sent something that is not an RDB: {exc}") from None
    os.replace(partial, out / RDB_FILE)
    manifest = Manifest(
        format=FORMAT, version=FORMAT_VERSION, created=_utc(time.time()), redis_version=version,
        modules=modules, rdb_file=RDB_FILE, rdb_bytes=reader.received, rdb_sha256=sha256,
        rdb_version=summary.version,
        # The RDB's own count is the snapshot's; DBSIZE, read just before the
        # SYNC, misses what was written or deleted in between.
        keys=summary.keys if summary.keys is not None else dbsize,
        keys_from="rdb" if summary.keys is not None else "dbsize",
        transfer="diskless" if reader.payload and reader.payload.eof_mark else "disk", source=settings.url)
    write_durably(out / MANIFEST_FILE, json.dumps(msgspec.to_builtins(manifest), indent=2).encode() + b"\n")
    return manifest


def _sync_into(client, f: BinaryIO, timeout: float) -> tuple[SyncReader, str]:  # noqa: ANN001
    """The replication handshake on a connection of its own (redis-py made it:
    TLS, a unix socket and the login are its), then the payload into ``f``."""
    from redis.exceptions import NoPermissionError, ResponseError

    conn = client.connection_pool.make_connection()
    try:
        conn.connect()
        for option, value in (("capa", "eof"), ("rdb-only", "1")):
            conn.send_command("REPLCONF", option, value)
            try:
                conn.read_response()
            except ResponseError as exc:
                # A Redis before 7.0 lacks rdb-only: it streams commands after
                # the payload, which the reader ignores. Without capa eof the
                # sync still works, from Redis's disk; refused, it is a right missing.
                if isinstance(exc, NoPermissionError):
                    raise BackupError(f"Redis refused REPLCONF: {exc}") from None
        # The replies above were read whole and Redis sends nothing before the
        # SYNC: the parser holds no byte, and the raw socket is the stream.
        sock = conn._sock
        sock.settimeout(timeout)
        sock.sendall(b"SYNC\r\n")
        reader, digest = SyncReader(), hashlib.sha256()
        while not reader.done:
            try:
                data = sock.recv(CHUNK)
            except TimeoutError:
                raise BackupError(f"Redis sent nothing for {timeout:g} s during the snapshot") from None
            if not data:
                got = f"{reader.received} of {reader.payload.length}" if reader.payload and reader.payload.length \
                    else f"{reader.received}"
                raise BackupError(f"Redis closed the connection during the snapshot ({got} bytes received)")
            body = reader.feed(data)
            digest.update(body)
            f.write(body)
        return reader, digest.hexdigest()
    finally:
        conn.disconnect()


# -- the commands --------------------------------------------------------------------------------


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def cmd_backup(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``switchboard backup --out DIR [--force] [--timeout S]``."""
    from redis.exceptions import RedisError

    from switchboard.shared.settings import RedisSettings

    settings = RedisSettings.from_env(env)  # as the operator: REDIS_USERNAME=sb-admin
    started = time.monotonic()
    try:
        m = take_backup(settings, Path(args.out), force=args.force, timeout=args.timeout)
    except BackupError as exc:
        print(f"switchboard: backup failed: {exc}", file=sys.stderr)
        return 1
    except (RedisError, OSError) as exc:
        print(f"switchboard: backup failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    modules = ", ".join(f"{mod.name} {mod.version}" for mod in m.modules) or "no modules"
    print(f"backup of {m.source} (Redis {m.redis_version}; {modules}): {m.keys} keys, {_size(m.rdb_bytes)} "
          f"RDB v{m.rdb_version} in {Path(args.out) / m.rdb_file}, sha256 {m.rdb_sha256[:12]}, "
          f"{time.monotonic() - started:.1f} s")
    return 0
