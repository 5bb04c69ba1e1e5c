"""Interpreters and cached virtualenvs for the peer servers.

Each peer pins dependencies that may conflict with the project's, so each gets its own
virtualenv under ``bench/.peers/<name>/``. A venv counts as installed when its stamp
file lists exactly the requirements asked for *and* the peer's modules import; anything
else (missing, half-installed, other pins) is repaired by running ``pip install`` again.
"""

from __future__ import annotations

import asyncio
import functools
import glob
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import PeerInstallError

logger = logging.getLogger(__name__)

#: Where the peer venvs live (``bench/.peers``; to be gitignored).
DEFAULT_VENV_ROOT = Path(__file__).resolve().parent.parent / ".peers"

_STAMP = ".peer-requirements"
_INSTALL_TIMEOUT_S = 1800.0
_PROBE = "import sys, venv, ensurepip; print(sys.executable); print('%d.%d' % sys.version_info[:2])"


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: tuple[int, int]

    def __str__(self) -> str:
        return f"{self.path} ({self.version[0]}.{self.version[1]})"


def _candidates() -> list[str]:
    """Every python3 executable worth probing, most conventional first."""
    names = ["python3"] + [f"python3.{minor}" for minor in range(11, 16)]
    found = [p for p in (shutil.which(n) for n in names) if p]
    found += sorted(glob.glob("/usr/bin/python3.1[0-9]")) + sorted(glob.glob("/usr/local/bin/python3.1[0-9]"))
    pyenv = shutil.which("pyenv")
    roots = [Path.home() / ".pyenv"]
    if pyenv:
        out = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            roots.insert(0, Path(out.stdout.strip()))
    for root in roots:
        found += sorted(glob.glob(str(root / "versions" / "3.*" / "bin" / "python3")))
    uv = shutil.which("uv")
    if uv:
        out = subprocess.run([uv, "python", "find", ">=3.12"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            found.append(out.stdout.strip())
    return list(dict.fromkeys(found))


@functools.cache
def interpreters() -> tuple[Interpreter, ...]:
    """The distinct CPython 3 interpreters here that can create a venv (have venv + ensurepip)."""
    seen: dict[str, Interpreter] = {}
    for candidate in _candidates():
        try:
            out = subprocess.run([candidate, "-c", _PROBE], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode != 0:
            continue
        real, version = out.stdout.split()
        major, minor = (int(x) for x in version.split("."))
        seen.setdefault(os.path.realpath(real), Interpreter(real, (major, minor)))
    return tuple(seen.values())


def find_python(minimum: tuple[int, int]) -> Interpreter | None:
    """The first interpreter (in ``_candidates`` order) at least ``minimum``."""
    return next((i for i in interpreters() if i.version >= minimum), None)


def _ignore_in_git(root: Path) -> None:
    """Keep the venvs (hundreds of MB) out of git even before .gitignore names them."""
    marker = root / ".gitignore"
    if not marker.exists():
        marker.write_text("# peer virtualenvs: a cache made by bench/peers, never committed\n*\n")


@dataclass(frozen=True)
class VenvSpec:
    """What one peer's virtualenv must contain."""

    name: str
    min_python: tuple[int, int]
    requirements: tuple[str, ...]
    #: Modules whose import proves the install is usable.
    imports: tuple[str, ...]


class PeerVenv:
    """One peer's virtualenv: ``ensure()`` creates or repairs it, once."""

    def __init__(self, spec: VenvSpec, root: Path = DEFAULT_VENV_ROOT) -> None:
        self.spec = spec
        self.path = root / spec.name
        self.log_path = self.path / "install.log"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def bin(self, script: str) -> Path:
        return self.path / "bin" / script

    def _stamp_text(self) -> str:
        return "\n".join(self.spec.requirements) + "\n"

    async def is_installed(self) -> bool:
        stamp = self.path / _STAMP
        if not self.python.exists() or not stamp.exists() or stamp.read_text() != self._stamp_text():
            return False
        ok, _ = await self._imports_ok()
        return ok

    async def ensure(self) -> bool:
        """Create and populate the venv unless it already is; True if work was done."""
        if await self.is_installed():
            return False
        interpreter = find_python(self.spec.min_python)
        if interpreter is None:
            raise PeerInstallError(f"{self.spec.name}: no Python >= {self.spec.min_python} on this machine")
        started = time.perf_counter()
        if self.path.exists() and not self.python.exists():
            shutil.rmtree(self.path)  # a broken venv: start over
        self.path.mkdir(parents=True, exist_ok=True)
        _ignore_in_git(self.path.parent)
        (self.path / _STAMP).unlink(missing_ok=True)
        logger.info(
            "installing %s into %s with %s (log: %s)", self.spec.name, self.path, interpreter, self.log_path
        )
        if not self.python.exists():
            await self._run([interpreter.path, "-m", "venv", str(self.path)], self.log_path)
        await self._run(
            [
                str(self.python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                *self.spec.requirements,
            ],
            self.log_path,
        )
        ok, output = await self._imports_ok()
        if not ok:
            tail = "\n".join(output.splitlines()[-15:])
            raise PeerInstallError(
                f"{self.spec.name}: installed, but {self.spec.imports} do not import:\n{tail}"
            )
        (self.path / _STAMP).write_text(self._stamp_text())
        logger.info("installed %s in %.1fs", self.spec.name, time.perf_counter() - started)
        return True

    async def _imports_ok(self) -> tuple[bool, str]:
        """Whether the peer's modules import in the venv, and what the attempt printed."""
        code = "; ".join(f"import {m}" for m in self.spec.imports)
        proc = await asyncio.create_subprocess_exec(
            str(self.python), "-c", code, stdout=asyncio.subprocess.PIPE, stderr=subprocess.STDOUT
        )
        output, _ = await proc.communicate()
        return proc.returncode == 0, output.decode(errors="replace")

    async def _run(self, argv: list[str], log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            try:
                rc = await asyncio.wait_for(proc.wait(), _INSTALL_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise PeerInstallError(
                    f"{self.spec.name}: {argv[2]} timed out after {_INSTALL_TIMEOUT_S:.0f}s (see {log_path})"
                ) from None
        if rc != 0:
            raise PeerInstallError(f"{self.spec.name}: {' '.join(argv[:4])} ... exited {rc} (see {log_path})")
