"""The chaos run: real processes, real Redis, many devices, faults injected
while the load runs; then an invariant check.

    python -m tests.chaos --duration 120 --users 12 --devices 3 --seed 1

Starts Redis (AOF, appendfsync always) unless REDIS_URL is set (then the Redis
faults are skipped), 2 gateways, 2 workers, 2 fanouts, and drives the load.
Faults: kill -9 and SIGTERM of each service kind (each is restarted), client
drops without a close frame, reconnect storms, resends of accepted messages,
a device reinstalled (it comes back as a new device), a Redis restart and a
Redis pause (SIGSTOP/SIGCONT). It prints a summary, writes it as JSON, and
exits 1 on any violation.

With ``--redis-cluster`` the services run on a Redis Cluster of three
masters with a replica each (bench/redis_cluster.py, three work
shards), and the Redis faults are a master killed with ``kill -9`` (its
replica promoted; it comes back as a replica) and a user's slot moved to
another master while the load runs. Before the kill the master's writes
are paused and its replica caught up (``CLIENT PAUSE WRITE``, ``WAIT``): what
an asynchronous replica can miss is docs/guarantees.md's, and is tested
apart; here every acknowledged write must survive.

Delivery delay: every event must reach each device connected meanwhile
within ``--max-delay`` seconds (default 5) of its commit. The fanouts run with
FANOUT_SWEEP above that bound, so an event that the live path stalls on and
only the sweep delivers is a violation, not hidden by the sweep. The bound
counts from the end of the run's own outages: a Redis pause or restart, and
after a fanout is killed with kill -9, the time until its liveness key
(FANOUT_ALIVE_TTL, above FANOUT_SWEEP because the sweep renews it) has
expired and the gateways have seen it (their monitor's interval).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis.asyncio as aioredis
from langgraph.checkpoint.redis.aio import AsyncRedisSaver
from redis.exceptions import RedisError

from bench.redis_cluster import RedisClusterSet
from switchboard.embedded_redis import EmbeddedRedis, free_port
from switchboard.gateway.hub import MONITOR_INTERVAL
from switchboard.shared import acl, keys
from switchboard.shared.checkpoints import setup_saver
from switchboard.shared.connection import make_client
from switchboard.shared.settings import RedisSettings
from tests.support.cluster import Cluster, token

from . import checker
from .client import CANCEL_SHARE, EDIT_SHARE, ChaosUser, Stats, answer_for, now_ms

GRAPH = "tests.support.graphs:slow"
FANOUT_SWEEP = 10.0  #: above the delay bound: a stall that only the sweep heals is seen
FANOUT_ALIVE_TTL = 15.0  #: renewed by each sweep; covers a sweep delayed by a Redis pause
REPLAY_WINDOW = 40  #: below the users' stream lengths, so a reinstalled device gets a window
SERVICE_ENV = {
    "GRAPH": GRAPH,
    "OUTBOUND_MAXLEN": "1000000",  # the checker needs the whole stream
    "SHUTDOWN_GRACE": "3",
    "MAX_ATTEMPTS": "20",
    "TURN_TIMEOUT": "30",
    "LOG_LEVEL": "INFO",
    "FANOUT_SWEEP": str(FANOUT_SWEEP),
    "FANOUT_ALIVE_TTL": str(FANOUT_ALIVE_TTL),
    "REPLAY_WINDOW": str(REPLAY_WINDOW),
}
SERVICE_KINDS = ("gateway", "worker", "fanout")


class Chaos:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.rng = random.Random(args.seed)
        self.workdir = workdir
        self.redis: EmbeddedRedis | None = None
        self.redis_cluster: RedisClusterSet | None = None
        self.cluster: Cluster | None = None
        self.faults: Counter = Counter()
        self.stats = Stats()
        self.users: list[ChaosUser] = []
        self.memory: dict[str, list[tuple[float, int]]] = {}
        self.serial = 0
        self.redis_paused = False
        self.slow_stops: list[str] = []
        self._plan: list[str] | None = None  #: fault kinds still to inject once each
        self.outages: list[tuple[int, int]] = []  #: wall-clock ms spans in which delivery may stop
        self.timeline: list[tuple[int, str]] = []  #: (wall-clock ms, fault) as injected, for the summary

    # -- processes -------------------------------------------------------------------

    def start_redis(self) -> str:
        if self.args.redis_cluster:
            self.redis_cluster = RedisClusterSet(self.workdir / "redis-cluster")
            self.redis_cluster.start()
            return self.redis_cluster.operator_url
        if os.environ.get("REDIS_URL"):
            return os.environ["REDIS_URL"]
        self.redis = EmbeddedRedis(self.workdir / "redis", port=free_port(), appendfsync="always")
        self.redis.start()
        return self.redis.url

    def live(self, kind: str) -> list[str]:
        assert self.cluster is not None
        return [name for name, s in self.cluster.services.items() if s.kind == kind and s.process.poll() is None]

    def urls(self) -> list[str]:
        assert self.cluster is not None
        urls = [self.cluster.services[n].url for n in self.live("gateway")]
        return urls or ["ws://127.0.0.1:1/ws"]  # none up right now: connecting fails and retries

    async def spawn(self, kind: str) -> None:
        assert self.cluster is not None
        self.serial += 1
        env = {**SERVICE_ENV, **({"WORK_SHARDS": "3"} if self.redis_cluster is not None else {})}
        await asyncio.to_thread(self.cluster.start, kind, f"{kind}-{self.serial}", 60.0, True, **env)

    # -- faults ----------------------------------------------------------------------

    def _fault_kinds(self) -> list[str]:
        kinds = [f"{sig}:{service}" for sig in ("kill9", "sigterm") for service in SERVICE_KINDS]
        kinds += ["drop", "storm", "dup_resend", "reinstall"]
        if self.redis is not None:
            kinds += ["redis_restart", "redis_pause"]
        if self.redis_cluster is not None:
            kinds += ["master_kill", "slot_move"]
        return kinds

    async def fault(self) -> None:
        """Every kind of fault once, in a seeded order; then at random."""
        if self._plan is None:
            self._plan = self._fault_kinds()
            self.rng.shuffle(self._plan)
        kind = self._plan.pop() if self._plan else self.rng.choice(self._fault_kinds() + ["drop", "dup_resend"])
        self.timeline.append((now_ms(), kind))
        service = None
        if ":" in kind:
            kind, service = kind.split(":")
        if kind in ("kill9", "sigterm"):
            names = self.live(service)
            if not names:
                return
            name = self.rng.choice(names)
            sig = signal.SIGKILL if kind == "kill9" else signal.SIGTERM
            if kind == "kill9" and service == "fanout":
                await self._fanout_outage(name)
            if not await asyncio.to_thread(self.cluster.kill, name, sig, 30.0):
                self.slow_stops.append(name)
            self.faults[f"{kind}:{service}"] += 1
            await self.spawn(service)
        elif kind == "drop":
            devices = [d for u in self.users for d in u.devices if d.connected.is_set()]
            for device in self.rng.sample(devices, min(len(devices), self.rng.randint(1, 4))):
                device.drop()
            self.faults["client_drop"] += 1
        elif kind == "storm":
            for user in self.users:
                for device in user.devices:
                    device.drop()
            self.faults["reconnect_storm"] += 1
        elif kind == "reinstall":  # a connected device if any: it comes back at once, as a new device
            devices = [d for u in self.users for d in u.devices]
            connected = [d for d in devices if d.connected.is_set()]
            self.rng.choice(connected or devices).reinstall()
            self.faults["reinstall"] += 1
        elif kind == "dup_resend":
            for user in self.rng.sample(self.users, min(3, len(self.users))):
                await user.resend_accepted()
            self.faults["resend_accepted"] += 1
        elif kind == "redis_restart":
            assert self.redis is not None
            begin = now_ms()
            await asyncio.to_thread(self.redis.stop)
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            await asyncio.to_thread(self.redis.start)
            self.outages.append((begin, now_ms()))
            self.faults["redis_restart"] += 1
        elif kind == "redis_pause":
            assert self.redis is not None and self.redis.process is not None
            begin = now_ms()
            self.redis.process.send_signal(signal.SIGSTOP)
            self.redis_paused = True
            await asyncio.sleep(self.rng.uniform(0.5, 2.5))
            self.redis.process.send_signal(signal.SIGCONT)
            self.redis_paused = False
            self.outages.append((begin, now_ms()))
            self.faults["redis_pause"] += 1

        elif kind == "master_kill":
            begin = now_ms()
            await asyncio.to_thread(self._kill_a_master)
            self.outages.append((begin, now_ms()))
            self.faults["master_kill"] += 1
        elif kind == "slot_move":
            rc = self.redis_cluster
            assert rc is not None
            user = self.rng.choice(self.users).name
            slot = rc.keyslot(keys.outbound(user))
            source = rc.owner(slot)
            target = self.rng.choice([m for m in rc.masters() if m is not source])
            await asyncio.to_thread(rc.move_slot, slot, target, batch=5, pause=0.05)
            self.faults["slot_move"] += 1

    def _kill_a_master(self) -> None:
        """``kill -9`` of a random master once its replica has every write it
        acknowledged (module notes); its replica takes over, and the old master
        comes back as the new one's replica."""
        rc = self.redis_cluster
        assert rc is not None
        master = self.rng.choice(rc.masters())
        with master.client(username=acl.ADMIN.name, password=rc.passwords()["admin"]) as direct:
            direct.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
            direct.execute_command("WAIT", 1, 5000)
        rc.kill(master)
        rc.wait_failover(master)
        rc.restart(master)

    async def _fanout_outage(self, name: str) -> None:
        """A fanout about to be killed with kill -9: the connections attached
        to it get no events until its liveness key expires and the gateways'
        monitor sees it gone. Which users those are depends on the live
        fanouts when each connection attached (a connection stays on its
        fanout while that one lives), so the outage counts for every user."""
        begin = now_ms()
        client = _client(self.cluster.redis_url, decode=False)
        try:
            left = await client.pttl(keys.fanout_alive(name))
        except (RedisError, OSError):
            left = -1
        finally:
            await client.aclose()
        if left < 0:
            left = int(FANOUT_ALIVE_TTL * 1000)
        self.outages.append((begin, begin + left + int(MONITOR_INTERVAL * 1000)))

    # -- load ------------------------------------------------------------------------

    async def load(self, until: float) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.args.rate
        while loop.time() < until:
            user = self.rng.choice(self.users)
            await user.new_message()
            if self.rng.random() < CANCEL_SHARE:
                await self.rng.choice(self.users).cancel()
            if self.rng.random() < EDIT_SHARE:
                await self.rng.choice(self.users).edit()
            await asyncio.sleep(interval * self.rng.uniform(0.5, 1.5))

    async def resender(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for user in self.users:
                await user.resend_due()
                await user.answer_due()
            await asyncio.sleep(0.5)

    async def sample_memory(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for name, service in list(self.cluster.services.items()):
                if service.process.poll() is None:
                    rss = _rss(service.process.pid)
                    if rss:
                        self.memory.setdefault(name, []).append((time.monotonic(), rss))
            await asyncio.sleep(1.0)

    # -- the run ---------------------------------------------------------------------

    async def run(self) -> dict:
        url = self.start_redis()
        rc = self.redis_cluster
        tiers = {t: rc.tier_login(t) for t in acl.SERVICE_TIERS} if rc is not None else None
        self.cluster = Cluster(url, self.workdir, tiers=tiers)
        started = time.monotonic()
        for kind in SERVICE_KINDS:
            for _ in range(2):
                await self.spawn(kind)
        for i in range(self.args.users):
            name = f"chaos-{self.args.seed}-{i}"
            self.users.append(ChaosUser(name, token(name, ttl=86_400), self.args.devices, self.urls,
                                        random.Random(self.rng.random()), self.stats))
        devices = [asyncio.create_task(d.run()) for u in self.users for d in u.devices]
        stop = asyncio.Event()
        helpers = [asyncio.create_task(self.resender(stop)), asyncio.create_task(self.sample_memory(stop))]
        loop = asyncio.get_running_loop()
        until = loop.time() + self.args.duration
        load = asyncio.create_task(self.load(until))
        await asyncio.sleep(min(3.0, self.args.duration / 10))
        while loop.time() < until:
            await self.fault()
            await asyncio.sleep(self.rng.uniform(0.5, 2) * self.args.fault_interval)
        await load
        quiet = await self.quiesce(url)
        stop.set()
        for device in (d for u in self.users for d in u.devices):
            await device.stop()
        await asyncio.gather(*devices, return_exceptions=True)
        for task in helpers:
            task.cancel()
        report, summary = await self.check(url, quiet)
        summary["elapsed_s"] = round(time.monotonic() - started, 1)
        return summary

    async def quiesce(self, url: str) -> bool:
        """Faults off: every service up, every send accepted and answered, every
        device caught up to its user's stream."""
        for kind in SERVICE_KINDS:
            while len(self.live(kind)) < 2:
                await self.spawn(kind)
        client = _client(url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.args.settle
        try:
            while loop.time() < deadline:
                if await self._settled(client):
                    return True
                await asyncio.sleep(0.5)
            return False
        finally:
            await client.aclose()

    async def _settled(self, client: aioredis.Redis) -> bool:
        if any(u.pending for u in self.users):
            return False
        for user in self.users:
            stream = await client.xrange(keys.outbound(user.name))
            replied = {f.get("cmid") for _, f in stream if f.get("kind") in checker.REPLY_KINDS}
            if not user.accepted <= replied:
                return False
            last = stream[-1][0] if stream else None
            for device in user.devices:
                if not device.connected.is_set() or (last and (not device.received or device.received[-1] != last)):
                    return False
        return True

    async def _check_histories(self, url: str, streams: dict[str, list], report: checker.Report,
                               accepted: dict[str, dict[str, str]]) -> None:
        """Each conversation's stored LangGraph history against its replies."""
        raw = _client(url, decode=False)
        saver = AsyncRedisSaver(redis_client=raw)
        if self.redis_cluster is not None:
            await setup_saver(saver)  # a cluster client's saver needs the library's set-up (no index made)
        try:
            for user, stream in streams.items():
                replaced = checker.replaced_by_edits(stream, accepted.get(user, {}))
                replies: dict[str, list[tuple[str, str]]] = {}
                cancelled: dict[str, list[str]] = {}
                for _, fields in stream:
                    if fields.get("kind") == "assistant":
                        replies.setdefault(fields["conv"], []).append((fields["in"], fields["text"]))
                    elif fields.get("kind") == "cancelled":
                        cancelled.setdefault(fields["conv"], []).append(fields["in"])
                for conversation in set(replies) | set(cancelled):
                    answered = replies.get(conversation, [])
                    stored = await saver.aget_tuple({"configurable": {"thread_id": keys.thread_id(user, conversation)}})
                    messages = stored.checkpoint["channel_values"].get("messages", []) if stored else []
                    human_ids = [m.id for m in messages if getattr(m, "type", "") == "human"]
                    checker.check_history(f"{user}/{conversation}", human_ids, answered, report,
                                          cancelled=cancelled.get(conversation, []),
                                          replaced=replaced.get(conversation, ()))
        finally:
            await raw.aclose()

    async def check(self, url: str, quiet: bool) -> tuple[checker.Report, dict]:
        report = checker.Report()
        for name in self.slow_stops:
            report.add("slow_shutdown", f"{name} did not exit within 30 s of SIGTERM")
        if not quiet:
            report.add("not_settled", f"the system did not settle within {self.args.settle} s after the faults")
        client = _client(url)
        records = [r for u in self.users for r in u.accepts]
        accepted, accept_ids = checker.group_accepts(records)
        checker.check_accept_ids(accept_ids, report)
        streams = {}
        delays: list[int] = []
        bound_ms = int(self.args.max_delay * 1000)
        for user in self.users:
            stream = await client.xrange(keys.outbound(user.name))
            trimmed = await client.hget(keys.meta(user.name), "trimmed") or "0-0"
            streams[user.name] = stream
            mine = accepted.get(user.name, {})
            checker.check_replies(stream, mine, user.name, report, stops=user.stops, outages=self.outages)
            checker.check_inbound_ids(stream, mine, user.name, report)
            checker.check_deltas(stream, user.name, report, streamed=user.streamed)
            checker.check_questions(stream, user.asking, user.name, report, answer_for)
            for device in user.devices:
                for log in device.logs():
                    checker.check_device(log, stream, report, must_reach_end=log is device.log,
                                         replay_window=REPLAY_WINDOW, trimmed=trimmed)
                    delays += checker.check_delays(log, stream, report, bound_ms=bound_ms, outages=self.outages)
        dead_letters = await client.xrange(keys.dead_letters())
        checker.check_dead_letters(dead_letters, report)
        dead = len(dead_letters)
        await client.aclose()
        await self._check_histories(url, streams, report, accepted)
        memory = checker.check_memory(self.memory, report, limit_mb=self.args.memory_limit)
        counts = self.stats.counts
        summary = {
            "seed": self.args.seed,
            "duration_s": self.args.duration,
            "users": len(self.users),
            "devices": sum(len(u.devices) for u in self.users),
            "messages": sum(u.sent for u in self.users),
            "accepted": len({(u, c) for u, c, _ in records}),
            "edits_accepted": sum(len(u.edits & u.accepted) for u in self.users),
            "asked": sum(len(u.asking & u.accepted) for u in self.users),
            "events": sum(len(s) for s in streams.values()),
            "dead_letters": dead,
            "delay_ms": _percentiles(delays),
            "faults": dict(sorted(self.faults.items())),
            "timeline": self.timeline,
            "reconnects": {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("resume:")},
            "client": {k: v for k, v in sorted(counts.items()) if not k.startswith("resume:")},
            "violations": dict(report.violations),
            "examples": report.examples,
            "memory": memory,
            "ok": report.ok,
        }
        return report, summary

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.redis is not None:
            if self.redis.process is not None:
                self.redis.process.send_signal(signal.SIGCONT)
            self.redis.stop()
        if self.redis_cluster is not None:
            self.redis_cluster.stop()


def _client(url: str, *, decode: bool = True) -> aioredis.Redis:
    """A client of the run's Redis (a cluster client for a ``redis+cluster://`` URL)."""
    return make_client(RedisSettings(url=url, socket_timeout=10), max_connections=8, decode=decode)


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50": pick(0.5), "p99": pick(0.99), "p999": pick(0.999), "max": ordered[-1]}


def _rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load and faults")
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--devices", type=int, default=3, help="devices per user")
    parser.add_argument("--rate", type=float, default=8.0, help="new messages per second, all users together")
    parser.add_argument("--fault-interval", type=float, default=4.0, help="mean seconds between faults")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--settle", type=float, default=90.0, help="seconds allowed to settle after the faults")
    parser.add_argument("--memory-limit", type=float, default=600.0, help="MB of RSS any service may reach")
    parser.add_argument("--max-delay", type=float, default=checker.DELAY_BOUND_MS / 1000,
                        help="seconds from an event's commit to its arrival at a connected device; keep it "
                             f"below FANOUT_SWEEP ({FANOUT_SWEEP:g} s)")
    parser.add_argument("--out", default="chaos-results", help="directory for the JSON summary and logs")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="run on a local Redis Cluster of three masters with a replica each")
    return parser.parse_args(argv)


def print_summary(summary: dict) -> None:
    print(f"chaos seed={summary['seed']} {summary['duration_s']:g} s: {summary['users']} users, "
          f"{summary['devices']} devices, {summary['messages']} messages, {summary['accepted']} accepted "
          f"({summary['edits_accepted']} edits; "
          f"{summary['asked']} asked the person), "
          f"{summary['events']} events, {summary['dead_letters']} dead letters")
    print("delay ms:   " + ", ".join(f"{k}={v}" for k, v in summary["delay_ms"].items()))
    print("faults:     " + ", ".join(f"{k}={v}" for k, v in summary["faults"].items()))
    print("reconnects: " + ", ".join(f"{k}={v}" for k, v in summary["reconnects"].items()))
    print("client:     " + ", ".join(f"{k}={v}" for k, v in summary["client"].items()))
    if summary["violations"]:
        print("VIOLATIONS: " + ", ".join(f"{k}={v}" for k, v in summary["violations"].items()))
        for example in summary["examples"][:20]:
            print("  " + example)
    else:
        print("violations: none")


async def amain(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{args.seed}-", dir=out))
    chaos = Chaos(args, workdir)
    try:
        summary = await chaos.run()
    finally:
        await asyncio.to_thread(chaos.stop)
    summary["logs"] = str(workdir)
    path = out / f"chaos-seed{args.seed}.json"
    path.write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    print(f"summary: {path}   service logs: {workdir}")
    return summary


def main(argv: list[str] | None = None) -> int:
    summary = asyncio.run(amain(parse_args(argv)))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
