"""Memory held by sockets that never say ``hello`` (docs/security.md,
"Connections before and after hello").

Each socket sends the first fragment of a text message of twice
MAX_MESSAGE_SIZE zero bytes, compressed (permessage-deflate: about 2 KB on
the wire), and never the rest: the most an unauthenticated socket can ask
the gateway to hold. The gateway's limit before ``hello`` (HELLO_MAX_SIZE)
should close each with 1009 and keep the gateway's peak RSS near its idle
size."""

from __future__ import annotations

import asyncio
import struct
import time
import zlib
from typing import TYPE_CHECKING

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .harness import process_memory

if TYPE_CHECKING:
    from .scenarios import Bench

MAX_MESSAGE_SIZE = 1 << 20  # the gateway's default


def deflated_fragment(size: int) -> bytes:
    """A client's first, unfinished fragment of ``size`` zero bytes, as
    permessage-deflate sends it (RFC 7692: raw deflate, sync-flushed, the
    00 00 ff ff tail kept on a non-final fragment), masked with a zero mask."""
    encoder = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    data = encoder.compress(bytes(size)) + encoder.flush(zlib.Z_SYNC_FLUSH)
    assert len(data) < 1 << 16
    return bytes([0x40 | 0x1, 0x80 | 126]) + struct.pack("!H", len(data)) + bytes(4) + data


_status = process_memory


async def prehello(bench: Bench) -> dict:
    count = bench.scale(100, 1000)
    await bench.flush()
    # Compression on (off by default): the cheapest form of the attack.
    cluster = bench.cluster(("fanout", "f"), ("gateway", "gw"), HELLO_TIMEOUT="30", COMPRESSION="1")
    try:
        gw = cluster.services["gw"]
        await asyncio.sleep(1.0)
        before = _status(gw.process.pid)
        fragment = deflated_fragment(2 * MAX_MESSAGE_SIZE - 1)
        semaphore = asyncio.Semaphore(100)
        codes: list[int | None] = []
        start = time.monotonic()

        async def attack() -> None:
            async with semaphore:
                ws = await connect(gw.url, max_size=None)
            ws.transport.write(fragment)
            try:
                await asyncio.wait_for(ws.recv(), 20)
            except (ConnectionClosed, TimeoutError):
                pass
            codes.append(ws.close_code)
            ws.transport.abort()

        await asyncio.gather(*(attack() for _ in range(count)))
        elapsed = time.monotonic() - start
        after = _status(gw.process.pid)
    finally:
        cluster.stop()
    growth = after["VmHWM"] - before["VmRSS"]
    return {"sockets": count, "fragment_wire_bytes": len(fragment),
            "fragment_decompressed_bytes": 2 * MAX_MESSAGE_SIZE - 1,
            "gateway_rss_before_mb": round(before["VmRSS"] / 2**20, 1),
            "gateway_rss_peak_mb": round(after["VmHWM"] / 2**20, 1),
            "peak_growth_per_socket_kib": round(growth / count / 1024, 1),
            "closed_1009": codes.count(1009), "seconds": round(elapsed, 2),
            "goal": {"peak_growth_per_socket_kib": 100, "closed_1009": count},
            "met": growth / count / 1024 <= 100 and codes.count(1009) == count}
