"""Throwaway PostgreSQL and Redis servers on loopback, for the peers that need them.

Both are Debian's packages (``postgresql``, ``redis-server``), run in a temporary
directory on free ports and bound to 127.0.0.1 only. PostgreSQL refuses to run as
root, so when we are root ``initdb`` and ``postgres`` run as the ``postgres`` system
user the Debian package creates (the data directory is handed to that user).
Trust authentication is fine here: only loopback can reach it, and it lives for one run.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from .errors import PeerStartError, PeerUnavailable
from .procs import ChildProcess, free_port, run_to_completion

_PG_USER = "postgres"
_START_TIMEOUT_S = 60.0


def postgres_bindir() -> Path | None:
    """Directory holding ``initdb``/``postgres``/``pg_isready``: on PATH, else Debian's newest."""
    on_path = shutil.which("initdb")
    if on_path and (Path(on_path).resolve().parent / "pg_isready").exists():
        return Path(on_path).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    return Path(dirs[-1]) if dirs else None


def redis_server() -> str | None:
    return shutil.which("redis-server")


def backing_unavailable() -> str | None:
    """Why PostgreSQL + Redis cannot be started here, or None if they can."""
    missing = []
    if postgres_bindir() is None:
        missing.append("PostgreSQL server binaries (apt-get install postgresql)")
    if redis_server() is None:
        missing.append("redis-server (apt-get install redis-server)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_PG_USER)
        except KeyError:
            missing.append(f"a '{_PG_USER}' system user to run PostgreSQL as (we are root)")
    return "missing " + " and ".join(missing) if missing else None


class _TempServer:
    """A server process in ``workdir`` on a free loopback port."""

    name = "server"

    def __init__(self, workdir: Path, log_dir: Path) -> None:
        self.workdir = workdir
        self.log_dir = log_dir
        self.port = 0
        self.process: ChildProcess | None = None

    async def _wait_ready(self, ready: Callable[[], Awaitable[bool]], poll: float) -> None:
        """Poll ``ready`` until it says yes; fail if the process dies or the
        start-up timeout passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT_S
        assert self.process is not None
        while True:
            if (err := self.process.died()) is not None:
                raise err
            if await ready():
                return
            if loop.time() > deadline:
                raise PeerStartError(
                    f"{self.name} not ready after {_START_TIMEOUT_S:.0f}s:\n{self.process.log_tail()}"
                )
            await asyncio.sleep(poll)


class TempPostgres(_TempServer):
    """A PostgreSQL cluster in ``workdir``; ``start()`` returns its URI (database ``postgres``)."""

    name = "postgres"

    async def start(self) -> str:
        bindir = postgres_bindir()
        if bindir is None or (reason := backing_unavailable()):
            raise PeerUnavailable(reason or "no PostgreSQL")
        user = _PG_USER if os.geteuid() == 0 else None
        self.workdir.mkdir(parents=True, exist_ok=True)
        if user:
            entry = pwd.getpwnam(user)
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        data = self.workdir / "data"
        await run_to_completion(
            ChildProcess(
                "initdb",
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                log_path=self.log_dir / "initdb.log",
                user=user,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            ),
            timeout=120.0,
        )
        self.port = free_port()
        self.process = ChildProcess(
            "postgres",
            [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(self.workdir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=300",
            ],
            log_path=self.log_dir / "postgres.log",
            user=user,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
        await self.process.start()
        await self._wait_ready(lambda: self._accepting(bindir), poll=0.2)
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    async def _accepting(self, bindir: Path) -> bool:
        probe = await asyncio.create_subprocess_exec(
            str(bindir / "pg_isready"),
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await probe.wait() == 0

    async def stop(self) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
        if self.process is not None:
            await self.process.stop(signal.SIGINT, timeout=30.0)


class TempRedis(_TempServer):
    """A Redis server with persistence off; ``start()`` returns its URI (db 0)."""

    name = "redis"

    async def start(self) -> str:
        binary = redis_server()
        if binary is None:
            raise PeerUnavailable("redis-server not installed (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process = ChildProcess(
            "redis",
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--daemonize",
                "no",
            ],
            log_path=self.log_dir / "redis.log",
            env={"PATH": "/usr/bin:/bin"},
        )
        await self.process.start()
        await self._wait_ready(self._pong, poll=0.1)
        return f"redis://127.0.0.1:{self.port}/0"

    async def _pong(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            # "-LOADING ..." while it loads a dataset: not ready yet.
            return (await asyncio.wait_for(reader.readline(), 2.0)).startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop(signal.SIGTERM, timeout=15.0)
