"""Load the graph that ``GRAPH`` names.

``GRAPH`` takes three forms:

- ``package.module:attribute`` -- an importable module;
- ``./path/to/file.py:attribute`` -- a Python file (relative to the working
  directory, or absolute); its directory goes on the import path first, so
  the file imports its siblings as it does under ``langgraph dev``;
- ``./path/to/langgraph.json`` (optionally ``...json:NAME``) -- a LangGraph
  CLI project file: its ``graphs`` (name -> ``path.py:attr`` or
  ``module:attr``, relative to the file), its ``dependencies`` (local
  directories go on the import path; packages must be installed -- a missing
  one is an error that names it) and its ``env`` (a ``.env`` file or a
  mapping; variables already set in the environment win). With one graph it
  is used; with several, ``:NAME`` picks one, and no name is an error that
  lists them (never a silent pick).

The attribute may be a ``StateGraph`` (compiled here with the worker's
checkpointer), a compiled graph (re-bound to the checkpointer), or a
zero-argument callable returning either. The state must have a
``messages`` channel.

:func:`read_project` and :func:`parse_env` are pure (a file's text in, a
description out); :func:`load` does the imports and the environment.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph

from switchboard.shared.errors import SwitchboardError

#: The LangGraph CLI's project file name (any ``*.json`` path is read as one).
PROJECT_FILE = "langgraph.json"


class GraphLoadError(SwitchboardError):
    pass


# -- langgraph.json --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    """What a ``langgraph.json`` says, its relative paths made absolute."""

    path: Path
    graphs: dict[str, str]  #: name -> spec (``/abs/file.py:attr`` or ``module:attr``)
    paths: tuple[Path, ...] = ()  #: local dependencies: directories for the import path
    packages: tuple[str, ...] = ()  #: dependencies to be installed already (distribution names)
    env: dict[str, str] = field(default_factory=dict)

    def spec(self, name: str | None) -> str:
        """The spec of graph ``name`` (or of the only graph)."""
        if name is None:
            if len(self.graphs) == 1:
                return next(iter(self.graphs.values()))
            raise GraphLoadError(f"{self.path} has {len(self.graphs)} graphs ({', '.join(sorted(self.graphs))}): "
                                 f"name one, GRAPH={self.path}:NAME")
        if name not in self.graphs:
            raise GraphLoadError(f"{self.path} has no graph {name!r} (it has {', '.join(sorted(self.graphs))})")
        return self.graphs[name]


def _requirement_name(entry: str) -> str:
    """The distribution name of a requirement (``langchain-openai>=0.2`` ->
    ``langchain-openai``)."""
    return re.split(r"[\s\[<>=!~;@]", entry.strip(), maxsplit=1)[0]


def read_project(path: Path, text: str) -> Project:
    """A ``langgraph.json``'s contents (the ``env`` file it may name is read from disk)."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GraphLoadError(f"{path}: not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise GraphLoadError(f"{path}: expected an object with 'graphs'")
    base = path.parent
    graphs = config.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise GraphLoadError(f"{path}: 'graphs' must map graph names to 'path.py:attribute' or 'module:attribute'")
    resolved = {}
    for name, spec in graphs.items():
        if isinstance(spec, dict):  # the CLI's long form: {"path": "...", "description": ...}
            spec = spec.get("path")
        if not isinstance(spec, str) or ":" not in spec:
            raise GraphLoadError(f"{path}: graph {name!r}: expected 'path.py:attribute', got {spec!r}")
        resolved[str(name)] = _absolute(spec, base)
    dependencies = config.get("dependencies", [])
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        raise GraphLoadError(f"{path}: 'dependencies' must be a list of strings")
    paths = tuple((base / d).resolve() for d in dependencies if d.startswith((".", "/")))
    packages = tuple(_requirement_name(d) for d in dependencies if not d.startswith((".", "/")))
    env = config.get("env", {})
    if isinstance(env, str):
        env_path = (base / env).resolve()
        try:
            env_text = env_path.read_text()
        except OSError as exc:
            raise GraphLoadError(f"{path}: env file {env_path}: {exc.strerror or exc}") from None
        env = parse_env(env_text, env_path)
    elif not isinstance(env, dict) or not all(isinstance(v, (str, int, float, bool)) for v in env.values()):
        raise GraphLoadError(f"{path}: 'env' must be a .env file's path or a mapping of names to values")
    return Project(path, resolved, paths, packages, {str(k): str(v) for k, v in env.items()})


def _absolute(spec: str, base: Path) -> str:
    """A file spec made absolute against ``base``; a module spec unchanged."""
    target, _, attribute = spec.rpartition(":")
    if _is_file(target):
        return f"{(base / target).resolve()}:{attribute}"
    return spec


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


_ENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def parse_env(text: str, path: Path | str = ".env") -> dict[str, str]:
    """A ``.env`` file: ``NAME=value`` lines, ``export`` allowed, ``#``
    comments, values optionally in single or double quotes."""
    env = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if not match:
            raise GraphLoadError(f"{path}:{number}: expected NAME=value")
        name, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        env[name] = value
    return env


# -- loading ---------------------------------------------------------------------------------------


def _import_file(path: Path) -> Any:
    """Import a Python file as a module of its own (its directory first on
    the import path, as ``langgraph dev`` has it)."""
    if not path.is_file():
        raise GraphLoadError(f"no such file: {path}")
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    name = f"switchboard_graph_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise GraphLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look it up
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise GraphLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def resolve(spec: str) -> Any:
    target_name, sep, attribute = spec.rpartition(":")
    if not sep or not target_name or not attribute:
        raise GraphLoadError(f"GRAPH={spec!r}: expected 'package.module:attribute' or './file.py:attribute'")
    if _is_file(target_name):
        module = _import_file(Path(target_name).resolve())
    else:
        try:
            module = importlib.import_module(target_name)
        except ImportError as exc:
            raise GraphLoadError(f"GRAPH={spec!r}: cannot import {target_name}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise GraphLoadError(f"GRAPH={spec!r}: {target_name} has no attribute {attribute}") from None
    return target


def project_of(graph: str) -> tuple[Path, str | None] | None:
    """``(langgraph.json path, graph name or None)`` when ``GRAPH`` names a
    project file, else None."""
    path, sep, name = graph.rpartition(":")
    if sep and path.endswith(".json"):
        return Path(path).resolve(), name or None
    if graph.endswith(".json"):
        return Path(graph).resolve(), None
    return None


def prepare(graph: str, environ: MutableMapping[str, str] | None = None) -> str:
    """The ``module:attr`` or ``/file.py:attr`` spec ``GRAPH`` comes to,
    after applying a project file's import paths and environment (variables
    already in ``environ`` are kept) and checking its packages are installed."""
    project = project_of(graph)
    if project is None:
        return graph
    path, name = project
    try:
        text = path.read_text()
    except OSError as exc:
        raise GraphLoadError(f"GRAPH={graph!r}: {path}: {exc.strerror or exc}") from None
    config = read_project(path, text)
    spec = config.spec(name)
    missing = [package for package in config.packages if not _installed(package)]
    if missing:
        raise GraphLoadError(f"{path}: dependencies not installed: {', '.join(missing)} "
                             f"(pip install {' '.join(missing)})")
    for directory in reversed(config.paths):
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
    environ = os.environ if environ is None else environ
    for key, value in config.env.items():
        environ.setdefault(key, value)
    return spec


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return importlib.util.find_spec(distribution.replace("-", "_")) is not None


def load(graph: str, checkpointer: BaseCheckpointSaver,
         environ: MutableMapping[str, str] | None = None) -> CompiledStateGraph:
    """The compiled graph ``GRAPH`` names, on ``checkpointer``."""
    spec = prepare(graph, environ)
    target = resolve(spec)
    if callable(target) and not isinstance(target, (StateGraph, CompiledStateGraph)):
        target = target()
    if isinstance(target, StateGraph):
        compiled = target.compile(checkpointer=checkpointer)
    elif isinstance(target, CompiledStateGraph):
        compiled = target.copy(update={"checkpointer": checkpointer})
    else:
        raise GraphLoadError(f"GRAPH={graph!r} is a {type(target).__name__}, not a StateGraph or compiled graph")
    if "messages" not in compiled.builder.channels:
        raise GraphLoadError(f"GRAPH={graph!r}: the state has no 'messages' channel (use MessagesState)")
    return compiled

