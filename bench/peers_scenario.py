"""Scenario 3: Switchboard next to the LangGraph servers people self-host,
same graph (bench/peers/graph_app.py is a copy of the default graph), same
machine, same run: 20 concurrent threads x 20 turns, then sequential turns."""

from __future__ import annotations

from typing import Any

from .peers import available_peers, get_peer, run_turns, sequential_latency, unavailable_peers
from .scenarios import Bench, _closed_loop, _user
from .harness import token
from .loadgen import LoadDevice
from .stats import summary_ms

THREADS, TURNS, SEQUENTIAL = 20, 20, 50


async def _ours(bench: Bench) -> dict[str, Any]:
    await bench.flush()
    cluster = bench.cluster(("fanout", "f"), ("worker", "w"), ("gateway", "gw"))
    try:
        url = cluster.services["gw"].url
        result = await _closed_loop([url], THREADS, TURNS)
        device = LoadDevice(url, token(_user("seq")), "d")
        await device.connect()
        await device.turn("warm", "w", "warm")
        latencies = [await device.turn("c", f"s{i}", f"message {i} about sailing") for i in range(SEQUENTIAL)]
        await device.close()
    finally:
        cluster.stop()
    result["sequential"] = summary_ms(latencies)
    return result


async def peers(bench: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {"threads": THREADS, "turns": TURNS, "sequential_turns": SEQUENTIAL, "peers": {}}
    out["peers"]["switchboard"] = await _ours(bench)
    for name, reason in unavailable_peers().items():
        out["peers"][name] = {"error": f"cannot run here: {reason}"}
    for name in available_peers():
        try:
            async with get_peer(name) as peer:
                figures = await run_turns(peer.url, THREADS, TURNS, mode=peer.turn_mode)
                sequential = await sequential_latency(peer.url, SEQUENTIAL, mode=peer.turn_mode)
            out["peers"][name] = {
                "turns_per_s": round(figures["turns_per_s"], 1),
                "ok": figures.get("ok"), "errors": figures.get("errors"),
                "latency": summary_ms(figures.get("latencies_s", [])),
                "sequential": summary_ms(sequential),
                "endpoint": peer.turn_mode,
            }
        except Exception as exc:  # noqa: BLE001 - report a peer that cannot run; never hide it
            out["peers"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    ours = out["peers"]["switchboard"]
    others = {k: v for k, v in out["peers"].items() if k != "switchboard" and "turns_per_s" in v}
    if others:
        best_tp = max(v["turns_per_s"] for v in others.values())
        best_p50 = min(v["sequential"]["p50_ms"] for v in others.values())
        out["throughput_ratio"] = round(ours["turns_per_s"] / best_tp, 2)
        out["latency_ratio"] = round(ours["sequential"]["p50_ms"] / best_p50, 3)
        out["met_throughput"] = out["throughput_ratio"] >= 4.0
        out["met_latency"] = out["latency_ratio"] <= 0.5
        out["met"] = out["met_throughput"] and out["met_latency"]
    else:
        out["met"] = None
    return out
