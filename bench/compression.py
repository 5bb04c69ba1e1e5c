"""What permessage-deflate costs the gateway: CPU seconds per MB delivered.

    python -m bench.compression [--devices 50] [--messages 10] [--size 1000000]

One user with ``--devices`` connections (each offering permessage-deflate, as
browsers do) receives ``--messages`` events of ``--size`` characters of
English-like text (which compresses well: the case most favourable to
compression), once with the gateway's ``COMPRESSION`` off and once on. The
gateway process's CPU time (user + system, from ``/proc/PID/stat``) over each
delivery is divided by the bytes delivered (devices x messages x size).
Figures print and go to ``docs/bench/compression.json``.

websockets compresses each frame once per connection (every connection has
its own deflate context), so with compression on the gateway's CPU grows
with the number of a user's devices times the bytes of each event; with it
off the gateway encodes an event once and only copies it to each socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from switchboard.embedded_redis import EmbeddedRedis, free_port
from switchboard.gateway.store import GatewayStore
from switchboard.shared.settings import StreamSettings

from .harness import Cluster, token

OUT = Path(__file__).resolve().parents[1] / "docs" / "bench" / "compression.json"
_WORDS = ("the", "assistant", "message", "reply", "conversation", "device", "gateway", "stream",
          "delivery", "user", "network", "phone", "tablet", "event", "order", "again", "with", "without")


def _text(size: int, seed: int) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _device(url: str, user: str, n: int, messages: int, ready: asyncio.Event,
                  counts: list[int], extensions: list[str]) -> None:
    async with connect(url, max_size=None) as ws:  # offers permessage-deflate by default
        await ws.send(json.dumps({"type": "hello", "token": token(user), "device_id": f"d{n}"}))
        await ws.recv()
        extensions.append(ws.response.headers.get("Sec-WebSocket-Extensions") or "")
        ready.set()
        while counts[n] < messages:
            if (await ws.recv(decode=False)).startswith(b'{"type":"event"'):
                counts[n] += 1


async def _one(cluster: Cluster, compression: bool, devices: int, messages: int, size: int) -> dict:
    name = f"gw-{'on' if compression else 'off'}"
    gw = cluster.start("gateway", name, COMPRESSION="1" if compression else "0",
                       MAX_DEVICES_PER_USER=str(devices + 10))
    user = f"bench-{name}-{os.getpid()}"
    counts = [0] * devices
    extensions: list[str] = []
    readies = [asyncio.Event() for _ in range(devices)]
    tasks = [asyncio.create_task(_device(gw.url, user, n, messages, readies[n], counts, extensions))
             for n in range(devices)]
    await asyncio.gather(*(r.wait() for r in readies))
    client = aioredis.Redis.from_url(cluster.redis_url, decode_responses=True)
    store = GatewayStore(client, StreamSettings())
    await store.load()
    cpu0, t0 = _cpu_seconds(gw.process.pid), time.monotonic()
    for i in range(messages):
        await store.accept(user, "sender", "c", f"m{i}", _text(size, i))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=600)
    cpu, wall = _cpu_seconds(gw.process.pid) - cpu0, time.monotonic() - t0
    await client.aclose()
    cluster.kill(name, 15)
    mb = devices * messages * size / 1e6
    return {"compression": compression, "negotiated": sorted(set(extensions)), "devices": devices,
            "messages": messages, "size": size, "mb_delivered": round(mb, 1),
            "gateway_cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "gateway_cpu_s_per_mb": round(cpu / mb, 4)}


async def run(devices: int, messages: int, size: int, out: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        redis = EmbeddedRedis(Path(tmp) / "redis", port=free_port())
        redis.start()
        cluster = Cluster(redis.url, Path(tmp))
        try:
            cluster.start("fanout", "f")
            off = await _one(cluster, False, devices, messages, size)
            on = await _one(cluster, True, devices, messages, size)
        finally:
            cluster.stop()
            redis.stop()
    result = {"off": off, "on": on,
              "cpu_ratio_on_over_off": round(on["gateway_cpu_s"] / max(off["gateway_cpu_s"], 0.01), 1)}
    for row in (off, on):
        print(f"compression {'on ' if row['compression'] else 'off'}: {row['mb_delivered']} MB to "
              f"{devices} devices in {row['wall_s']} s; gateway CPU {row['gateway_cpu_s']} s = "
              f"{row['gateway_cpu_s_per_mb'] * 1000:.2f} ms per MB delivered (negotiated: {row['negotiated']})")
    print(f"compression on costs the gateway {result['cpu_ratio_on_over_off']}x the CPU of compression off")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compression", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    asyncio.run(run(args.devices, args.messages, args.size, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
