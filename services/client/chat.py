"""``switchboard chat``: a terminal client, built on :class:`~.client.Client` only.

Lines typed are sent to the current conversation; lines starting with ``/``
are commands (``/help``). Replies stream to stdout as they are written;
the connection's state goes to stderr. The device id and the position are
kept in a state file, so a restart goes on exactly where the last run
stopped: no event shown twice, none skipped.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import msgspec

from switchboard.shared import protocol as p

from .client import Client, ConnectionState
from .errors import ClientError, RequestFailed
from .replies import Replies
from .state import FileState
from .stream import Gap

HELP = """\
commands:
  /help               this list
  /history [N]        the conversation's last N messages (default 20)
  /list               your conversations, newest first
  /switch C           go to conversation C (/new [C]: a new one)
  /rename TITLE       rename this conversation
  /clear              start this conversation afresh
  /stop               stop the reply being written
  /regenerate         a new reply to the last message
  /edit TEXT          replace the last message by TEXT
  /answer VALUE       answer the question the conversation waits on (JSON, or text)
  /quit               leave (also Ctrl-D)
anything else is sent as a message."""


@dataclass(frozen=True)
class ChatOptions:
    url: list[str]
    token_provider: Callable[[], str]
    state_path: Path
    conversation: str = "chat"
    device_id: str | None = None
    json_lines: bool = False  #: one JSON object per event on stdout (for scripts), instead of text


def default_state_path(state_home: str | None, home: str, user: str) -> Path:
    """``$XDG_STATE_HOME/switchboard/chat-USER.json`` (``~/.local/state`` without it)."""
    base = Path(state_home) if state_home else Path(home) / ".local" / "state"
    return base / "switchboard" / f"chat-{user}.json"


class Screen:
    """What the terminal shows: events of the current conversation in full
    (replies streamed in place), other conversations' in one line each."""

    def __init__(self, out: TextIO, err: TextIO, device_id: str, conversation: str, json_lines: bool):
        self.out, self.err = out, err
        self.device_id = device_id
        self.conversation = conversation
        self.json_lines = json_lines
        self.replies = Replies()
        self.streaming: tuple[str, str] | None = None  #: the reply being written on the open line
        self.questions: dict[str, tuple[str, str]] = {}  #: conversation -> (client_msg_id, interrupt id)

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def line(self, text: str) -> None:
        """A line of its own (after the reply being streamed, if any)."""
        if self.streaming is not None:
            self._write("\n")
            self.streaming = None
        self._write(text + "\n")

    def notice(self, text: str) -> None:
        if self.json_lines:
            self._write(json.dumps({"type": "notice", "text": text}) + "\n")
        else:
            self.line(text)

    def status(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def show(self, item: p.Event | Gap) -> None:
        if isinstance(item, Gap):
            if self.json_lines:
                self._write(json.dumps({"type": "gap", "epoch": item.epoch, "resume_from": item.resume_from}) + "\n")
            else:
                self.line("(earlier events may be missing here: /history shows the conversation)")
            return
        reply = self.replies.apply(item)
        self._remember_question(item)
        if self.json_lines:
            self._write(msgspec.json.encode(item).decode() + "\n")
            return
        if item.conversation_id != self.conversation:
            if item.kind in ("user", "assistant", "turn_error", "cancelled", "interrupt", "renamed", "cleared"):
                self.line(f"[{item.conversation_id}] {item.kind}: {_brief(item.text)}")
            return
        if reply is not None:
            self._reply(item, reply.text, reply.appended, reply.restarted, reply.final)
        else:
            self.line(self._describe(item))

    def _reply(self, event: p.Event, text: str, appended: str, restarted: bool, final: bool) -> None:
        key = (event.conversation_id, event.client_msg_id or "")
        if event.kind in ("tool_call", "tool_result"):
            self.line(f"  [{event.kind.replace('_', ' ')}] {_brief(event.text, 200)}")
            return
        label = {"assistant": "assistant", "delta": "assistant", "turn_error": "error",
                 "cancelled": "stopped"}[event.kind]
        if self.streaming == key and not restarted:
            self._write(appended)
        else:
            if self.streaming is not None:
                self._write("\n")
            self._write(f"{label}: {text}")
        self.streaming = key
        if final:
            self._write("\n")
            self.streaming = None

    def _describe(self, event: p.Event) -> str:
        match event.kind:
            case "user":
                who = "you" if event.device_id == self.device_id else f"you@{event.device_id}"
                return f"{who}: {event.text}"
            case "interrupt":
                value = json.loads(event.text).get("value")
                return f"question: {json.dumps(value)}  (answer with /answer VALUE)"
            case "resumed":
                return f"answered: {event.text}"
            case "renamed":
                return f"(renamed: {event.text})"
            case "cleared":
                return "(cleared: the conversation starts afresh)"
            case "replaced":
                return "(the last reply is replaced)" if event.text == "reply" else "(a message is replaced)"
            case _:
                return f"({event.kind}: {_brief(event.text)})"

    def _remember_question(self, event: p.Event) -> None:
        if event.kind == "interrupt" and event.client_msg_id:
            try:
                self.questions[event.conversation_id] = (event.client_msg_id, json.loads(event.text)["id"])
            except (ValueError, KeyError, TypeError):
                pass
        elif event.kind in ("resumed", "assistant", "turn_error", "cancelled", "cleared"):
            self.questions.pop(event.conversation_id, None)


def _brief(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _on_state(screen: Screen) -> Callable[[ConnectionState], None]:
    def report(state: ConnectionState) -> None:
        match state.state:
            case "connecting":
                screen.status(f"connecting to {state.url} ...")
            case "connected":
                welcome = state.welcome
                assert welcome is not None
                exact = "exactly" if welcome.recovered else "not exactly: some events may be missing"
                screen.status(f"connected as {welcome.user_id} ({welcome.device_id}), resumed {exact}")
            case "disconnected":
                code = state.code if state.code is not None else "no close frame"
                screen.status(f"disconnected ({code}); reconnecting in {state.retry_in:.1f} s")
            case "stopped":
                screen.status(f"stopped: closed with {state.code} {state.reason}".rstrip())
    return report


class Chat:
    def __init__(self, options: ChatOptions, out: TextIO, err: TextIO):
        self.options = options
        state = FileState(options.state_path)
        device = options.device_id or state.load().device_id or f"chat-{uuid.uuid4().hex[:10]}"
        self.screen = Screen(out, err, device, options.conversation, options.json_lines)
        self.client = Client(options.url, token_provider=options.token_provider, device_id=device, state=state,
                             on_state=_on_state(self.screen))
        self.sends: set[asyncio.Task[None]] = set()

    @property
    def conversation(self) -> str:
        return self.screen.conversation

    async def run(self, lines: asyncio.StreamReader) -> int:
        await self.client.start(wait=False)
        shower = asyncio.create_task(self._show())
        try:
            while True:
                reading = asyncio.ensure_future(lines.readline())
                done, _ = await asyncio.wait({reading, shower}, return_when=asyncio.FIRST_COMPLETED)
                if shower in done:
                    reading.cancel()
                    break
                raw = reading.result()
                if not raw:  # end of input: the sends typed still go out
                    if self.sends:
                        await asyncio.wait(self.sends)
                    break
                if not await self.command(raw.decode(errors="replace").strip()):
                    break
        finally:
            await self.client.close()
            shower.cancel()
            await asyncio.gather(shower, return_exceptions=True)
        return 0 if not shower.done() or shower.cancelled() or shower.exception() is None else 1

    async def _show(self) -> None:
        try:
            async for item in self.client.events():
                self.screen.show(item)
        except ClientError as exc:
            self.screen.status(f"stopped: {exc}")
            raise

    async def command(self, line: str) -> bool:
        """Run one input line; False to quit."""
        if not line:
            return True
        if not line.startswith("/"):
            self._send(line)
            return True
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name in ("quit", "exit"):
            return False
        try:
            await self._command(name, arg)
        except RequestFailed as exc:
            self.screen.notice(f"error: {exc.code}: {exc.message}")
        except ClientError as exc:
            self.screen.notice(f"error: {exc}")
        return True

    async def _command(self, name: str, arg: str) -> None:
        client, screen, conv = self.client, self.screen, self.conversation
        match name:
            case "help":
                screen.notice(HELP)
            case "history":
                result = await client.history(conv, limit=int(arg) if arg.isdigit() else 20)
                for message in result.messages:
                    screen.notice(f"{message.role}: {message.text}")
                if not result.messages:
                    screen.notice("(no messages)")
            case "list":
                page = await client.conversations(limit=20)
                for info in page.conversations:
                    mark = "*" if info.conversation_id == conv else " "
                    waiting = "  (waits for /answer)" if info.pending_interrupt else ""
                    screen.notice(f"{mark} {info.conversation_id}  {info.title or ''}  "
                                  f"({info.message_count} messages){waiting}")
                if not page.conversations:
                    screen.notice("(no conversations)")
            case "switch" | "new":
                target = arg or (f"c-{uuid.uuid4().hex[:8]}" if name == "new" else "")
                if not target:
                    screen.notice("usage: /switch CONVERSATION")
                    return
                screen.conversation = target
                screen.notice(f"(conversation {target})")
            case "rename":
                await client.rename(conv, arg)
            case "clear":
                await client.clear(conv)
            case "stop":
                await client.cancel(conv)
            case "regenerate":
                last = await self._last_message()
                if last is not None:
                    await client.regenerate(conv, last)
            case "edit":
                last = await self._last_message()
                if last is not None and arg:
                    await client.edit(conv, last, arg)
            case "answer":
                await self._answer(arg)
            case _:
                screen.notice(f"unknown command /{name} (/help lists them)")

    def _send(self, text: str) -> None:
        async def send() -> None:
            try:
                await self.client.send(self.conversation, text)
            except RequestFailed as exc:
                self.screen.notice(f"not sent: {exc.code}: {exc.message}")
            except ClientError as exc:
                self.screen.notice(f"not sent: {exc}")

        task = asyncio.create_task(send())
        self.sends.add(task)
        task.add_done_callback(self.sends.discard)

    async def _last_message(self) -> str | None:
        history = await self.client.history(self.conversation, limit=50)
        users = [m for m in history.messages if m.role == "user" and m.client_msg_id]
        if not users:
            self.screen.notice("(no message to act on)")
            return None
        return users[-1].client_msg_id

    async def _answer(self, arg: str) -> None:
        try:
            value = json.loads(arg)
        except ValueError:
            value = arg
        question = self.screen.questions.get(self.conversation)
        if question is None:  # asked before this run: the conversation list has it
            page = await self.client.conversations(limit=100)
            pending = [c.pending_interrupt for c in page.conversations
                       if c.conversation_id == self.conversation and c.pending_interrupt]
            if not pending:
                self.screen.notice("(no question waits in this conversation)")
                return
            question = (pending[0].client_msg_id, pending[0].id)
        await self.client.resume(self.conversation, question[0], value, interrupt_id=question[1])


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def run(options: ChatOptions) -> int:
    """The ``switchboard chat`` program."""
    async def main() -> int:
        chat = Chat(options, sys.stdout, sys.stderr)
        chat.screen.status(f"conversation {options.conversation}; /help lists the commands")
        return await chat.run(await _stdin_reader())

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 130
