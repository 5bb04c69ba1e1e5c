"""Child processes of a peer: started in their own session, logged to a file, stopped as a group.

Each child is the leader of a new session (``start_new_session=True``), so its process
group holds everything it forks -- uvicorn workers, PostgreSQL backends -- and
``os.killpg`` reaches all of them. ``os.killpg(pgid, 0)`` raising ``ProcessLookupError``
is how we know nothing of it is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

import httpx

from .errors import PeerStartError

logger = logging.getLogger(__name__)

#: Variables passed through from our environment to a peer; everything else is set explicitly,
#: so a LANGSMITH_API_KEY, VIRTUAL_ENV or PYTHONPATH of ours never changes how a peer behaves.
_PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


def child_env(extra: Mapping[str, str], *, venv_bin: Path | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _PASS_THROUGH if k in os.environ}
    if venv_bin is not None:
        env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it; a tiny race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class ChildProcess:
    """One long-running process of a peer, with stdout and stderr in ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.user = user
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        identity = {"user": self.user, "group": self.user} if self.user else {}
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                **identity,
            )
        logger.info("started %s (pid %d), log %s", self.name, self._proc.pid, self.log_path)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def died(self) -> PeerStartError | None:
        """An error describing the exit, if the process has exited."""
        if self._proc is None or self._proc.returncode is None:
            return None
        return PeerStartError(
            f"{self.name} exited with code {self._proc.returncode}; last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def group_alive(self) -> bool:
        """Whether any process of this child's group (it, or anything it forked) still exists."""
        if self._proc is None:
            return False
        try:
            os.killpg(self._proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by another user
            return True
        return True

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    async def wait(self, timeout: float) -> int:
        assert self._proc is not None
        return await asyncio.wait_for(self._proc.wait(), timeout)

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Send ``sig`` to the whole group; SIGKILL what is left after ``timeout`` seconds."""
        if self._proc is None:
            return
        if self._proc.returncode is None or self.group_alive():
            self._signal_group(sig)
            if not await self._group_gone(timeout):
                logger.warning(
                    "%s did not stop within %.0fs of %s; killing its group", self.name, timeout, sig.name
                )
                self._signal_group(signal.SIGKILL)
                await self._group_gone(10.0)
        if self._proc.returncode is None:
            await self._proc.wait()
        logger.info("stopped %s (exit %s)", self.name, self._proc.returncode)

    async def _group_gone(self, timeout: float) -> bool:
        assert self._proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self._proc.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._proc.wait(), 0.1)
            elif not self.group_alive():
                return True
            else:
                await asyncio.sleep(0.1)
        return self._proc.returncode is not None and not self.group_alive()


async def run_to_completion(child: ChildProcess, timeout: float) -> None:
    """Run a one-shot command (``initdb``, a migration); raise with its log tail if it fails."""
    await child.start()
    try:
        rc = await child.wait(timeout)
    except TimeoutError:
        await child.stop(signal.SIGKILL, timeout=5.0)
        raise PeerStartError(
            f"{child.name} timed out after {timeout:.0f}s; log:\n{child.log_tail()}"
        ) from None
    if rc != 0:
        raise PeerStartError(f"{child.name} exited with code {rc}; log:\n{child.log_tail()}")


async def wait_http_ok(url: str, child: ChildProcess, timeout: float, path: str = "/ok") -> None:
    """Poll ``GET url+path`` until it answers 200; fail early if ``child`` dies."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=2.0, trust_env=False) as client:
        while True:
            if (err := child.died()) is not None:
                raise err
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(path)).status_code == 200:
                    return
            if loop.time() > deadline:
                raise PeerStartError(
                    f"{child.name} did not answer 200 on {url}{path} within {timeout:.0f}s; "
                    f"last lines of {child.log_path}:\n{child.log_tail()}"
                )
            await asyncio.sleep(0.2)


def processes_mentioning(markers: list[str]) -> list[str]:
    """``pid cmdline`` of every process (not us) whose command line contains one of ``markers``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if any(m in cmdline for m in markers):
            found.append(f"{entry.name} {cmdline}")
    return found
