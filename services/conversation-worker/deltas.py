"""Streaming a reply while the graph writes it: ``delta`` events.

While a turn runs, the text its chat models stream (LangChain's
``on_llm_new_token``) is appended to the user's outbound stream as ``delta``
events. They are ordinary events: durable, delivered to every device of the
user, and replayed after a reconnect like any other, so a device that drops
in the middle of a reply picks it up from its ``last_id`` with nothing missing
and nothing twice. The final ``assistant`` event (written by the commit, with
the whole text) follows the last delta and supersedes them.

*Attempts.* A delta's ``seq`` counts from 0 within one attempt at the reply.
If the attempt fails (the graph raised, the worker died), the next attempt's
deltas start again at ``seq`` 0: a client that sees ``seq`` 0 starts the reply
afresh. Deltas are written by the lease holder only (the script checks the
token, as the commit does), so a worker that stalled past its lease cannot
interleave a stale attempt's text with the current one.

*Tools.* When a chat model asks for tools, a ``tool_call`` event says which
(``text``: a JSON list of ``{"name", "args", "id"}``), and each tool's
answer a ``tool_result`` event (``{"id", "name", "content"}``), so a person
sees what the assistant is doing. They are written like deltas (lease
holder only, each once), in order with them -- the text streamed before a
tool call is written first -- and share their ``seq``: ``seq`` 0 of either
kind starts an attempt afresh. Each is cut to TOOL_EVENT_CHARS characters.

*How many.* A reply's first piece is written at once (the latency to the first
delta is what a user notices); after that at most one write every
``DELTA_INTERVAL`` seconds, each carrying every piece streamed meanwhile, so a
fast model does not turn every token into an event (each delta is an entry
of the outbound stream and counts against ``OUTBOUND_MAXLEN``). One write is
in flight at a time. When the graph returns, what is still waiting is written
at once, before the commit: the deltas of the attempt that produced the
reply hold all the text it streamed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler

from switchboard.shared import outbound
from switchboard.shared.protocol import EventKind
from switchboard.shared.tasks import wait_event

from .lease import LeaseLostError
from .store import WorkerStore

log = logging.getLogger(__name__)

#: Tags that keep a chat model's tokens out of the stream (LangGraph's and
#: LangSmith's conventions), e.g. for a model that only routes or summarises.
NOSTREAM_TAGS = frozenset({"nostream", "langsmith:nostream"})
#: Characters of a ``tool_call`` / ``tool_result`` event's text, at most (the
#: arguments and results are the graph's; the event is a preview of them).
TOOL_EVENT_CHARS = 2000


def _bounded(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= TOOL_EVENT_CHARS else text[:TOOL_EVENT_CHARS - 1] + "…"

def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text blocks of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else part if isinstance(part, str) else ""
                       for part in content)
    return ""


class DeltaWriter:
    """Writes one conversation's deltas; one instance per worker."""

    def __init__(self, store: WorkerStore, *, interval: float):
        self.store = store
        self.interval = interval

    def reply(self, user: str, conversation: str, *, token: str, client_msg_id: str,
              inbound_id: str) -> ReplyStream:
        """The delta stream of one attempt at one reply."""
        return ReplyStream(self, user, conversation, token=token, client_msg_id=client_msg_id,
                           inbound_id=inbound_id)


class ReplyStream(AsyncCallbackHandler):
    """One attempt at one reply: a LangChain callback handler that turns the
    streamed tokens of the turn's chat models into ``delta`` events.

    Pass it in the graph's ``callbacks``; it listens to chat models only (not
    to every node, which would cost each turn). A failed write (the lease is
    gone, Redis is down) is raised into the graph at the next token, which
    ends the attempt the way any other failure of the turn does.
    """

    # Chat-model callbacks only; everything else is skipped by the manager.
    ignore_chain = True
    ignore_agent = False  #: tools' callbacks come under "agent": their results become ``tool_result`` events
    ignore_retriever = True
    ignore_custom_event = True
    raise_error = True  #: a lost lease must stop the turn, not be logged and ignored
    run_inline = True  #: tokens are handled in order, in the model's own task

    def __init__(self, writer: DeltaWriter, user: str, conversation: str, *, token: str,
                 client_msg_id: str, inbound_id: str):
        self.writer = writer
        self.user = user
        self.conversation = conversation
        self.token = token
        self.client_msg_id = client_msg_id
        self.inbound_id = inbound_id
        self.seq = 0  #: deltas written so far
        self.written: list[str] = []  #: their texts (a stopped turn's ``cancelled`` event carries them)
        self._name = secrets.token_hex(4)  #: this attempt's, in each delta's mark
        self.error: BaseException | None = None
        #: ``time.perf_counter()`` when the first delta was written (the first-delta metric)
        self.first_written: float | None = None
        self._pieces: list[str] = []
        self._muted: set[UUID] = set()
        self._run: UUID | None = None  #: the model run the last piece came from
        self._any_text = False
        self._closing = asyncio.Event()
        self._hurry = asyncio.Event()  #: set: the flusher writes without the interval's pause
        self._loop = asyncio.get_running_loop()  #: the worker's, where every write happens
        self._flusher: asyncio.Task | None = None

    # -- LangChain callbacks ---------------------------------------------------------

    async def on_chat_model_start(self, serialized: dict[str, Any], messages: Any, *, run_id: UUID,
                                  tags: list[str] | None = None, **kwargs: Any) -> None:
        if tags and NOSTREAM_TAGS.intersection(tags):
            self._muted.add(run_id)

    async def on_llm_new_token(self, token: str, *, chunk: Any = None, run_id: UUID, **kwargs: Any) -> None:
        if run_id in self._muted:
            return
        text = token if isinstance(token, str) else ""
        if not text and chunk is not None:
            text = content_text(getattr(getattr(chunk, "message", None), "content", None))
        self.add(text, run_id)

    async def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        muted = run_id in self._muted
        self._muted.discard(run_id)
        if muted:
            return
        calls = [{"name": c.get("name"), "args": c.get("args"), "id": c.get("id")}
                 for generations in getattr(response, "generations", None) or []
                 for generation in generations
                 for c in (getattr(getattr(generation, "message", None), "tool_calls", None) or [])]
        if calls:
            await self.event(EventKind.TOOL_CALL, _bounded(calls))

    async def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        content = getattr(output, "content", output)
        await self.event(EventKind.TOOL_RESULT, _bounded({
            "id": getattr(output, "tool_call_id", None), "name": getattr(output, "name", None) or kwargs.get("name"),
            "content": content_text(content) if not isinstance(content, str) else content}))

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._muted.discard(run_id)

    # LangChain chat models stream (rather than generate in one piece) when a
    # handler with these two methods is attached: its streaming-handler protocol.
    def tap_output_aiter(self, run_id: UUID, output: Any) -> Any:
        return output

    def tap_output_iter(self, run_id: UUID, output: Any) -> Any:
        return output

    # -- writing ------------------------------------------------------------------------

    def add(self, text: str, run_id: UUID | None = None) -> None:
        """Queue a piece of the reply. Pieces of a second model run are set
        apart by a newline, as the final reply joins its messages."""
        if self.error is not None:
            raise self.error
        if not text:
            return
        if run_id != self._run:
            if self._any_text:
                text = "\n" + text
            self._run = run_id
        self._any_text = True
        self._pieces.append(text)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name=f"deltas-{self.user}/{self.conversation}")

    async def event(self, kind: EventKind, text: str) -> None:
        """Write a ``tool_call`` / ``tool_result`` event now, after every delta
        streamed before it. A failed write is raised into the graph.

        A synchronous tool runs in a thread, and LangChain calls this handler
        there on an event loop of its own: the write is then handed to the
        worker's loop (its Redis connections belong to it) and waited for."""
        if asyncio.get_running_loop() is not self._loop:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.event(kind, text), self._loop))
            return
        if self.error is not None:
            raise self.error
        while self._flusher is not None:  # the deltas before it, without the interval's pause
            self._hurry.set()
            await asyncio.shield(self._flusher)
        if not self._closing.is_set():
            self._hurry.clear()
        if self.error is not None:
            raise self.error
        try:
            if self._pieces:
                text_before = "".join(self._pieces)
                self._pieces.clear()
                await self._write(text_before)
            await self._write(text, kind=kind)
        except Exception as exc:
            self.error = exc
            raise

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pieces:
                text = "".join(self._pieces)
                self._pieces.clear()
                started = loop.time()
                await self._write(text)
                pause = self.writer.interval - (loop.time() - started)
                if pause > 0:
                    await wait_event(self._hurry, pause)
        except Exception as exc:  # noqa: BLE001 - handed to the graph at its next token
            self.error = exc
        finally:
            self._flusher = None

    async def _write(self, text: str, kind: EventKind = EventKind.DELTA) -> None:
        # Sealed like every event text with ENCRYPTION_KEYS (no keys: as it is).
        fields = outbound.event_fields(kind.value, self.conversation, self.writer.store.keyring.seal(text),
                                       client_msg_id=self.client_msg_id, device_id=None, ts=outbound.now_ms(),
                                       inbound_id=self.inbound_id, seq=self.seq)
        written = await self.writer.store.write_delta(self.user, self.conversation, token=self.token,
                                                      mark=f"{self._name}|{self.seq}", fields=fields)
        if not written:
            raise LeaseLostError(f"lease of {self.user}/{self.conversation} lost while streaming")
        if not self.seq:
            self.first_written = time.perf_counter()
        self.seq += 1
        if kind is EventKind.DELTA:
            self.written.append(text)

    async def close(self) -> None:
        """End the attempt's stream: write what is waiting now, without the
        interval's pause, and return when no write is in flight, so no delta
        can follow the final event. A failed write is not raised here (this
        runs on the way out of failed attempts too): the caller reads
        :attr:`error` -- an attempt whose deltas do not hold all it streamed
        must not be committed (see :meth:`Turns._run`)."""
        self._closing.set()
        self._hurry.set()
        if self._flusher is None and self._pieces and self.error is None:
            self._flusher = asyncio.create_task(self._flush(), name=f"deltas-{self.user}/{self.conversation}")
        flusher = self._flusher
        if flusher is not None:
            await asyncio.shield(flusher)
