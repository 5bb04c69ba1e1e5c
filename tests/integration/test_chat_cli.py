"""``switchboard chat`` as a real subprocess, its stdin and stdout pipes, on
real services: a message typed and its reply streamed, the commands, and a
run killed with SIGKILL mid-reply whose restart prints each event exactly
once across both runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from switchboard.shared import keys
from tests.support.client import new_user
from tests.support.cluster import token

SLOW = "tests.support.graphs:slow"


class Chat:
    """One ``switchboard chat`` process; its stdout and stderr kept as they come."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.out = ""
        self.err = ""
        self._changed = asyncio.Event()
        self._readers = [asyncio.create_task(self._read(process.stdout, "out")),
                         asyncio.create_task(self._read(process.stderr, "err"))]

    @classmethod
    async def start(cls, url: str, user: str, state: Path, *args: str) -> Chat:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "switchboard.cli", "chat", "--token", token(user), "--url", url,
            "--state", str(state), *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return cls(process)

    async def _read(self, stream: asyncio.StreamReader, name: str) -> None:
        while chunk := await stream.read(65536):
            setattr(self, name, getattr(self, name) + chunk.decode())
            self._changed.set()

    async def type(self, line: str) -> None:
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def wait(self, predicate, timeout: float = 20.0):
        """Until ``predicate()`` holds: checked on new output, and every 10 ms for
        conditions outside it (the state file)."""
        async with asyncio.timeout(timeout):
            while not (found := predicate()):
                if self.process.returncode is not None:
                    raise AssertionError(f"chat exited {self.process.returncode}:\n{self.out}\n{self.err}")
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.01)
        return found

    def lines(self) -> list[str]:
        return self.out.splitlines()

    def events(self) -> list[dict]:
        """``--json``: the events printed (complete lines only)."""
        complete = self.out[: self.out.rfind("\n") + 1]
        return [e for e in map(json.loads, complete.splitlines()) if e.get("type") == "event"]

    async def quit(self) -> int:
        await self.type("/quit")
        code = await asyncio.wait_for(self.process.wait(), 15)
        await asyncio.gather(*self._readers)
        return code

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        await asyncio.gather(*self._readers)


def _start(cluster) -> str:
    cluster.start_many(("fanout", "fanout"), ("gateway", "gw"), ("worker", "w"), GRAPH=SLOW)
    return cluster.services["gw"].url


async def test_a_message_typed_streams_its_reply_and_the_commands_work(cluster, tmp_path):
    url = _start(cluster)
    chat = await Chat.start(url, new_user(), tmp_path / "state.json", "--conversation", "trip")
    await chat.type("hello there, streamed please")
    reply = "reply 1 to: hello there, streamed please"
    await chat.wait(lambda: f"assistant: {reply}\n" in chat.out)
    assert "you: hello there, streamed please\n" in chat.out
    assert chat.out.count(reply) == 1  # streamed into one line, not printed again at the end
    assert "connected as" in chat.err
    await chat.type("/rename Our trip")
    await chat.wait(lambda: "(renamed: Our trip)" in chat.out)
    await chat.type("/list")
    await chat.wait(lambda: "* trip  Our trip  (1 messages)" in chat.out)
    await chat.type("/history 10")
    await chat.wait(lambda: chat.out.count(reply) == 2)
    assert "user: hello there, streamed please\n" in chat.out
    await chat.type("/stop")
    await chat.wait(lambda: "error: not_running" in chat.out)
    await chat.type("/switch other")
    await chat.type("a message elsewhere")
    await chat.wait(lambda: "assistant: reply 1 to: a message elsewhere\n" in chat.out)
    assert await chat.quit() == 0
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["device_id"].startswith("chat-") and state["last_id"] and state["epoch"]


async def test_a_run_killed_mid_reply_and_restarted_prints_each_event_exactly_once(cluster, redis_client, tmp_path):
    url = _start(cluster)
    user, state = new_user(), tmp_path / "state.json"
    text = "sleep:0.2 streamed " + " ".join(f"word{n}" for n in range(80))  # 1.6 s of deltas
    first = await Chat.start(url, user, state, "--json", "--conversation", "c")
    await first.type(text)
    deltas = await first.wait(lambda: len([e for e in first.events() if e["kind"] == "delta"]) >= 3 and
                              [e for e in first.events() if e["kind"] == "delta"])
    # Killed once the position of the last event it printed is saved, while the reply is still being written.
    await first.wait(lambda: state.exists() and json.loads(state.read_text()).get("last_id") == first.events()[-1]["id"])
    await first.kill()
    assert not any(e["kind"] == "assistant" for e in first.events()), "the reply ended before the kill"
    second = await Chat.start(url, user, state, "--json", "--conversation", "c")
    await second.wait(lambda: any(e["kind"] == "assistant" for e in second.events()))
    assert await second.quit() == 0
    printed = [e["id"] for e in first.events() + second.events()]
    stored = [entry_id for entry_id, _ in await redis_client.xrange(keys.outbound(user))]
    assert printed == stored  # each event once across both runs, in order, none skipped
    assert deltas and not any(json.loads(line).get("type") == "gap" for line in second.out.splitlines())
