"""Before and after, interleaved: a change on a hot path, measured fairly on a
noisy machine.

    python -m bench.interleave BEFORE_DIR AFTER_DIR [--rounds 5] [--only turn_latency throughput]

BEFORE_DIR and AFTER_DIR are two checkouts, each installed (``make install``).
The scenarios run in each in turn, round after round (before, after, before,
after, ...), so a slow stretch of the machine hits both sides alike; the
medians over the rounds are compared. Each run's results.json and the summary
(``interleave.json``) go to --out.

``--cpu-turns N`` adds, to each round, :mod:`bench.cpu_per_turn` over N
turns with each checkout's own interpreter (so its own services): the CPU
each process spends per turn, which wall-clock latency on a shared machine
cannot show. ``--only`` with no scenario runs that alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

#: (scenario, path in its results, label) of the figures compared.
FIGURES = [
    ("turn_latency", ("overhead", "p50_ms"), "turn overhead p50 (ms)"),
    ("turn_latency", ("overhead", "p99_ms"), "turn overhead p99 (ms)"),
    ("throughput", ("system", "turns_per_s"), "throughput (turns/s)"),
    ("throughput", ("floor", "turns_per_s"), "floor (turns/s)"),
    *((("cpu_per_turn", ("cpu_ms_per_turn", process), f"{process} CPU (ms/turn)"))
      for process in ("gateway", "worker", "fanout", "redis")),
]

#: This suite's directory: bench.cpu_per_turn runs from here with either checkout's interpreter.
HERE = Path(__file__).resolve().parent.parent


def _command(checkout: Path, only: list[str], out: Path) -> list[str]:
    """The bench command of a checkout: ``python -m bench`` where the suite
    lives outside the package, the CLI's ``bench`` where it is older."""
    args = ["--only", *only, "--no-peers", "--no-markdown", "--out", str(out)]
    if '"switchboard.bench"' in (checkout / "pyproject.toml").read_text():
        return [str(checkout / ".venv" / "bin" / "switchboard"), "bench", *args]
    return [str(checkout / ".venv" / "bin" / "python"), "-m", "bench", *args]


def _figure(results: dict, scenario: str, path: tuple[str, ...]) -> float | None:
    value = results.get("scenarios", {}).get(scenario)
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.interleave", description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=["turn_latency", "throughput"])
    parser.add_argument("--cpu-turns", type=int, default=0, help="also measure CPU per turn over this many turns")
    parser.add_argument("--out", type=Path, default=Path("bench-results/interleave"))
    args = parser.parse_args(argv)
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for round_ in range(1, args.rounds + 1):
        for side, checkout in (("before", args.before), ("after", args.after)):
            out = args.out / f"{side}-{round_}"
            out.mkdir(parents=True, exist_ok=True)
            results: dict = {"scenarios": {}}
            if args.only:
                done = subprocess.run(_command(checkout.resolve(), args.only, out.resolve()), cwd=checkout,
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
                    return 1
                results = json.loads((out / "results.json").read_text())
            if args.cpu_turns:
                cpu_out = out / "cpu_per_turn.json"
                done = subprocess.run([str(checkout.resolve() / ".venv" / "bin" / "python"), "-m", "bench.cpu_per_turn",
                                       "--turns", str(args.cpu_turns), "--out", str(cpu_out.resolve())],
                                      cwd=HERE, capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
                    return 1
                results["scenarios"]["cpu_per_turn"] = json.loads(cpu_out.read_text())[0]
            runs[side].append(results)
            print(f"round {round_} {side}: done", flush=True)
    summary = {"rounds": args.rounds, "before": str(args.before), "after": str(args.after), "figures": {}}
    print(f"\n{'figure':<28} {'before (median)':>16} {'after (median)':>16}   per round before | after")
    for scenario, path, label in FIGURES:
        sides = {side: [_figure(r, scenario, path) for r in runs[side]] for side in runs}
        if any(v is None for values in sides.values() for v in values):
            continue
        medians = {side: statistics.median(values) for side, values in sides.items()}
        summary["figures"][label] = {"median": medians, "runs": sides}
        print(f"{label:<28} {medians['before']:>16.2f} {medians['after']:>16.2f}   "
              f"{' '.join(f'{v:.1f}' for v in sides['before'])} | {' '.join(f'{v:.1f}' for v in sides['after'])}")
    (args.out / "interleave.json").write_text(json.dumps(summary, indent=1))
    print(f"\nsummary: {args.out / 'interleave.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
