"""Graphs the benchmark's workers load by name (``GRAPH=bench.graphs:<name>``).

The workers import this module from the repository root (the harness puts it
on their ``PYTHONPATH``); it needs only the runtime package.
"""

from __future__ import annotations

import asyncio

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, MessagesState, StateGraph

from switchboard.worker.graph import build

THINK_MS = 200  #: a model's time to its first token
TOKEN_MS = 10  #: then a word every 10 ms (~100 tokens/s, a fast hosted model)

#: Scenario 4's realistic graph: the default assistant speaking through a
#: chat model that thinks 200 ms, then streams its reply word by word.
realistic = build(THINK_MS, stream=True, token_ms=TOKEN_MS)


async def _think(state: MessagesState) -> dict:
    """``sleep:<seconds> ...`` waits that long (without blocking the worker's
    loop, as a model call would), then replies ``reply <n> to: <text>``."""
    humans = [m for m in state["messages"] if isinstance(m, HumanMessage)]
    text = humans[-1].content if humans else ""
    if text.startswith("sleep:"):
        await asyncio.sleep(float(text.split()[0].split(":", 1)[1]))
    return {"messages": [AIMessage(content=f"reply {len(humans)} to: {text}")]}


def _thinking() -> StateGraph:
    builder = StateGraph(MessagesState)
    builder.add_node("think", _think)
    builder.add_edge(START, "think")
    builder.add_edge("think", END)
    return builder


#: The scaling scenario's graph: one node that waits as long as the text asks
#: (``sleep:0.02 ...``), so one worker's turns overlap and a second worker's add up.
thinking = _thinking()
