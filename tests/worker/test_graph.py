"""The default demo graph (graph.py)."""

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from switchboard.worker.graph import build


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




async def test_think_time_delays_the_reply_but_does_not_change_it():
    import time

    plain = await build().compile().ainvoke({"messages": [HumanMessage("hello about boats")]})
    start = time.perf_counter()
    thinking = await build(think_ms=60).compile().ainvoke({"messages": [HumanMessage("hello about boats")]})
    assert time.perf_counter() - start >= 0.06
    assert thinking["messages"][-1].content == plain["messages"][-1].content
