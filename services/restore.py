"""``switchboard restore``: a backup (:mod:`switchboard.backup`) put back in
place for the embedded Redis, offline.

It checks the backup
(:func:`verify_into`), refuses while a Redis runs on the data directory
(:func:`find_running`), moves the data directory's AOF aside and puts the
RDB in place as the *base of a new AOF*. That is needed because the embedded
Redis runs with ``appendonly yes``: Redis 8.2 then loads only the AOF, and
with no AOF directory it starts **empty** and ignores a ``dump.rdb`` next to
it (measured; ``loadDataFromDisk`` in Redis's ``server.c``). A multi-part AOF
whose manifest names an RDB-format base file is what Redis's own AOF
rewrite produces; Redis loads it and opens a fresh incremental file on it.

Last, the restored Redis is started once to give every user's event stream
a new epoch (:func:`new_epochs`). The backup holds data only: the data
directory's ACL file and password files stay as they are.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .backup import (
    RDB_FILE,
    BackupError,
    Manifest,
    check_copy,
    copy_hashed,
    fsync_dir,
    private_file,
    read_manifest,
    time_stamp,
    write_durably,
)

# The embedded Redis keeps Redis's default AOF names (appenddirname, appendfilename).
AOF_DIR = "appendonlydir"
AOF_BASE = "appendonly.aof.1.base.rdb"
AOF_MANIFEST = "appendonly.aof.manifest"


# -- the data directory ----------------------------------------------------------------


@dataclass(frozen=True)
class Running:
    pid: int
    port: int | None


_STARTED = re.compile(rb"^(\d+):M .*Running mode=\w+, port=(\d+)\.", re.MULTILINE)


def last_start(log: bytes) -> tuple[int, int] | None:
    """(pid, port) of the newest start in a Redis log, or None."""
    found = _STARTED.findall(log)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def redis_processes_on(data_dir: Path) -> list[Running]:
    """redis-server processes working in ``data_dir`` (Linux: /proc).

    Redis rewrites its command line into a title (``redis-server
    127.0.0.1:6379``), so its ``--dir`` is not there to read; but it changes
    into that directory at start, so its working directory names it."""
    found: list[Running] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if "redis-server" not in os.path.basename(title[0].split(" ")[0]):
                continue
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone, or another account's
            continue
        if cwd == str(data_dir):
            port = " ".join(title).rsplit(":", 1)[-1].split(" ")[0]
            found.append(Running(int(entry.name), int(port) if port.isdigit() else None))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def find_running(data_dir: Path) -> Running | None:
    """A Redis running on ``data_dir``: a redis-server process started on it,
    or the process and port of the newest start in its ``redis.log`` both alive."""
    from switchboard.embedded_redis import port_in_use

    processes = redis_processes_on(data_dir)
    if processes:
        return processes[0]
    log = data_dir / "redis.log"
    try:
        with open(log, "rb") as f:
            f.seek(max(f.seek(0, io.SEEK_END) - 256 * 1024, 0))
            started = last_start(f.read())
    except OSError:
        return None
    if started and _alive(started[0]) and port_in_use(started[1]):
        return Running(*started)
    return None


@dataclass(frozen=True)
class Restored:
    manifest: Manifest
    aof: Path  #: the new AOF directory, whose base is the backup's RDB
    aside: Path | None  #: where the data directory's previous AOF (and dump.rdb) went


def default_data_dir(env: Mapping[str, str]) -> Path:
    """The embedded Redis's data directory, as ``switchboard run``/``redis`` choose it."""
    return Path(env.get("DATA_DIR", ".data")) / "redis"


def restore(backup: Path, data_dir: Path, *, now: float | None = None) -> Restored:
    """Put ``backup`` in place for the next start of the embedded Redis on
    ``data_dir``. The checks come first; on any failure nothing is changed."""
    manifest = read_manifest(backup)
    data_dir = data_dir.resolve()
    if (data_dir / "redis" / "users.acl").exists() and not (data_dir / "users.acl").exists():
        raise BackupError(f"{data_dir} is a DATA_DIR; the embedded Redis's data directory is {data_dir / 'redis'}")
    running = find_running(data_dir)
    if running:
        where = f" on port {running.port}" if running.port else ""
        raise BackupError(f"the embedded Redis on {data_dir} is running (pid {running.pid}{where}); stop it "
                          f"first (Ctrl-C where `switchboard run` or `switchboard redis` runs, or `kill "
                          f"{running.pid}`), then restore")
    stamp = time_stamp(time.time() if now is None else now)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        staging = _unused(data_dir / f"{AOF_DIR}.restoring-{stamp}")
        staging.mkdir()
    except OSError as exc:
        raise BackupError(f"cannot prepare {data_dir}: {exc}") from None
    try:
        _stage(backup / manifest.rdb_file, staging, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        aside = _move_aside(data_dir, stamp)
    except BackupError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.replace(staging, data_dir / AOF_DIR)  # the same directory: a rename
    fsync_dir(data_dir)
    return Restored(manifest, data_dir / AOF_DIR, aside)


def new_epochs(data_dir: Path) -> int:
    """Start the restored embedded Redis once, on a free loopback port, give
    every user's event stream a new epoch (its ``meta`` hash), and stop it
    (SIGTERM: the AOF is flushed). Returns the streams renewed.

    A restore takes the streams back in time, and a device may hold events
    written after the backup: with the old epoch its ``last_id`` could pass
    for a position in the restored stream once the stream grows past it (or
    skip new events that get ids below it). With a new epoch every device
    resumes once with ``recovered: false`` and starts over from what the
    server has (docs/operations.md, "What clients see after a restore")."""
    import redis

    from switchboard.embedded_redis import EmbeddedRedis, EmbeddedRedisError, free_port
    from switchboard.shared import keys, outbound
    from switchboard.shared.fields import MetaField

    server = EmbeddedRedis(data_dir, port=free_port())
    try:
        server.start(timeout=120.0)  # it loads the whole RDB first
    except EmbeddedRedisError as exc:
        raise BackupError(f"the restored data does not start: {exc}") from None
    renewed = 0
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            pattern = f"{keys.PREFIX}:{{u:*}}:meta"
            batch: list[str] = []
            for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) == 500:
                    renewed += _renew(client, batch, outbound.new_epoch, MetaField.EPOCH)
                    batch = []
            renewed += _renew(client, batch, outbound.new_epoch, MetaField.EPOCH)
        finally:
            client.close()
    finally:
        server.stop(timeout=60.0)
    return renewed


def _renew(client, metas: list[str], new_epoch, field: str) -> int:  # noqa: ANN001
    pipe = client.pipeline(transaction=False)
    for key in metas:
        pipe.hset(key, field, new_epoch())
    pipe.execute()
    return len(metas)


def _stage(rdb: Path, staging: Path, manifest: Manifest) -> None:
    """The RDB as the base of a new AOF in ``staging``, checked against the
    manifest as it is copied (the copy is what Redis will load)."""
    try:
        with open(rdb, "rb") as src, private_file(staging / AOF_BASE) as dst:
            size, sha256 = copy_hashed(src, dst, limit=manifest.rdb_bytes + 1)
            dst.flush()
            os.fsync(dst.fileno())
    except FileNotFoundError:
        raise BackupError(f"{rdb} is missing") from None
    except OSError as exc:
        raise BackupError(f"cannot copy {rdb}: {exc}") from None
    check_copy(manifest, size, sha256)
    # What Redis's own AOF rewrite writes: one base file in RDB format. At
    # start Redis loads it, adds an incremental file and rewrites this manifest.
    write_durably(staging / AOF_MANIFEST, f"file {AOF_BASE} seq 1 type b\n".encode())


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3`` ... if it exists (two restores in one second)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def _move_aside(data_dir: Path, stamp: str) -> Path | None:
    """The AOF directory and a dump.rdb (which ``appendonly yes`` never loads,
    but which would shadow the restore if AOF were turned off) into one
    ``before-restore-<time>`` directory, kept."""
    present = [data_dir / name for name in (AOF_DIR, RDB_FILE) if (data_dir / name).exists()]
    if not present:
        return None
    aside, moved = _unused(data_dir / f"before-restore-{stamp}"), []
    try:
        aside.mkdir()
        for path in present:
            os.replace(path, aside / path.name)
            moved.append(path)
    except OSError as exc:
        for path in moved:  # put back what moved: the data directory stays as it was
            os.replace(aside / path.name, path)
        raise BackupError(f"cannot move the current data aside into {aside}: {exc}") from None
    return aside



# -- the command ------------------------------------------------------------------------------


def cmd_restore(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``switchboard restore DIR [--data-dir D]``."""
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir(env)
    try:
        done = restore(Path(args.dir), data_dir)
    except BackupError as exc:
        print(f"switchboard: restore refused: {exc}; nothing was changed", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"switchboard: restore failed: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    m = done.manifest
    aside = f"; the previous AOF is kept in {done.aside}" if done.aside else ""
    try:
        renewed = new_epochs(data_dir)
    except (BackupError, OSError) as exc:
        print(f"switchboard: restored into {done.aof}{aside}, but could not give the event streams new epochs: "
              f"{exc}; devices may resume with recovered: true on events that are gone -- run the restore again",
              file=sys.stderr)
        return 1
    print(f"restored the backup of {m.created} ({m.keys} keys) into {done.aof}{aside}; {renewed} event streams "
          f"have a new epoch (each device starts over once, recovered: false); the next start of the embedded "
          f"Redis on {data_dir} serves it (users and passwords unchanged)")
    return 0
