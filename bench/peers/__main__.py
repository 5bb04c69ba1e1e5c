"""Smoke check: for each available peer -- install (cached), start, measure, stop, look for leftovers.

    .venv/bin/python -m bench.peers                      # all peers that can run here
    .venv/bin/python -m bench.peers --peers langhost --threads 20 --turns 20 --sequential 50
    PEER_THINK_MS=200 .venv/bin/python -m bench.peers    # the graph "thinks" 200 ms per turn

Prints, per peer: install / start / stop times, throughput (``run_turns``) and sequential
latency (``sequential_latency``) with p50 / p99, and whether anything was left running.
``--out FILE`` also writes every figure (latency lists included) as JSON.
Exits 1 if a peer failed or left something behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

from .client import MODES, percentile, run_turns, sequential_latency
from .errors import PeerError
from .servers import PEERS, available_peers, get_peer, unavailable_peers


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--peers", default="", help=f"comma-separated subset of {','.join(PEERS)} (default: all available)"
    )
    parser.add_argument(
        "--threads", type=int, default=20, help="concurrent threads for run_turns (default 20)"
    )
    parser.add_argument(
        "--turns", type=int, default=20, help="sequential turns per thread for run_turns (default 20)"
    )
    parser.add_argument(
        "--sequential", type=int, default=50, help="turns for sequential_latency (default 50)"
    )
    parser.add_argument(
        "--think-ms",
        type=float,
        default=float(os.environ.get("PEER_THINK_MS") or 0),
        help="graph think time per turn in ms (default: $PEER_THINK_MS or 0)",
    )
    parser.add_argument(
        "--n-jobs", type=int, default=10, help="N_JOBS_PER_WORKER for langgraph-api peers (default 10)"
    )
    parser.add_argument(
        "--mode", choices=("auto", *MODES), default="auto", help="turn endpoint (auto: each peer's own)"
    )
    parser.add_argument("--out", type=Path, help="also write the figures as JSON to this file")
    parser.add_argument("--keep-logs", action="store_true", help="keep each peer's logs/ after stopping it")
    parser.add_argument("-v", "--verbose", action="store_true", help="log starts, stops and installs")
    return parser.parse_args(argv)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def _smoke(name: str, args: argparse.Namespace) -> dict:
    peer = get_peer(name, think_ms=args.think_ms, n_jobs_per_worker=args.n_jobs, keep_logs=args.keep_logs)
    mode = peer.turn_mode if args.mode == "auto" else args.mode
    result: dict = {"peer": name, "mode": mode, "think_ms": args.think_ms, "ok": False}
    print(f"\n== {name}  (venv {peer.venv.path}, turns via /runs/{mode})", flush=True)
    t0 = time.perf_counter()
    installed = await peer.install()
    result["install_s"] = time.perf_counter() - t0
    print(
        f"  install   {result['install_s']:.1f}s ({'installed now' if installed else 'cached'})", flush=True
    )
    try:
        t0 = time.perf_counter()
        await peer.start()
        result["start_s"] = time.perf_counter() - t0
        print(f"  start     {result['start_s']:.1f}s  -> {peer.url}  (logs {peer.log_dir})", flush=True)

        figures = await run_turns(peer.url, args.threads, args.turns, mode=mode)
        result["throughput"] = figures
        print(
            f"  throughput {args.threads} threads x {args.turns} turns: "
            f"{figures['ok']} ok, {figures['errors']} errors "
            f"in {figures['elapsed_s']:.1f}s = {figures['turns_per_s']:.1f} turns/s  "
            f"(p50 {_ms(figures['p50_s'])}, p99 {_ms(figures['p99_s'])})",
            flush=True,
        )
        for sample in figures["error_samples"]:
            print(f"    error: {sample}")

        latencies = await sequential_latency(peer.url, args.sequential, mode=mode)
        result["sequential"] = {
            "turns": len(latencies),
            "p50_s": percentile(latencies, 50),
            "p99_s": percentile(latencies, 99),
            "latencies_s": latencies,
        }
        print(
            f"  sequential {len(latencies)} turns on one thread: p50 {_ms(percentile(latencies, 50))}, "
            f"p99 {_ms(percentile(latencies, 99))}",
            flush=True,
        )
        result["ok"] = figures["errors"] == 0
    except PeerError as exc:
        result["error"] = str(exc)
        print(f"  FAILED: {exc}", flush=True)
    finally:
        t0 = time.perf_counter()
        await peer.stop()
        result["stop_s"] = time.perf_counter() - t0
        leftovers = peer.leftovers()
        result["leftovers"] = leftovers
        print(
            f"  stop      {result['stop_s']:.1f}s; left running: {', '.join(leftovers) if leftovers else 'nothing'}",
            flush=True,
        )
    result["ok"] = result["ok"] and not leftovers
    return result


async def _main(args: argparse.Namespace) -> int:
    missing = unavailable_peers()
    for name, reason in missing.items():
        print(f"{name}: cannot run here: {reason}")
    chosen = [n.strip() for n in args.peers.split(",") if n.strip()] or available_peers()
    results = []
    for name in chosen:
        if name in missing:
            results.append({"peer": name, "ok": False, "error": f"unavailable: {missing[name]}"})
            continue
        try:
            results.append(await _smoke(name, args))
        except PeerError as exc:  # install failed: nothing was started
            print(f"  FAILED: {exc}")
            results.append({"peer": name, "ok": False, "error": str(exc)})
    print("\nsummary")
    for r in results:
        t, s = r.get("throughput"), r.get("sequential")
        figures = (
            f"{t['turns_per_s']:7.1f} turns/s  p50 {_ms(t['p50_s'])}  p99 {_ms(t['p99_s'])} | "
            f"sequential p50 {_ms(s['p50_s'])}  p99 {_ms(s['p99_s'])}"
            if t and s
            else r.get("error", "")
        )
        print(f"  {'ok  ' if r['ok'] else 'FAIL'} {r['peer']:<14} {figures}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2)
        )
        print(f"figures written to {args.out}")
    return 0 if results and all(r["ok"] for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the figures
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
