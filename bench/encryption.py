"""What encryption at rest costs a turn: latency and CPU, with and without
``ENCRYPTION_KEYS``, early and late in a conversation.

    python -m bench.encryption [--rounds 5] [--turns 120] [--window 20]

Each round runs the pipeline (fanout, worker, gateway, the default graph) on
its own Redis twice, keys off and on, in alternating order (off-on, on-off,
...), so a slow stretch of this machine hits both sides alike. A device sends
``--turns`` messages to one conversation, one at a time; for the first
``--window`` turns (short) and the last (long: turns 101-120 by default) the
turn latency (send to reply event) and the CPU the gateway and the worker
spend per turn (``/proc/PID/task/*/schedstat``) are recorded, and Redis's (a larger
checkpoint document costs it more to parse and store). The medians over the
rounds are compared, and the median of the rounds' own differences (the two
runs of a round share the machine's state of the moment).

In-process figures isolate the sealing itself: sealing and opening one
message's text, and the worker's encoding of a turn's checkpoint document
(:func:`switchboard.worker.checkpoint_format.document`) at turn 1 and turn
``--turns`` of a conversation, keys off and on.

Figures print and go to ``docs/bench/encryption.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import empty_checkpoint

from switchboard.embedded_redis import EmbeddedRedis, free_port
from switchboard.shared.encryption import Keyring, generate_key
from switchboard.worker import checkpoint_format
from switchboard.worker.fencing import FencedRedisSaver

from .harness import Cluster, process_cpu_seconds, token
from .loadgen import LoadDevice
from .stats import percentile

OUT = Path(__file__).resolve().parents[1] / "docs" / "bench" / "encryption.json"
ENV = {"LOG_LEVEL": "INFO", "CLAIM_IDLE": "15", "LEASE_TTL": "15", "FANOUT_SWEEP": "2",
       "FANOUT_ALIVE_TTL": "3"}
TEXT = "my card is 4111 1111 1111 1111, message {i} about sailing boats and the weather"


async def _one_run(workdir: Path, keys: str | None, turns: int, window: int) -> dict:
    """One pipeline on a fresh Redis: ``turns`` sequential turns of one conversation."""
    redis = EmbeddedRedis(workdir / "redis", port=free_port())
    redis.start()
    cluster = Cluster(redis.url, workdir, env={**ENV, **({"ENCRYPTION_KEYS": keys} if keys else {})})
    try:
        cluster.start_many(("fanout", "f"), ("worker", "w"), ("gateway", "gw"), timeout=60)
        pids = {name: cluster.services[name].process.pid for name in ("gw", "w")}
        pids["redis"] = redis.process.pid
        device = LoadDevice(cluster.services["gw"].url, token(f"enc-{uuid.uuid4().hex[:8]}"), "d")
        await device.connect()
        for i in range(5):  # warm-up: imports, script loads, index creation
            await device.turn("warm", f"w{i}", "warming up")
        latencies: list[float] = []
        cpu: dict[str, list[float]] = {name: [] for name in pids}
        marks = {0, window, turns - window, turns}
        for i in range(turns + 1):
            if i in marks:
                for name, pid in pids.items():
                    cpu[name].append(process_cpu_seconds(pid))
            if i < turns:
                latencies.append(await device.turn("c", f"m{i}", TEXT.format(i=i)))
        await device.close()
    finally:
        cluster.stop()
        redis.stop()
    # cpu[name] = [at 0, at window, at turns - window, at turns]
    return {
        "latency_ms": {"short": _p50_ms(latencies[:window]), "long": _p50_ms(latencies[-window:])},
        "cpu_ms_per_turn": {
            {"gw": "gateway", "w": "worker", "redis": "redis"}[name]: {
                "short": round((c[1] - c[0]) * 1000 / window, 3), "long": round((c[3] - c[2]) * 1000 / window, 3)}
            for name, c in cpu.items()},
    }


def _p50_ms(seconds: list[float]) -> float:
    return round(percentile(seconds, 50) * 1000, 3)


def _median(runs: list[dict], *path: str) -> float:
    values = []
    for run in runs:
        value: Any = run
        for key in path:
            value = value[key]
        values.append(value)
    return round(statistics.median(values), 3)


# -- in process -------------------------------------------------------------------------


def _per_call_us(fn, n: int = 200, repeat: int = 20) -> float:
    """Microseconds per call, the best of ``repeat`` batches of ``n``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - start)
    return round(best / n * 1e6, 2)


def _pair(turn: int) -> list:
    return [HumanMessage(TEXT.format(i=turn), id=f"in-{turn}"),
            AIMessage(f"Turn {turn}. You said: {TEXT.format(i=turn)}")]


def _values(messages: list, turn: int) -> dict:
    """The default graph's state at ``turn``."""
    return {"messages": messages, "turn": turn, "keywords": {"sailing": turn, "boats": turn, "weather": turn},
            "topic": "sailing", "last_user_text": TEXT.format(i=turn), "previous_user_text": TEXT.format(i=turn - 1)}


def _document_us(keyring: Keyring, turns: int, samples: int = 200) -> dict:
    """The worker's encoding of one turn's checkpoint document at turn 1 and
    turn ``turns``, its encodings warm as while a worker holds the
    conversation: each sample encodes the previous turn's state (untimed),
    then times the state with the turn's two new messages added."""
    saver = FencedRedisSaver(redis_client=aioredis.Redis(), keyring=keyring)  # no connection is made
    config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}

    def encode(messages: list, turn: int) -> int:
        checkpoint = {**empty_checkpoint(), "channel_values": _values(messages, turn), "channel_versions": {}}
        return len(checkpoint_format.document(saver, config, checkpoint, {"source": "loop", "step": turn}).body)

    out: dict[str, Any] = {}
    messages: list = []
    for turn in range(1, turns + 1):
        previous = messages
        if turn in (1, turns):
            times = []
            for _ in range(samples):
                encode(previous, turn - 1)
                messages = previous + _pair(turn)
                start = time.perf_counter()
                size = encode(messages, turn)
                times.append(time.perf_counter() - start)
            # The least of the samples is the work itself; the median adds
            # what other processes on this machine cost it.
            out[f"turn_{turn}_us_min"] = round(min(times) * 1e6, 1)
            out[f"turn_{turn}_us_median"] = round(statistics.median(times) * 1e6, 1)
            out[f"turn_{turn}_bytes"] = size
        else:
            messages = previous + _pair(turn)
            encode(messages, turn)
    return out


def in_process(turns: int) -> dict:
    ring = Keyring([generate_key()])
    text = TEXT.format(i=1)
    sealed = ring.seal(text)
    return {
        "seal_us": _per_call_us(lambda: ring.seal(text)),
        "open_us": _per_call_us(lambda: ring.open(sealed)),
        "plain_open_us": _per_call_us(lambda: Keyring().open(text)),
        "text_bytes": len(text.encode()),
        "sealed_bytes": len(sealed),
        "checkpoint_document_us": {"off": _document_us(Keyring(), turns), "on": _document_us(ring, turns)},
    }


# -- the program -------------------------------------------------------------------------


async def run(rounds: int, turns: int, window: int, out: Path) -> dict:
    key = generate_key()
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
            for side in order:
                workdir = Path(tmp) / f"{side}-{round_}"
                workdir.mkdir()
                runs[side].append(await _one_run(workdir, key if side == "on" else None, turns, window))
                print(f"round {round_ + 1} {side}: {json.dumps(runs[side][-1])}", flush=True)
    figures: dict[str, Any] = {}
    for label, path in (("turn latency p50 (ms)", ("latency_ms",)),
                        ("gateway CPU per turn (ms)", ("cpu_ms_per_turn", "gateway")),
                        ("worker CPU per turn (ms)", ("cpu_ms_per_turn", "worker")),
                        ("Redis CPU per turn (ms)", ("cpu_ms_per_turn", "redis"))):
        figures[label] = {
            window_name: {side: _median(runs[side], *path, window_name) for side in runs}
            for window_name in ("short", "long")}
        for window_name, sides in figures[label].items():
            sides["on_minus_off"] = round(sides["on"] - sides["off"], 3)
            # The two runs of a round ran back to back: their difference
            # shares the machine's state, so its median is the steadier figure.
            paired = [_median([on], *path, window_name) - _median([off], *path, window_name)
                      for on, off in zip(runs["on"], runs["off"])]
            sides["paired_on_minus_off_median"] = round(statistics.median(paired), 3)
            sides["paired_on_minus_off"] = [round(d, 3) for d in paired]
    result = {
        "rounds": rounds, "turns": turns, "window": window,
        "windows": {"short": f"turns 1-{window}", "long": f"turns {turns - window + 1}-{turns}"},
        "graph": "switchboard.worker.graph:graph (the default, non-streaming)",
        "medians": figures, "runs": runs, "in_process": in_process(turns),
    }
    print(f"\n{'figure':<28} {'window':<14} {'off':>8} {'on':>8} {'on - off':>9} {'paired':>8}")
    for label, by_window in figures.items():
        for window_name, sides in by_window.items():
            print(f"{label:<28} {result['windows'][window_name]:<14} {sides['off']:>8.3f} {sides['on']:>8.3f} "
                  f"{sides['on_minus_off']:>+9.3f} {sides['paired_on_minus_off_median']:>+8.3f}")
    proc = result["in_process"]
    print(f"\nin process: seal {proc['seal_us']} us, open {proc['open_us']} us (a {proc['text_bytes']}-byte text, "
          f"{proc['sealed_bytes']} sealed); plain text through open {proc['plain_open_us']} us")
    for side, doc in proc["checkpoint_document_us"].items():
        print(f"checkpoint document, keys {side}: " + ", ".join(f"{k} {v}" for k, v in doc.items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.encryption", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--turns", type=int, default=120)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.turns < 2 * args.window:
        parser.error("--turns must be at least twice --window")
    asyncio.run(run(args.rounds, args.turns, args.window, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
