"""Short seeded chaos runs, part of `make test`: on one Redis and on a Redis
Cluster of three masters (about a minute and a half each).

The long run is `make chaos` (see docs/guarantees.md)."""

from __future__ import annotations

import os

import pytest

from tests.chaos.run import amain, parse_args


@pytest.mark.timeout(600)
async def test_a_short_seeded_chaos_run_keeps_every_invariant(tmp_path):
    args = parse_args(["--duration", os.environ.get("CHAOS_DURATION", "60"), "--users", "10", "--devices", "3",
                       "--seed", os.environ.get("CHAOS_SEED", "20261126"), "--fault-interval", "3",
                       "--out", str(tmp_path)])
    summary = await amain(args)
    assert summary["ok"], summary["examples"]
    # The run must have exercised what it claims to: load, every fault kind, resumes.
    assert summary["messages"] >= 300 and summary["accepted"] == summary["messages"] + summary["edits_accepted"]
    # Questions asked and answered (human-in-the-loop), and earlier messages edited.
    assert summary["asked"] >= 5 and summary["client"].get("resumes", 0) >= 5, summary["client"]
    assert summary["edits_accepted"] >= 1, summary["client"]
    expected = {f"{sig}:{kind}" for sig in ("kill9", "sigterm") for kind in ("gateway", "worker", "fanout")}
    expected |= {"client_drop", "reconnect_storm", "resend_accepted", "reinstall"}
    if not os.environ.get("REDIS_URL"):
        expected |= {"redis_restart", "redis_pause"}
    assert expected <= set(summary["faults"]), summary["faults"]
    assert summary["reconnects"].get("last_id", 0) >= 10 and summary["reconnects"].get("offset", 0) >= 1
    assert summary["reconnects"].get("stale", 0) >= 1
    # New devices beyond the first connections (a reinstalled device), and
    # delivery delays measured on the live path.
    assert summary["reconnects"].get("new", 0) > summary["devices"]
    assert summary["delay_ms"].get("n", 0) >= 1000


@pytest.mark.timeout(600)
async def test_a_short_chaos_run_on_a_redis_cluster_keeps_every_invariant(tmp_path):
    """The same load and faults on a Redis Cluster, where the Redis faults are
    a master killed with kill -9 (its replica promoted) and a user's slot
    moved to another master while the load runs."""
    args = parse_args(["--duration", os.environ.get("CHAOS_CLUSTER_DURATION", "60"), "--users", "10",
                       "--devices", "3", "--seed", os.environ.get("CHAOS_SEED", "20261126"), "--fault-interval", "3",
                       "--redis-cluster", "--out", str(tmp_path)])
    summary = await amain(args)
    assert summary["ok"], summary["examples"]
    assert summary["messages"] >= 200 and summary["accepted"] == summary["messages"] + summary["edits_accepted"]
    expected = {f"{sig}:{kind}" for sig in ("kill9", "sigterm") for kind in ("gateway", "worker", "fanout")}
    expected |= {"client_drop", "reconnect_storm", "resend_accepted", "reinstall", "master_kill", "slot_move"}
    assert expected <= set(summary["faults"]), summary["faults"]
    assert summary["reconnects"].get("last_id", 0) >= 10 and summary["delay_ms"].get("n", 0) >= 1000
