"""The default graph: a deterministic assistant that needs no network.

It follows the original design's three nodes -- process input, generate
response, update context -- and its replies show that it remembers the
conversation: the turn number, the topic so far, and what was said before.
The nodes are coroutines: LangGraph runs plain functions in a thread pool,
a hop this CPU-light graph does not need.

``streaming`` is the same assistant speaking through a chat model
(:class:`ReadingModel`, a stand-in that needs no network): the worker streams
its tokens to the devices as ``delta`` events, as it would a real model's.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.graph import END, START, MessagesState, StateGraph

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{3,}")
_STOP = frozenset(
    "about after again also because been before being could does doing down from have having here "
    "into just like more most much only other over said same should some such than that their them "
    "then there these they this those through very want what when where which while will with would "
    "your yours hello thanks thank please".split()
)


class ChatState(MessagesState):
    turn: int
    keywords: dict[str, int]
    topic: str
    last_user_text: str
    previous_user_text: str


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text) if w.lower() not in _STOP]


async def process_input(state: ChatState) -> dict:
    """Count the turn and fold the new message's words into the context."""
    human = [m for m in state["messages"] if isinstance(m, HumanMessage)]
    text = human[-1].content if human else ""
    counts = Counter(state.get("keywords") or {})
    counts.update(_words(text if isinstance(text, str) else str(text)))
    return {
        "turn": (state.get("turn") or 0) + 1,
        "keywords": dict(counts),
        "previous_user_text": state.get("last_user_text", ""),
        "last_user_text": text,
    }


async def generate_response(state: ChatState) -> dict:
    return {"messages": [AIMessage(content=_compose(state))]}


def _compose(state: ChatState) -> str:
    turn = state["turn"]
    parts = [f"Turn {turn}. You said: \"{state['last_user_text']}\"."]
    topic = _topic(state.get("keywords") or {}) if turn > 1 else ""
    if topic:
        parts.append(f"We have been talking about {topic}.")
    if state.get("previous_user_text"):
        parts.append(f"Before that you said: \"{state['previous_user_text']}\".")
    else:
        parts.append("This is the start of our conversation.")
    return " ".join(parts)


def _topic(counts: dict[str, int]) -> str:
    """The most frequent meaningful word so far (ties: the first seen)."""
    if not counts:
        return ""
    return max(counts.items(), key=lambda kv: kv[1])[0]


async def update_context(state: ChatState) -> dict:
    """Remember the topic for the next turn (and for anyone reading the state)."""
    return {"topic": _topic(state.get("keywords") or {})}


def _after_thinking(think_seconds: float):
    """``generate_response`` after a non-blocking pause, as a model call would take."""

    async def generate_response_after_thinking(state: ChatState) -> dict:
        await asyncio.sleep(think_seconds)
        return await generate_response(state)

    return generate_response_after_thinking


class ReadingModel(BaseChatModel):
    """A chat model stand-in that reads out its system message: it waits
    ``think_ms`` before the first token, then streams the text a word at a
    time, ``token_ms`` apart. It streams whenever a streaming callback handler
    listens (as the worker's does), like a real model."""

    think_ms: float = 0.0
    token_ms: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "switchboard-reading"

    @staticmethod
    def _script(messages: list[BaseMessage]) -> str:
        return next((m.content for m in messages if isinstance(m, SystemMessage)), "")

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        raise NotImplementedError("ReadingModel is asynchronous: use ainvoke or astream")

    async def _agenerate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                         **kwargs: Any) -> ChatResult:
        text = "".join([chunk.text async for chunk in self._astream(messages)])
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    async def _astream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        if self.think_ms > 0:
            await asyncio.sleep(self.think_ms / 1000.0)
        for index, word in enumerate(re.findall(r"\s*\S+", self._script(messages))):
            if index and self.token_ms > 0:
                await asyncio.sleep(self.token_ms / 1000.0)
            yield ChatGenerationChunk(message=AIMessageChunk(content=word))


def _speaking(model: ReadingModel):
    """``generate_response`` through a chat model, so the reply is streamed."""

    async def generate_response_streamed(state: ChatState) -> dict:
        reply = await model.ainvoke([SystemMessage(content=_compose(state))])
        return {"messages": [AIMessage(content=reply.content)]}

    return generate_response_streamed


def build(think_ms: float = 0.0, *, stream: bool = False, token_ms: float = 0.0) -> StateGraph:
    """The graph; ``think_ms`` > 0 stands in for a model's time to answer
    (benchmarks). With ``stream``, the reply comes from :class:`ReadingModel`:
    ``think_ms`` to the first token, then a word every ``token_ms``. This
    module imports only langgraph and langchain-core, so the benchmark's peer
    servers load this very file too."""
    builder = StateGraph(ChatState)
    builder.add_node("process_input", process_input)
    if stream:
        generate = _speaking(ReadingModel(think_ms=think_ms, token_ms=token_ms))
    else:
        generate = _after_thinking(think_ms / 1000.0) if think_ms > 0 else generate_response
    builder.add_node("generate_response", generate)
    builder.add_node("update_context", update_context)
    builder.add_edge(START, "process_input")
    builder.add_edge("process_input", "generate_response")
    builder.add_edge("generate_response", "update_context")
    builder.add_edge("update_context", END)
    return builder


#: What ``GRAPH=switchboard.worker.graph:graph`` names: an uncompiled StateGraph;
#: the worker compiles it with its Redis checkpointer.
graph = build()

#: The same assistant, its replies streamed word by word (``GRAPH=switchboard.worker.graph:streaming``).
streaming = build(stream=True, token_ms=30)
