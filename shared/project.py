"""What ``GRAPH`` names, read without importing anything: a module or file
spec, or a LangGraph CLI project file (``langgraph.json``) and the graphs in
it. The worker loads the graphs (``switchboard.worker.loader``); the gateway
reads only their names here, to refuse a ``send`` naming a graph that does
not exist before anything is stored.

Which graph a conversation runs (:class:`GraphChoice`): with a project file
and no ``:NAME``, every graph in it, by name, the first listed the default;
with ``:NAME``, that graph only; with a module or file spec, one graph named
``default``. A conversation's first ``send`` may name one (``graph``); the
conversation keeps it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SwitchboardError

#: The LangGraph CLI's project file name (any ``*.json`` path is read as one).
PROJECT_FILE = "langgraph.json"
#: The name of the one graph of a ``GRAPH`` that is not a project file.
DEFAULT_GRAPH = "default"


class GraphLoadError(SwitchboardError):
    pass


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
    if is_file_spec(target):
        return f"{(base / target).resolve()}:{attribute}"
    return spec


def is_file_spec(target: str) -> bool:
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


def project_of(graph: str) -> tuple[Path, str | None] | None:
    """``(langgraph.json path, graph name or None)`` when ``GRAPH`` names a
    project file, else None."""
    path, sep, name = graph.rpartition(":")
    if sep and path.endswith(".json"):
        return Path(path).resolve(), name or None
    if graph.endswith(".json"):
        return Path(graph).resolve(), None
    return None


@dataclass(frozen=True)
class GraphChoice:
    """The graphs conversations may run: name -> spec, and the default (for
    a conversation whose first ``send`` names none)."""

    specs: dict[str, str]
    default: str
    project: Project | None = None  #: the project file they come from, if any

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.specs)


def graph_choice(graph: str) -> GraphChoice:
    """The graphs ``GRAPH`` offers (reads a project file; imports nothing)."""
    found = project_of(graph)
    if found is None:
        return GraphChoice({DEFAULT_GRAPH: graph}, DEFAULT_GRAPH)
    path, name = found
    try:
        text = path.read_text()
    except OSError as exc:
        raise GraphLoadError(f"GRAPH={graph!r}: {path}: {exc.strerror or exc}") from None
    project = read_project(path, text)
    if name is not None:
        return GraphChoice({name: project.spec(name)}, name, project)
    return GraphChoice(dict(project.graphs), next(iter(project.graphs)), project)
