"""The fuzz session: generated hostile input against a running gateway while a
second user is measured, then the checks. Used by tests/integration/test_fuzz.py
(a fixed plan) and by ``python -m tests.fuzz`` (rounds of it for a duration).

Usage::

    python -m tests.fuzz --duration 300 --out fuzz-results.json [--seed 1]

It starts its own embedded Redis and a fanout, a gateway and a worker (as
``bench/harness.py`` does), prints the inputs tried per category and every
failure, and writes a JSON summary. Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import Cluster, Service, token
from switchboard.embedded_redis import EmbeddedRedis, free_port
from tests.support.bystander import Bystander
from tests.support.client import Device

from .generators import GENERATORS, Plan, cases
from .runner import Fuzzer, Tally

#: The gateway's frame limit in fuzz runs: small enough that oversized frames
#: are cheap to send, large enough for 100,000 nested arrays.
MAX_MESSAGE_SIZE = 256 * 1024
#: Settings of the services in a fuzz run (on top of bench.harness.FAST_ENV).
FUZZ_ENV = {"MAX_MESSAGE_SIZE": str(MAX_MESSAGE_SIZE)}

#: Lines of a gateway log that mean a frame was not handled as designed.
LOG_PROBLEMS = ("Traceback", "frame handling failed", "connection handler failed",
                "Task exception was never retrieved", "opening handshake failed")


def plan(after: int, before: int, *, heavy: int | None = None) -> Plan:
    """``after``/``before`` inputs per category; ``heavy`` (for the categories
    whose inputs are large or end the connection) defaults to a fifth."""
    heavy = max(1, after // 5) if heavy is None else heavy
    costly = {"oversized": heavy, "deep_nesting": heavy, "invalid_utf8": heavy, "broken_framing": heavy}
    return Plan(after={c: costly.get(c, after) for c in GENERATORS},
                before={c: min(before, costly.get(c, before)) for c in GENERATORS})


def log_problems(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(p in line for p in LOG_PROBLEMS)]


@dataclass
class Result:
    tally: Tally
    bystander: Bystander
    alive: bool
    log_problems: list[str]
    reply_after: dict | None  #: the reply to a normal send after the fuzzing
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        f, before = self.bystander.figures, self.bystander.baseline
        return {
            **self.tally.to_json(),
            "gateway_alive": self.alive,
            "gateway_log_problems": self.log_problems[:20],
            "reply_after_fuzzing": self.reply_after is not None,
            "bystander": {"probe": f.probe, "probes": len(f.latencies_ms), "failures": f.failures[:5],
                          "p50_ms": round(f.percentile(0.5), 1), "p99_ms": round(f.percentile(0.99), 1),
                          "baseline_p99_ms": round(before.percentile(0.99), 1)},
        }


async def session(gateway: Service, plans: list[tuple[int, Plan]], *, until: float | None = None) -> Result:
    """Run ``(seed, plan)`` rounds against ``gateway`` while a bystander pings."""
    fuzzer = Fuzzer(gateway.url, token)
    async with Bystander(gateway.url, token(f"bystander-{uuid.uuid4().hex[:8]}"), probe="ping") as bystander:
        for seed, p in plans:
            if until is not None and time.monotonic() >= until:
                break
            await fuzzer.run(cases(seed, p, MAX_MESSAGE_SIZE, token(f"fuzz-{seed}")), until=until)
    alive = gateway.process.poll() is None
    reply = None
    if alive:
        device = Device(gateway.url, token(f"after-{uuid.uuid4().hex[:8]}"), "after")
        await device.connect()
        await device.send("after-fuzzing", "m1", "still there?")
        reply = await device.wait_reply("m1", timeout=20)
        await device.close()
    return Result(fuzzer.tally, bystander, alive, log_problems(gateway.log_text()), reply)


def start_services(cluster: Cluster) -> Service:
    cluster.start_many(("fanout", "fuzz-fanout"), ("gateway", "fuzz-gw"), ("worker", "fuzz-worker"), **FUZZ_ENV)
    return cluster.services["fuzz-gw"]


#: One round of the standalone run (about 25 s on 2 busy cores).
ROUND = plan(after=200, before=25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of fuzzing (default 300)")
    parser.add_argument("--out", type=Path, default=Path("fuzz-results.json"), help="the JSON summary")
    parser.add_argument("--seed", type=int, default=1, help="round r uses seed SEED*100000+r")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="switchboard-fuzz-") as tmp:
        workdir = Path(tmp)
        redis = EmbeddedRedis(workdir / "redis", port=free_port())
        redis.start()
        cluster = Cluster(redis.url, workdir)
        try:
            gateway = start_services(cluster)
            until = time.monotonic() + args.duration
            rounds = [(args.seed * 100_000 + r, ROUND) for r in range(1_000_000)]
            result = asyncio.run(session(gateway, rounds, until=until))
        finally:
            cluster.stop()
            redis.stop()

    print(result.tally.table())
    summary = result.to_json()
    print(f"gateway alive: {result.alive}; log problems: {len(result.log_problems)}; "
          f"normal send answered after: {result.reply_after is not None}")
    for line in result.log_problems[:10]:
        print(f"  log: {line}")
    try:
        result.bystander.check()
        summary["bystander_ok"] = True
    except AssertionError as exc:
        print(f"bystander: {exc}")
        summary["bystander_ok"] = False
    ok = (result.tally.failed == 0 and result.alive and not result.log_problems
          and result.reply_after is not None and summary["bystander_ok"])
    summary["ok"] = ok
    summary["duration"] = args.duration
    summary["seed"] = args.seed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary written to {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
