"""`make bench` / `python -m bench`: run the scenarios, write figures.

    python -m bench [--quick] [--only NAME ...] [--out DIR]    (from the repository root)

Results go to DIR/results.json, DIR/*.png, and (unless --quick) BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from switchboard.embedded_redis import EmbeddedRedis, free_port

from . import report
from .scenarios import SCENARIOS, Bench

#: Scenarios ``--quick`` leaves out unless named with ``--only``.
FULL_ONLY = {"cluster_scaling"}


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_mb": mem, "python": platform.python_version(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


async def amain(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
        report.plots(results, out)
        Path(args.markdown).write_text(report.markdown(results, out))
        print(f"wrote {args.markdown} from {out / 'results.json'}")
        return results
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))  # Redis data and service logs
    redis = None
    url = args.redis_url  # never REDIS_URL from the environment: the suite empties the Redis it uses
    if not url:
        redis = EmbeddedRedis(workdir / "redis", port=free_port())
        redis.start()
        url = redis.url
    results: dict = {"machine": machine(), "quick": args.quick, "scenarios": {}}
    previous = out / "results.json"
    if args.only and previous.exists():
        # Re-running some scenarios keeps the others' figures (each says when it ran).
        results["scenarios"] = json.loads(previous.read_text()).get("scenarios", {})
    try:
        bench = Bench(url, workdir, args.quick)
        # --quick leaves out what starts a Redis Cluster (a minute, for figures
        # a smoke run cannot give): name it with --only to run it.
        names = args.only or [n for n in SCENARIOS if not (args.quick and n in FULL_ONLY)]
        if args.peers and "peers" not in names:
            names.append("peers")
        for name in names:
            started = time.monotonic()
            print(f"== {name}", flush=True)
            try:
                if name == "peers":
                    from .peers_scenario import peers

                    value = await peers(bench)
                else:
                    value = await SCENARIOS[name](bench)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
                value = {"error": f"{type(exc).__name__}: {exc}", "met": False}
            value["wall_s"] = round(time.monotonic() - started, 1)
            value["ran_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            results["scenarios"][name] = value
            print(json.dumps({k: v for k, v in value.items() if k != "series_ms"}, indent=1)[:2000], flush=True)
    finally:
        if redis is not None:
            redis.stop()
    (out / "results.json").write_text(json.dumps(results, indent=2))
    report.plots(results, out)
    if not args.quick and not args.no_markdown:
        Path(args.markdown).write_text(report.markdown(results, out))
        print(f"wrote {args.markdown}")
    print(f"results: {out / 'results.json'}")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny scale: checks the suite works, not the numbers")
    parser.add_argument("--only", nargs="*", choices=[*SCENARIOS, "peers"], help="run only these scenarios")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=None,
                        help="also run the peer servers (default: on unless --quick)")
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--redis-url", help="use this Redis (it is FLUSHALLed!) instead of an embedded one")
    parser.add_argument("--markdown", default="BENCHMARKS.md")
    parser.add_argument("--no-markdown", action="store_true", help="do not rewrite BENCHMARKS.md")
    parser.add_argument("--report-only", action="store_true", help="rewrite plots and BENCHMARKS.md from results.json")
    args = parser.parse_args(argv)
    if args.peers is None:
        args.peers = not args.quick and not args.only
    return args


def main(argv: list[str] | None = None) -> int:
    results = asyncio.run(amain(parse_args(argv)))
    return 1 if any("error" in v for v in results["scenarios"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
