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
  mapping; variables already set in the environment win). ``:NAME`` runs
  that graph only; without it every graph of the file is loaded, and each
  conversation runs the one its first ``send`` names (``graph``), the first
  listed when it names none (``switchboard.shared.project``).

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
import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph

from switchboard.shared.project import (  # noqa: F401 - re-exported: the loader's errors and project reading
    PROJECT_FILE,
    GraphChoice,
    GraphLoadError,
    Project,
    graph_choice,
    is_file_spec,
    parse_env,
    project_of,
    read_project,
)


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
    if is_file_spec(target_name):
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


def prepare(graph: str, environ: MutableMapping[str, str] | None = None) -> GraphChoice:
    """The graphs ``GRAPH`` offers (name -> ``module:attr`` or ``/file.py:attr``),
    after applying a project file's import paths and environment (variables
    already in ``environ`` are kept) and checking its packages are installed."""
    choice = graph_choice(graph)
    config = choice.project
    if config is None:
        return choice
    missing = [package for package in config.packages if not _installed(package)]
    if missing:
        raise GraphLoadError(f"{config.path}: dependencies not installed: {', '.join(missing)} "
                             f"(pip install {' '.join(missing)})")
    for directory in reversed(config.paths):
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
    environ = os.environ if environ is None else environ
    for key, value in config.env.items():
        environ.setdefault(key, value)
    return choice


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return importlib.util.find_spec(distribution.replace("-", "_")) is not None


@dataclass(frozen=True)
class Graphs:
    """Every graph a worker runs, by name (:class:`GraphChoice`), compiled."""

    by_name: dict[str, CompiledStateGraph]
    default: str

    def get(self, name: str) -> CompiledStateGraph | None:
        """Graph ``name`` ('' : the default), or None if this worker has none of that name."""
        return self.by_name.get(name or self.default)


def _compile(spec: str, graph: str, checkpointer: BaseCheckpointSaver) -> CompiledStateGraph:
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


def load_all(graph: str, checkpointer: BaseCheckpointSaver,
             environ: MutableMapping[str, str] | None = None) -> Graphs:
    """Every graph ``GRAPH`` offers, compiled on ``checkpointer``."""
    choice = prepare(graph, environ)
    label = (lambda name: f"{graph}:{name}") if choice.project is not None and len(choice.specs) > 1 else (lambda _: graph)
    return Graphs({name: _compile(spec, label(name), checkpointer) for name, spec in choice.specs.items()},
                  choice.default)


def load(graph: str, checkpointer: BaseCheckpointSaver,
         environ: MutableMapping[str, str] | None = None) -> CompiledStateGraph:
    """The default graph ``GRAPH`` offers (its only one, or a project's first), on ``checkpointer``."""
    graphs = load_all(graph, checkpointer, environ)
    return graphs.by_name[graphs.default]
