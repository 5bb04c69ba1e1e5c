"""A LangGraph CLI project runs unchanged: a worker started with
``GRAPH=.../langgraph.json`` imports the project's graph file (which imports
its sibling), takes the project's ``env``, and answers through the gateway;
a project whose dependency is missing stops the worker with its name."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.support.client import Device
from tests.support.cluster import token

GRAPH = '''
import os
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from tone import greet

def answer(state: MessagesState):
    return {"messages": [AIMessage(content=f"{greet()} ({os.environ['PROJECT_MODEL']}): " + state["messages"][-1].content)]}

builder = StateGraph(MessagesState)
builder.add_node("answer", answer)
builder.add_edge(START, "answer")
builder.add_edge("answer", END)
graph = builder.compile()
'''


def _project(root, **extra):
    (root / "src").mkdir(parents=True)
    (root / "src" / "agent.py").write_text(GRAPH)
    (root / "src" / "tone.py").write_text("def greet():\n    return 'ahoy'\n")
    (root / ".env").write_text("PROJECT_MODEL=tiny-model\n")
    config = {"dependencies": ["."], "graphs": {"assistant": "./src/agent.py:graph"}, "env": ".env", **extra}
    (root / "langgraph.json").write_text(json.dumps(config))
    return root / "langgraph.json"


async def test_a_langgraph_project_answers_through_the_gateway(cluster, tmp_path):
    project = _project(tmp_path / "project")
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), GRAPH=str(project))
    phone = Device(cluster.services["gw"].url, token(f"user-{uuid.uuid4().hex[:8]}"), "phone")
    await phone.connect()
    await phone.send("c", "m1", "hello")
    reply = await phone.wait_reply("m1")
    assert reply["text"] == "ahoy (tiny-model): hello"
    await phone.close()


def test_a_project_with_a_missing_dependency_stops_the_worker_saying_which(cluster, tmp_path):
    project = _project(tmp_path / "project", dependencies=[".", "no-such-package-sb"])
    with pytest.raises(RuntimeError, match=r"dependencies not installed: no-such-package-sb"):
        cluster.start("worker", "w", GRAPH=str(project), timeout=20)
