"""Many devices of one user that read every frame, in a process of their own.

An attack of many devices receiving megabytes each costs the *client* side
as much as the gateway; run in the test's own process it would stall the
bystander the test measures there. So the devices run here::

    python -m tests.support.sinks URL TOKEN DEVICES EVENTS TIMEOUT

They connect, print ``ready``, read until every device has ``EVENTS``
events (or ``TIMEOUT`` seconds pass), then print one JSON line: for each
device the ids of the events it got, in order.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys

from websockets.asyncio.client import connect

_EVENT_ID = re.compile(rb'^\{"type":"event","id":"([0-9]+-[0-9]+)"')


async def _device(url: str, token: str, device: str, events: int, ids: list[str], ready: asyncio.Event) -> None:
    # The client offers permessage-deflate, as browsers do: whether it is used
    # is the gateway's choice (the extension header is reported).
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token, "device_id": device}))
        await ws.recv()  # welcome
        if ws.response.headers.get("Sec-WebSocket-Extensions"):
            ids.append("compressed")
        ready.set()
        while len(ids) < events:
            data = await ws.recv(decode=False)
            match = _EVENT_ID.match(data[:80])
            if match:
                ids.append(match[1].decode())


async def main(url: str, token: str, devices: int, events: int, timeout: float) -> None:
    ids: list[list[str]] = [[] for _ in range(devices)]
    readies = [asyncio.Event() for _ in range(devices)]
    tasks = [asyncio.create_task(_device(url, token, f"sink-{n}", events, ids[n], readies[n]))
             for n in range(devices)]
    await asyncio.gather(*(r.wait() for r in readies))
    print("ready", flush=True)
    await asyncio.wait(tasks, timeout=timeout)
    for task in tasks:
        task.cancel()
    print(json.dumps(ids), flush=True)


if __name__ == "__main__":
    url, token, devices, events, timeout = sys.argv[1:6]
    asyncio.run(main(url, token, int(devices), int(events), float(timeout)))
