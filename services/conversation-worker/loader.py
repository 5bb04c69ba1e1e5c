"""Load the graph named by ``GRAPH=package.module:attribute``.

The attribute may be a ``StateGraph`` (compiled here with the worker's
checkpointer), a compiled graph (re-bound to the checkpointer), or a
zero-argument callable returning either.
"""

from __future__ import annotations

import importlib
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph
from langgraph.graph.state import CompiledStateGraph

from switchboard.shared.errors import SwitchboardError


class GraphLoadError(SwitchboardError):
    pass


def resolve(spec: str) -> Any:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise GraphLoadError(f"GRAPH={spec!r}: expected 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GraphLoadError(f"GRAPH={spec!r}: cannot import {module_name}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise GraphLoadError(f"GRAPH={spec!r}: {module_name} has no attribute {attribute}") from None
    return target


def load(spec: str, checkpointer: BaseCheckpointSaver) -> CompiledStateGraph:
    target = resolve(spec)
    if callable(target) and not isinstance(target, (StateGraph, CompiledStateGraph)):
        target = target()
    if isinstance(target, StateGraph):
        compiled = target.compile(checkpointer=checkpointer)
    elif isinstance(target, CompiledStateGraph):
        compiled = target.copy(update={"checkpointer": checkpointer})
    else:
        raise GraphLoadError(f"GRAPH={spec!r} is a {type(target).__name__}, not a StateGraph or compiled graph")
    if "messages" not in compiled.builder.channels:
        raise GraphLoadError(f"GRAPH={spec!r}: the state has no 'messages' channel (use MessagesState)")
    return compiled
