"""Drive a LangGraph-API-compatible server over HTTP and time its conversation turns.

A turn is one user message on an existing thread, answered by the graph in
``graph_app.py``: ``POST /threads/{id}/runs/wait`` (mode ``"wait"``) or
``POST /threads/{id}/runs/stream`` with ``stream_mode="values"`` (mode ``"stream"``, for
servers whose ``/runs/wait`` is broken -- see README). Every reply is checked: it must
quote the message just sent and carry a turn number one higher than the previous reply,
which proves the server kept the thread's state between turns.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from .errors import TurnError

ASSISTANT_ID = "chat"
MODES = ("wait", "stream")
_TURN = re.compile(r"^Turn (\d+)\. You said: \"(.*?)\"\.", re.S)
_TOPICS = ("pizza", "gardening", "astronomy", "cycling", "chess", "jazz", "volcanoes", "sailing")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by the nearest-rank method; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))
    return ordered[int(rank) - 1]


def _message(thread_no: int, turn_no: int) -> str:
    topic = _TOPICS[(thread_no + turn_no) % len(_TOPICS)]
    return f"thread {thread_no} message {turn_no}: tell me more about {topic}"


def _client(url: str, connections: int, timeout: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, trust_env=False)


async def create_thread(client: httpx.AsyncClient) -> str:
    response = await client.post("/threads", json={})
    response.raise_for_status()
    return response.json()["thread_id"]


def _final_state(body: Any) -> dict:
    """The graph's state from a run's result: langgraph-api returns it bare, langrove under "values"."""
    if not isinstance(body, dict):
        raise TurnError(f"unexpected run result: {str(body)[:200]}")
    if "__error__" in body:
        raise TurnError(f"run failed: {body['__error__']}")
    return body["values"] if isinstance(body.get("values"), dict) else body


async def _turn_wait(client: httpx.AsyncClient, thread_id: str, payload: dict) -> dict:
    response = await client.post(f"/threads/{thread_id}/runs/wait", json=payload)
    if response.status_code != 200:
        raise TurnError(f"HTTP {response.status_code}: {response.text[:200]}")
    return _final_state(response.json())


async def _turn_stream(client: httpx.AsyncClient, thread_id: str, payload: dict) -> dict:
    """Read the SSE stream to its end; the last ``values`` event is the final state."""
    last: Any = None
    event, data = "", []
    async with client.stream(
        "POST", f"/threads/{thread_id}/runs/stream", json={**payload, "stream_mode": "values"}
    ) as response:
        if response.status_code != 200:
            await response.aread()
            raise TurnError(f"HTTP {response.status_code}: {response.text[:200]}")
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and event:
                if event == "error":
                    raise TurnError(f"run failed: {' '.join(data)[:200]}")
                if event == "values":
                    last = json.loads("\n".join(data))
                event, data = "", []
    if last is None:
        raise TurnError("stream ended without a values event")
    return _final_state(last)


@dataclass
class _Conversation:
    """One thread's expectations: the next reply's turn number must exceed the last one seen."""

    thread_id: str
    thread_no: int
    last_turn: int = 0
    latencies: list[float] = field(default_factory=list)


async def _one_turn(client: httpx.AsyncClient, conv: _Conversation, turn_no: int, mode: str) -> float:
    text = _message(conv.thread_no, turn_no)
    payload = {"assistant_id": ASSISTANT_ID, "input": {"messages": [{"role": "user", "content": text}]}}
    send = _turn_wait if mode == "wait" else _turn_stream
    started = time.perf_counter()
    state = await send(client, conv.thread_id, payload)
    elapsed = time.perf_counter() - started
    messages = state.get("messages") or []
    reply = messages[-1].get("content", "") if messages and isinstance(messages[-1], dict) else ""
    match = _TURN.match(reply) if isinstance(reply, str) else None
    if match is None or match.group(2) != text:
        raise TurnError(f"wrong reply to {text!r}: {str(reply)[:200]!r}")
    turn = int(match.group(1))
    if turn <= conv.last_turn:
        raise TurnError(f"turn number went from {conv.last_turn} to {turn}: the thread's state was lost")
    conv.last_turn = turn
    return elapsed


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")


async def run_turns(
    url: str, threads: int, turns: int, *, mode: str = "wait", timeout: float = 120.0
) -> dict:
    """Throughput: ``threads`` conversations at once, each ``turns`` turns in sequence.

    Threads are created before the clock starts. A failed turn is counted in ``errors``
    (with up to five messages in ``error_samples``) and its thread carries on.
    Returns ``turns_per_s`` (successful turns / wall time), ``latencies_s`` of the
    successful turns, and their ``p50_s`` / ``p99_s``.
    """
    _check_mode(mode)
    errors: list[str] = []
    async with _client(url, threads + 2, timeout) as client:
        ids = await asyncio.gather(*(create_thread(client) for _ in range(threads)))
        conversations = [_Conversation(tid, n) for n, tid in enumerate(ids)]

        async def converse(conv: _Conversation) -> None:
            for turn_no in range(1, turns + 1):
                try:
                    conv.latencies.append(await _one_turn(client, conv, turn_no, mode))
                except (TurnError, httpx.HTTPError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        started = time.perf_counter()
        await asyncio.gather(*(converse(c) for c in conversations))
        elapsed = time.perf_counter() - started
    latencies = [lat for c in conversations for lat in c.latencies]
    return {
        "mode": mode,
        "threads": threads,
        "turns_per_thread": turns,
        "ok": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:5],
        "elapsed_s": elapsed,
        "turns_per_s": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "latencies_s": latencies,
    }


async def sequential_latency(
    url: str, turns: int, *, mode: str = "wait", timeout: float = 120.0
) -> list[float]:
    """Seconds per turn for ``turns`` turns, one at a time, on one new thread; any failure raises TurnError."""
    _check_mode(mode)
    async with _client(url, 2, timeout) as client:
        conv = _Conversation(await create_thread(client), 0)
        for turn_no in range(1, turns + 1):
            try:
                conv.latencies.append(await _one_turn(client, conv, turn_no, mode))
            except httpx.HTTPError as exc:
                raise TurnError(f"turn {turn_no}: {type(exc).__name__}: {exc}") from exc
    return conv.latencies
