"""Where a device is in its user's event stream, kept between connections
and between runs: its ``device_id``, and ``epoch`` + ``last_id`` of the last
event the application processed (what ``hello`` sends back).

Two stores: :class:`MemoryState` (one process's life) and :class:`FileState`
(a small JSON file, replaced atomically: a crash leaves the old file or the
new one, never a torn one).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Position:
    device_id: str | None = None
    epoch: str | None = None  #: the life of the stream ``last_id`` belongs to
    last_id: str | None = None  #: the last event processed

    def at(self, epoch: str, last_id: str) -> Position:
        return replace(self, epoch=epoch, last_id=last_id)


class StateStore(Protocol):
    def load(self) -> Position: ...

    def save(self, position: Position) -> None: ...


class MemoryState:
    def __init__(self, position: Position | None = None):
        self._position = position or Position()

    def load(self) -> Position:
        return self._position

    def save(self, position: Position) -> None:
        self._position = position


class FileState:
    """``{"device_id": ..., "epoch": ..., "last_id": ...}`` in ``path``.

    Each save writes a temporary file in the same directory and renames it
    over ``path`` (``os.replace`` is atomic on POSIX and Windows), so the
    file survives the process being killed at any instant. ``fsync=True``
    also flushes it to disk before the rename (survives power loss; slower).
    A missing or unreadable file is an empty position.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False):
        self.path = Path(path)
        self._fsync = fsync

    def load(self) -> Position:
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return Position()
        if not isinstance(raw, dict):
            return Position()
        fields = {name: raw.get(name) if isinstance(raw.get(name), str) else None
                  for name in ("device_id", "epoch", "last_id")}
        return Position(**fields)

    def save(self, position: Position) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"device_id": position.device_id, "epoch": position.epoch, "last_id": position.last_id})
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data)
                if self._fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
