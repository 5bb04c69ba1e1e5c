"""Batched sends: the websockets compatibility check, and N frames in one
write reaching a real websockets client over a real loopback socket."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import Protocol

from switchboard.gateway import wsbatch
from switchboard.gateway.wsbatch import IncompatibleWebsockets, check_connection, incompatibilities, send_texts


def test_the_installed_websockets_is_supported():
    assert incompatibilities(websockets.__version__, Connection, Protocol) == []


@pytest.mark.parametrize("version", ["14.0", "15.0.1", "17.4", "17.9.dev3+gabc1234"])
def test_versions_in_the_tested_range_pass(version):
    assert incompatibilities(version, Connection, Protocol) == []


@pytest.mark.parametrize("version", ["13.1", "18.0", "19.2", "2.0", "unknown"])
def test_versions_outside_the_tested_range_are_refused(version):
    (problem,) = incompatibilities(version, Connection, Protocol)
    assert version in problem


def test_missing_internals_are_named():
    class OldConnection:  # no send_context
        pass

    class OldProtocol:
        def send_text(self, data: bytes) -> None: ...

        data_to_send = None  # present, but not a method

    problems = incompatibilities("17.4", OldConnection, OldProtocol)
    here = OldConnection.__module__
    assert problems == [f"{here}.OldConnection.send_context is missing", f"{here}.OldProtocol.data_to_send is missing"]


def test_a_connection_without_its_transport_is_refused():
    class Unconnected:
        protocol = object()

    with pytest.raises(IncompatibleWebsockets, match=r"Connection\.transport is missing") as raised:
        check_connection(Unconnected())  # type: ignore[arg-type]
    assert isinstance(raised.value, ImportError)  # what an incompatible import raises, too
    assert websockets.__version__ in str(raised.value)


async def test_n_frames_arrive_in_order_as_text_messages_from_one_write():
    frames = [f'{{"type":"event","n":{i},"text":"h\u00e9llo {i}"}}'.encode() for i in range(300)]
    writes: list[int] = []
    sent = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        check_connection(ws)
        write = ws.transport.write

        def counting(data: bytes) -> None:
            writes.append(len(data))
            write(data)

        ws.transport.write = counting  # type: ignore[method-assign]
        await send_texts(ws, frames)
        ws.transport.write = write  # type: ignore[method-assign]
        sent.set_result(None)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as client:
            received = [await asyncio.wait_for(client.recv(), 5) for _ in frames]
            await sent
    assert received == [f.decode() for f in frames]  # str: text messages, in order
    assert len(writes) == 1  # all 300 frames in one system call


async def test_sending_on_a_closed_connection_raises_connection_closed():
    result = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        await ws.close()
        try:
            await send_texts(ws, [b'{"type":"pong"}'])
        except ConnectionClosed as exc:
            result.set_result(exc)
        else:
            result.set_result(None)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as client:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(client.recv(), 5)
    assert isinstance(await asyncio.wait_for(result, 5), ConnectionClosed)



def test_importing_with_an_unsupported_websockets_fails_loudly(monkeypatch):
    monkeypatch.setattr(websockets, "__version__", "18.0")
    spec = importlib.util.spec_from_file_location("wsbatch_under_18", wsbatch.__file__)
    with pytest.raises(ImportError, match=r"websockets 18\.0: version 18\.0 is outside the tested range"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 1 << 20])
def test_frames_built_here_are_the_bytes_websockets_builds(length):
    from websockets.frames import Frame, Opcode

    payload = b"x" * length
    assert wsbatch.text_header(length) + payload == Frame(Opcode.TEXT, payload).serialize(mask=False)


async def test_compressed_connections_still_go_through_the_protocol():
    """With permessage-deflate negotiated the frames must be compressed:
    the protocol builds them."""
    frames = [('{"type":"event","text":"' + "abc " * 5000 + '"}').encode() for _ in range(3)]

    async def handler(ws: ServerConnection) -> None:
        assert ws.protocol.extensions  # negotiated
        await send_texts(ws, frames)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression="deflate") as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as client:
            received = [await asyncio.wait_for(client.recv(), 5) for _ in frames]
    assert received == [f.decode() for f in frames]


async def _close_code_seen(how: str) -> int:
    """The close code :func:`wsbatch.close_code` gives once the handler's
    connection ended ``how``, over a real loopback socket."""
    seen = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        if how == "server":
            await ws.close(4005, "too many")
        else:
            with contextlib.suppress(ConnectionClosed):
                await ws.recv()
        seen.set_result(wsbatch.close_code(ws))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = await connect(f"ws://127.0.0.1:{port}")
        if how == "client":
            await client.close(3001, "bye")
        elif how == "lost":
            client.transport.abort()  # no close frame: the TCP connection just ends
        code = await asyncio.wait_for(seen, 5)
        await client.close()
    return code


@pytest.mark.parametrize("how, code", [("server", 4005), ("client", 3001), ("lost", 1006)])
async def test_the_close_code_is_the_side_that_closed_first(how, code):
    assert await _close_code_seen(how) == code
