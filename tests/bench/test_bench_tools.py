"""Benchmark programs that run on their own (tiny scale): each writes its
figures and its plot, and what they count agrees with itself. Unlike the
quick suite (test_bench_smoke.py), they load the machine lightly and assert
no timing, so they run beside other tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # `python -m bench` runs from the repository root


@pytest.mark.timeout(300)
def test_capacity_runs_and_idle_users_leave_nothing_behind(tmp_path):
    """bench.capacity at a tiny scale: its figures are there, and every key
    of each wave's users expires with CHECKPOINT_TTL (3 s here) while the
    keys left do not grow from wave to wave (its exit status says so)."""
    out = tmp_path / "capacity.json"
    run = subprocess.run([sys.executable, "-m", "bench.capacity", "--users", "5", "--devices", "2", "--turns", "3",
                          "--waves", "2", "--ttl", "0.05", "--out", str(out), "--plot", str(tmp_path / "r.png")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["retention"]["flat"] and all(a is not None for a in result["retention"]["after_each_wave"])
    assert result["retention"]["after_each_wave"][-1]["keys"] == result["retention"]["baseline"]["keys"]
    assert result["per_turn"]["redis_calls"] > 0 and result["per_idle_user"]["redis_keys"] > 0
    assert (tmp_path / "r.png").stat().st_size > 0


@pytest.mark.timeout(120)
def test_redis_cost_runs_alone_and_its_counts_agree(tmp_path):
    """bench.redis_cost at a tiny scale: JSON and plot written; the commands
    per turn counted three ways (commandstats, MONITOR, total_commands_processed)
    agree, the bench's own INFO calls left out, and every script a turn runs
    is named from shared/lua; the checkpoint document's size is read."""
    out = tmp_path / "redis-cost.json"
    run = subprocess.run([sys.executable, "-m", "bench.redis_cost", "--turns", "10", "--conversations", "1",
                          "--bucket", "5", "--idle", "0.5", "--out", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    figures, monitor = result["all"], result["monitor"]["all"]
    assert figures["turns"] == 10 and figures["cpu_us"] > 0 and figures["net_in_bytes"] > 0
    assert "info" not in figures["by_command"]
    assert abs(figures["commands"] - figures["commands_processed"]) <= 0.1 * figures["commands"]
    assert abs(figures["commands"] - monitor["all_commands"]) <= 0.15 * figures["commands"]
    assert {"accept", "begin", "commit"} <= set(monitor["by_script"]) and {"accept", "begin", "commit"} <= set(
        result["slowlog"]["all"]["by_script"])
    assert not any(name.startswith(("evalsha ", "(unattributed)")) for name in monitor["by_script"])
    # The newest checkpoint holds every message: it grows; the thread keeps one per turn (CHECKPOINT_KEEP 20).
    first, second = (b["checkpoint"] for b in result["buckets"])
    assert 0 < first["document_bytes"] < second["document_bytes"] and first["memory_bytes"] > 0
    assert (first["kept"], second["kept"]) == (5, 10)
    assert (tmp_path / "redis-cost.png").stat().st_size > 0
