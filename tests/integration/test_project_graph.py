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


SALES = '''
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, MessagesState, StateGraph

def answer(state: MessagesState):
    humans = sum(1 for m in state["messages"] if m.type == "human")
    return {"messages": [AIMessage(content=f"sales #{humans}: " + state["messages"][-1].content)]}

builder = StateGraph(MessagesState)
builder.add_node("answer", answer)
builder.add_edge(START, "answer")
builder.add_edge("answer", END)
'''


async def test_each_conversation_runs_the_graph_its_first_message_names(cluster, tmp_path):
    root = tmp_path / "project"
    project = _project(root)
    (root / "src" / "sales.py").write_text(SALES)
    config = json.loads(project.read_text())
    config["graphs"]["sales"] = "./src/sales.py:builder"
    project.write_text(json.dumps(config))
    cluster.start_many(("fanout", "f"), ("gateway", "gw"), ("worker", "w"), GRAPH=str(project))
    user = f"user-{uuid.uuid4().hex[:8]}"
    phone = Device(cluster.services["gw"].url, token(user), "phone")
    laptop = Device(cluster.services["gw"].url, token(user), "laptop")
    await phone.connect()
    await laptop.connect()
    try:
        await phone.send("s", "s1", "a quote please", graph="sales")
        assert (await phone.wait_reply("s1"))["text"] == "sales #1: a quote please"
        await phone.send("d", "d1", "hello")  # no graph named: the first listed, "assistant"
        assert (await phone.wait_reply("d1"))["text"] == "ahoy (tiny-model): hello"

        await phone.send("x", "x1", "hi", graph="billing")
        error = await phone.wait_frame("error", client_msg_id="x1")
        assert error["code"] == "unknown_graph" and "assistant, sales" in error["message"]
        await phone.send("s", "s2", "wrong desk", graph="assistant")
        assert (await phone.wait_frame("error", client_msg_id="s2"))["code"] == "graph_mismatch"

        cluster.kill("w")  # the conversation keeps its graph across a worker's restart
        cluster.start("worker", "w2", GRAPH=str(project))
        await phone.send("s", "s3", "and a discount")  # no graph named: the conversation's own
        await phone.send("s", "s4", "thanks", graph="sales")
        for device in (phone, laptop):
            assert (await device.wait_reply("s3"))["text"] == "sales #2: and a discount"
            assert (await device.wait_reply("s4"))["text"] == "sales #3: thanks"
        assert not any(f["type"] == "accepted" and f["client_msg_id"] in ("x1", "s2") for f in phone.frames)
        await phone.send_raw(json.dumps({"type": "history", "conversation_id": "s"}))
        history = await phone.wait_frame("history", conversation_id="s")
        assert [m["text"] for m in history["messages"] if m["role"] == "assistant"] == [
            "sales #1: a quote please", "sales #2: and a discount", "sales #3: thanks"]
    finally:
        await phone.close()
        await laptop.close()
