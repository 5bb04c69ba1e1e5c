"""GRAPH names a graph as ``module:attribute``: loading accepts builders,
compiled graphs and factories, and refuses anything else with a clear error."""

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from switchboard.worker import loader
from switchboard.worker.graph import build

COMPILED = build().compile()


def test_loader_accepts_graphs_and_rejects_what_is_not_one():
    saver = InMemorySaver()
    compiled = loader.load("switchboard.worker.graph:graph", saver)
    assert compiled.checkpointer is saver
    assert loader.load("switchboard.worker.graph:build", saver).checkpointer is saver
    precompiled = loader.load("tests.worker.test_loader:COMPILED", saver)
    assert precompiled.checkpointer is saver
    for spec, message in [("nocolon", "expected"), ("no.such.module:g", "cannot import"),
                          ("switchboard.worker.graph:nothing", "no attribute"),
                          ("switchboard.worker.graph:_STOP", "not a StateGraph")]:
        with pytest.raises(loader.GraphLoadError, match=message):
            loader.load(spec, saver)
