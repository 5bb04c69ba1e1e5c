"""Every Redis script Switchboard runs, in one place.

The scripts are the ``.lua`` files in ``lua/`` beside this module, one per
operation, each with its ``KEYS``/``ARGV`` and answers written at its top.
Functions several scripts share live in ``lua/lib/``; a script names the ones
it uses on its first line (``-- include: outbound, entries``), and the loader
puts them in front of it, with the field names of :mod:`.fields` as the Lua
table ``F``. Redis runs a script atomically, so each is one step that no other
client can see half done; a script's keys all carry one user's hash tag
(:mod:`.keys`), so they share a Redis Cluster slot.

The services never call these directly: each has a small typed store
(``GatewayStore``, ``WorkerStore``, the fanout's ``OutboundReader``) whose
methods take named arguments and return small result types.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from .errors import SwitchboardError
from .fields import lua_table

LUA_DIR = Path(__file__).with_name("lua")

_INCLUDE = re.compile(r"^-- include:(.*)$")


class ScriptError(SwitchboardError, LookupError):
    """A script or an included library file does not exist."""


def names() -> list[str]:
    """Every script's name (its file name without ``.lua``)."""
    return sorted(path.stem for path in LUA_DIR.glob("*.lua"))


def _fields_table() -> str:
    entries = ", ".join(f"{name} = '{value}'" for name, value in sorted(lua_table().items()))
    return f"local F = {{{entries}}}\n"


def _includes(text: str) -> list[str]:
    first = text.split("\n", 1)[0]
    match = _INCLUDE.match(first)
    return [name.strip() for name in match.group(1).split(",") if name.strip()] if match else []


def _library(name: str, seen: list[str]) -> None:
    """Add library ``name`` (after what it includes) to ``seen``, once."""
    if name in seen:
        return
    path = LUA_DIR / "lib" / f"{name}.lua"
    if not path.exists():
        raise ScriptError(f"no Lua library {name!r} ({path})")
    for dependency in _includes(path.read_text()):
        _library(dependency, seen)
    seen.append(name)


@functools.cache
def source(name: str) -> str:
    """The full text Redis runs for script ``name``: ``F``, then the libraries
    it includes (each once, dependencies first), then the script."""
    path = LUA_DIR / f"{name}.lua"
    if not path.exists():
        raise ScriptError(f"no Lua script {name!r} ({path})")
    text = path.read_text()
    libraries: list[str] = []
    for library in _includes(text):
        _library(library, libraries)
    parts = [_fields_table()]
    parts += [(LUA_DIR / "lib" / f"{library}.lua").read_text() for library in libraries]
    parts.append(text)
    return "\n".join(parts)


def register(redis: aioredis.Redis, *script_names: str) -> dict[str, AsyncScript]:
    """Register scripts on a client (redis-py runs each by its SHA and loads
    it on ``NOSCRIPT``); returns them by name."""
    return {name: redis.register_script(source(name)) for name in script_names}
