"""switchboard.client against real processes: a gateway (or two), a worker, a
fanout and Redis. Every test compares what the library yielded with the
user's outbound stream in Redis."""

from __future__ import annotations

import asyncio
import json

import pytest

from switchboard.client import Client, ClientClosed, FileState, Gap, MemoryState, Position, Replies, RequestFailed
from switchboard.shared import keys
from switchboard.shared.protocol import Event
from tests.support.client import new_user
from tests.support.cluster import token

SLOW = "tests.support.graphs:slow"
ASKING = "tests.support.graphs:asking"


async def _collect(client: Client, items: list, until, timeout: float = 20.0) -> None:
    """Take events into ``items`` until ``until(items)`` holds."""
    async def run() -> None:
        async for item in client.events():
            items.append(item)
            if until(items):
                return
    await asyncio.wait_for(run(), timeout)


def _final(cmid: str):
    return lambda items: any(isinstance(i, Event) and i.kind == "assistant" and i.client_msg_id == cmid
                             for i in items)


async def _outbound_ids(redis_client, user: str) -> list[str]:
    return [entry_id for entry_id, _ in await redis_client.xrange(keys.outbound(user))]


def _start(cluster, graph: str = SLOW, gateways: tuple[str, ...] = ("gw",), **env: str) -> list[str]:
    """A fanout, the gateways and a worker running ``graph``, started at once; the gateways' URLs."""
    cluster.start_many(("fanout", "fanout"), *(("gateway", name) for name in gateways), ("worker", "w"),
                       GRAPH=graph, **env)
    return [cluster.services[name].url for name in gateways]


def _ids(items: list) -> list[str]:
    return [i.id for i in items if isinstance(i, Event)]


async def test_sends_streams_and_answers_requests(cluster, redis_client):
    (url,) = _start(cluster, DELTA_INTERVAL="0")
    user = new_user()
    async with Client(url, token=token(user), device_id="lib") as client:
        accepted = await client.send("c1", "tell me about boats, streamed", client_msg_id="m1")
        assert accepted
        items: list = []
        await _collect(client, items, _final("m1"))
        replies = Replies()
        shown = [r for r in (replies.apply(i) for i in items if isinstance(i, Event)) if r is not None]
        final = [i for i in items if isinstance(i, Event) and i.kind == "assistant"][0]
        assert len(shown) > 3 and shown[-1].final and not shown[-1].restarted  # the deltas built the reply
        assert shown[-2].text + shown[-1].appended == final.text
        assert _ids(items) == await _outbound_ids(redis_client, user)

        history = await client.history("c1", limit=10)
        assert [m.role for m in history.messages] == ["user", "assistant"]
        await client.rename("c1", "Boats")
        listed = await client.conversations(limit=5)
        assert [(c.conversation_id, c.title) for c in listed.conversations] == [("c1", "Boats")]
        with pytest.raises(RequestFailed) as refused:
            await client.history("nowhere")
        assert refused.value.code == "unknown_conversation"
        with pytest.raises(RequestFailed) as idle:
            await client.cancel("c1")
        assert idle.value.code == "not_running"
        with pytest.raises(RequestFailed) as renamed:
            await client.rename("nowhere", "x")
        assert renamed.value.code == "unknown_conversation"
        # Requests in a row, each matched to its own answer.
        results = await asyncio.gather(client.history("c1", limit=1), client.conversations(),
                                       client.history("c1", limit=2))
        assert [len(results[0].messages), len(results[2].messages)] == [1, 2]
        await client.regenerate("c1", "m1")
        items = []
        await _collect(client, items, lambda its: any(isinstance(i, Event) and i.kind == "assistant"
                                                      for i in its))
        assert "replaced" in [i.kind for i in items if isinstance(i, Event)]
        await client.clear("c1")
        await _collect(client, items, lambda its: any(isinstance(i, Event) and i.kind == "cleared" for i in its))


async def test_a_gateway_killed_mid_reply_resumes_on_the_other_with_no_duplicate_and_no_gap(cluster, redis_client):
    gw1, gw2 = _start(cluster, gateways=("gw1", "gw2"), DELTA_INTERVAL="0")
    user = new_user()
    states = []
    async with Client([gw1, gw2], token=token(user), device_id="lib", on_state=states.append) as client:
        await client.send("c", "streamed " + " ".join(f"word{n}" for n in range(70)), client_msg_id="m1")
        items: list = []
        await _collect(client, items, lambda its: sum(isinstance(i, Event) and i.kind == "delta" for i in its) >= 3)
        cluster.kill("gw1")  # SIGKILL: no close frame, mid-reply
        written = [f.get("kind") for _, f in await redis_client.xrange(keys.outbound(user))]
        assert "assistant" not in written, "the reply ended before the kill"
        await _collect(client, items, _final("m1"))
        assert [s.state for s in states].count("connected") == 2
        assert states[-1].url == gw2
        await client.send("c", "and then?", client_msg_id="m2")
        await _collect(client, items, _final("m2"))
    assert not any(isinstance(i, Gap) for i in items)
    ids = _ids(items)
    assert len(ids) == len(set(ids))
    assert ids == await _outbound_ids(redis_client, user)  # each event once, in order, none missing


class Proxy:
    """A TCP proxy to a gateway that can swallow what the gateway sends
    (``blackhole``) and cut every connection at once (``cut``)."""

    def __init__(self, port: int):
        self.port = port
        self.blackhole = False
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/ws"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._pairs.append((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, downstream: bool) -> None:
            try:
                while data := await src.read(65536):
                    if not (downstream and self.blackhole):
                        dst.write(data)
                        await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    def cut(self) -> None:
        for down, up in self._pairs:
            down.transport.abort()
            up.transport.abort()
        self._pairs.clear()

    async def stop(self) -> None:
        self.cut()
        assert self.server is not None
        self.server.close()


async def test_a_send_whose_accepted_was_lost_is_sent_again_and_answered_once(cluster, redis_client):
    _start(cluster)
    proxy = Proxy(cluster.services["gw"].port)
    await proxy.start()
    user = new_user()
    try:
        async with Client(proxy.url, token=token(user), device_id="lib") as client:
            proxy.blackhole = True  # the gateway's answers are lost from now on
            sending = asyncio.create_task(client.send("c", "hello", client_msg_id="m1"))
            sending.add_done_callback(lambda task: task.cancelled() or task.exception())

            async def stored() -> bool:
                entries = await redis_client.xrange(keys.outbound(user))
                return any(f.get("cmid") == "m1" and f.get("kind") == "user" for _, f in entries)
            async with asyncio.timeout(15):
                while not await stored():  # accepted and stored: its `accepted` went into the hole
                    await asyncio.sleep(0.05)
            assert not sending.done()
            proxy.blackhole = False
            proxy.cut()
            accepted = await asyncio.wait_for(sending, 15)  # resent on the next connection, same id
            items: list = []
            await _collect(client, items, _final("m1"))
    finally:
        await proxy.stop()
    entries = await redis_client.xrange(keys.outbound(user))
    users = [f for _, f in entries if f.get("kind") == "user"]
    finals = [f for _, f in entries if f.get("kind") == "assistant"]
    assert len(users) == 1 and len(finals) == 1, entries  # one message, one turn
    assert accepted == users[0]["in"]  # the answer to the resend names the entry stored the first time
    assert _ids(items) == [entry_id for entry_id, _ in entries]


async def test_a_restarted_client_resumes_from_its_state_file_exactly_and_a_lost_position_is_a_gap(
        cluster, redis_client, tmp_path):
    (url,) = _start(cluster, DELTA_INTERVAL="0")
    user = new_user()
    path = tmp_path / "state.json"
    first: list = []
    async with Client(url, token=token(user), device_id="lib", state=FileState(path)) as client:
        await client.send("c", "streamed " + " ".join(f"word{n}" for n in range(70)), client_msg_id="m1")
        await _collect(client, first, lambda its: sum(isinstance(i, Event) and i.kind == "delta" for i in its) >= 3)
        # Leave mid-reply: the last event taken was never finished (the loop did not ask for the next).
    saved = json.loads(path.read_text())
    assert saved["device_id"] == "lib" and saved["last_id"] == _ids(first)[-2]
    second: list = []
    async with Client(url, token=token(user), state=FileState(path)) as client:
        assert client.device_id == "lib"
        await _collect(client, second, _final("m1"))
    assert not any(isinstance(i, Gap) for i in second)
    seen = _ids(first)[:-1] + _ids(second)
    assert seen == await _outbound_ids(redis_client, user)

    # A position in another life of the stream: the server cannot prove nothing is missing.
    state = MemoryState(Position("other", "another-epoch", "1-0"))
    async with Client(url, token=token(user), state=state) as client:
        items: list = []
        await _collect(client, items, _final("m1"))
        assert isinstance(items[0], Gap) and items[0].epoch == client.welcome.epoch
        assert _ids(items) == seen  # the replay window, after the gap
    assert state.load().epoch == client.welcome.epoch  # the position was reset to the stream's present life


async def test_an_expired_token_is_replaced_mid_reply_and_the_close_codes_that_end_the_client(
        cluster, redis_client):
    (url,) = _start(cluster, JWT_LEEWAY="0", DELTA_INTERVAL="0")
    user = new_user()
    tokens = [token(user, ttl=2)]

    def provider() -> str:
        tokens.append(token(user))
        return tokens[-1]

    states = []
    async with Client(url, token=tokens[0], token_provider=provider, device_id="lib",
                      on_state=states.append) as client:
        # The reply is written while the token expires (closed 4004): a new token, and the rest is replayed.
        await client.send("c", "sleep:1.5 streamed " + " ".join(f"word{n}" for n in range(60)), client_msg_id="m1")
        items: list = []
        await _collect(client, items, _final("m1"))
    assert 4004 in [s.code for s in states] and len(tokens) == 2
    assert _ids(items) == await _outbound_ids(redis_client, user)

    with pytest.raises(ClientClosed) as refused:
        async with Client(url, token="not-a-token", device_id="lib"):
            pass
    assert refused.value.code == 4001
    async with Client(url, token=token(user), device_id="lib") as first:
        async with Client(url, token=token(user), device_id="lib"):  # the same device, again
            with pytest.raises(ClientClosed) as replaced:
                async with asyncio.timeout(10):
                    async for _ in first.events():
                        pass
            assert replaced.value.code == 4005
            with pytest.raises(ClientClosed):
                await first.send("c", "too late")


async def test_a_pending_interrupt_is_answered_with_resume(cluster):
    (url,) = _start(cluster, ASKING)
    user = new_user()
    async with Client(url, token=token(user), device_id="lib") as client:
        await client.send("c", "ask:1 the way", client_msg_id="m1")
        items: list = []
        await _collect(client, items, lambda its: any(isinstance(i, Event) and i.kind == "interrupt" for i in its))
        question = json.loads(items[-1].text)
        listed = await client.conversations()
        assert listed.conversations[0].pending_interrupt.id == question["id"]
        await client.resume("c", "m1", "left", interrupt_id=question["id"])
        await _collect(client, items, _final("m1"))
        assert items[-1].text.endswith('answers: ["left"]')
        with pytest.raises(RequestFailed) as again:
            await client.resume("c", "m1", "right", interrupt_id=question["id"])
        assert again.value.code == "not_interrupted"
