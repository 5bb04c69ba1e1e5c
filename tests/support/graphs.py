"""Graphs for tests, named with GRAPH=tests.support.graphs:<name>."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import interrupt

from switchboard.worker.graph import ChatState, ReadingModel, build, process_input, update_context


def _last_text(state: MessagesState) -> str:
    humans = [m for m in state["messages"] if isinstance(m, HumanMessage)]
    return humans[-1].content if humans else ""


def _count_turns(state: MessagesState) -> int:
    return sum(isinstance(m, HumanMessage) for m in state["messages"])


def _single(node) -> StateGraph:
    builder = StateGraph(MessagesState)
    builder.add_node("respond", node)
    builder.add_edge(START, "respond")
    builder.add_edge("respond", END)
    return builder


def _mark(text: str, name: str) -> None:
    """A line ``text`` in the file ``<pid>-<name>`` of SLOW_GRAPH_MARKS (if set): a graph run began."""
    marks = os.environ.get("SLOW_GRAPH_MARKS")
    if marks:
        Path(marks).mkdir(parents=True, exist_ok=True)
        with open(Path(marks) / f"{os.getpid()}-{name}", "a") as mark:
            mark.write(text + "\n")


def runs(marks: Path) -> list[str]:
    """The texts of the graph runs begun, as :func:`_mark` wrote them (the test's SLOW_GRAPH_MARKS)."""
    return [line for mark in marks.iterdir() for line in mark.read_text().splitlines()] if marks.exists() else []


async def _slow(state: MessagesState) -> dict:
    """Marks that a turn started (a file per process and message, a line per
    attempt), then sleeps if asked.

    ``sleep:<seconds> ...`` sleeps; ``fail-unless:<path> ...`` raises while
    no file ``path`` exists (a bug fixed later); ``fail ...`` raises; ``crash
    ...`` kills the worker process; with the word ``ask``, it asks the
    person once (LangGraph's ``interrupt``) and the reply ends ``answered
    <the answer as JSON>``. SLOW_GRAPH_MARKS names the directory for the
    start marks.
    """
    text = _last_text(state)
    _mark(text, str(abs(hash(text))))
    if text.startswith("sleep:"):
        await asyncio.sleep(float(text.split()[0].split(":", 1)[1]))
    if text.startswith("fail-unless:"):
        if not Path(text.split()[0].split(":", 1)[1]).exists():
            raise RuntimeError("the graph was asked to fail until a file exists")
    elif text.startswith("fail"):
        raise RuntimeError("the graph was asked to fail")
    if text.startswith("crash"):
        os._exit(3)  # a poison message: takes the whole worker process down
    reply = f"reply {_count_turns(state)} to: {text}"
    if "ask" in text.split():
        reply += " answered " + json.dumps(interrupt({"question": "go on?", "about": text}))
    if "streamed" in text.split():
        reply = (await _SPEAKER.ainvoke([SystemMessage(content=reply)])).content
    return {"messages": [AIMessage(content=reply)]}


_SPEAKER = ReadingModel(token_ms=20)


#: Replies "reply <n> to: <text>"; sleeps on "sleep:<s>", raises on "fail";
#: a text with the word "streamed" gets its reply streamed, a word every 20 ms; "ask" asks first.
slow = _single(_slow)


async def _brief(state: MessagesState) -> dict:
    text = _last_text(state)
    return {"messages": [AIMessage(content=f"got {len(text)} characters")]}


#: Replies "got <n> characters": a short reply to however long a message.
brief = _single(_brief)


#: The default assistant, its reply streamed a word every 150 ms (time to drop mid-reply).
streaming_slowly = build(stream=True, token_ms=150)


_QUICK_SPEAKER = ReadingModel(token_ms=5)


async def _guard(state: ChatState) -> dict:
    text = _last_text(state)
    if text.startswith("fail"):
        raise RuntimeError(f"the graph was asked to fail on {text!r}")  # the text in the error, as bugs do
    return {}


async def _echo_streamed(state: ChatState) -> dict:
    script = f"Turn {state['turn']}. You said: \"{state['last_user_text']}\"."
    return {"messages": [AIMessage(content=(await _QUICK_SPEAKER.ainvoke([SystemMessage(content=script)])).content)]}


def _guarded() -> StateGraph:
    builder = StateGraph(ChatState)
    for name, node in (("guard", _guard), ("process_input", process_input), ("generate_response", _echo_streamed),
                       ("update_context", update_context)):
        builder.add_node(name, node)
    builder.add_edge(START, "guard")
    builder.add_edge("guard", "process_input")
    builder.add_edge("process_input", "generate_response")
    builder.add_edge("generate_response", "update_context")
    builder.add_edge("update_context", END)
    return builder


#: The default graph's state (turn, keywords, topic, the last two texts), its
#: reply quoting the message, streamed a word every 5 ms; a text beginning
#: with "fail" raises an error that quotes it.
guarded_streaming = _guarded()


async def _asking(state: MessagesState) -> dict:
    """Asks the person before answering (human-in-the-loop), as ``slow`` does
    otherwise: ``ask:<n> ...`` asks ``n`` questions in turn (LangGraph's
    ``interrupt``), and the reply lists the answers. ``then-sleep:<s>`` in the
    text sleeps after the answers; SLOW_GRAPH_MARKS gets a line per run."""
    text = _last_text(state)
    _mark(text, "ask")
    first = text.split()[0] if text.split() else ""
    answers = []
    if first.startswith("ask:"):
        for number in range(1, int(first.split(":", 1)[1]) + 1):
            answers.append(interrupt({"question": number, "about": text}))
    for word in text.split():
        if word.startswith("then-sleep:"):
            await asyncio.sleep(float(word.split(":", 1)[1]))
    reply = f"reply {_count_turns(state)} to: {text}"
    if answers:
        reply += " answers: " + json.dumps(answers)
    return {"messages": [AIMessage(content=reply)]}


#: ``slow``'s replies, after asking the person (``ask:<n>``): GRAPH=tests.support.graphs:asking
asking = _single(_asking)
