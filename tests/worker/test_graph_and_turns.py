import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from switchboard.worker import loader
from switchboard.worker.graph import build
from switchboard.worker.turns import message_id, reply_after


async def test_the_default_graph_remembers_turns_and_topic():
    graph = build().compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t"}}
    first = await graph.ainvoke({"messages": [HumanMessage("I want to learn about volcanoes")]}, config)
    assert first["messages"][-1].content.startswith("Turn 1.")
    await graph.ainvoke({"messages": [HumanMessage("Are volcanoes dangerous?")]}, config)
    third = await graph.ainvoke({"messages": [HumanMessage("Tell me more")]}, config)
    reply = third["messages"][-1].content
    assert "Turn 3." in reply and "volcanoes" in reply and "Are volcanoes dangerous?" in reply
    other = await graph.ainvoke({"messages": [HumanMessage("hi")]}, {"configurable": {"thread_id": "u"}})
    assert other["messages"][-1].content.startswith("Turn 1.")


def test_reply_after_finds_the_recorded_reply_of_a_message():
    messages = [HumanMessage("a", id="in-1"), AIMessage("A1"), AIMessage("A2"),
                HumanMessage("b", id="in-2"), AIMessage("B")]
    assert reply_after(messages, "in-1") == "A1\nA2"
    assert reply_after(messages, "in-2") == "B"
    assert reply_after(messages, "in-3") is None
    assert reply_after([HumanMessage("c", id="in-4")], "in-4") is None  # ran, but no reply recorded
    assert message_id("17-0") == "in-17-0"


def test_loader_accepts_graphs_and_rejects_what_is_not_one():
    saver = InMemorySaver()
    compiled = loader.load("switchboard.worker.graph:graph", saver)
    assert compiled.checkpointer is saver
    assert loader.load("switchboard.worker.graph:build", saver).checkpointer is saver
    precompiled = loader.load("tests.worker.test_graph_and_turns:COMPILED", saver)
    assert precompiled.checkpointer is saver
    for spec, message in [("nocolon", "expected"), ("no.such.module:g", "cannot import"),
                          ("switchboard.worker.graph:nothing", "no attribute"),
                          ("switchboard.worker.graph:_STOP", "not a StateGraph")]:
        with pytest.raises(loader.GraphLoadError, match=message):
            loader.load(spec, saver)


COMPILED = build().compile()


async def test_think_time_delays_the_reply_but_does_not_change_it():
    import time

    plain = await build().compile().ainvoke({"messages": [HumanMessage("hello about boats")]})
    start = time.perf_counter()
    thinking = await build(think_ms=60).compile().ainvoke({"messages": [HumanMessage("hello about boats")]})
    assert time.perf_counter() - start >= 0.06
    assert thinking["messages"][-1].content == plain["messages"][-1].content
