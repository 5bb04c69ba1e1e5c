"""The benchmark suite works (tiny scale): every scenario runs and reports
its figures. The numbers themselves are for `make bench`, not for tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from switchboard.bench.stats import percentile, summary_ms


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert summary_ms([0.001, 0.002, 0.003])["p50_ms"] == 2.0


@pytest.mark.timeout(900)
def test_the_quick_suite_runs_every_scenario(tmp_path):
    out = tmp_path / "bench"
    run = subprocess.run([sys.executable, "-m", "switchboard.cli", "bench", "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    scenarios = results["scenarios"]
    assert set(scenarios) >= {"turn_latency", "throughput", "offered_load", "connections", "fanout", "replay",
                              "scaling"}
    assert all("error" not in value for value in scenarios.values()), scenarios
    assert scenarios["turn_latency"]["end_to_end"]["n"] == scenarios["turn_latency"]["turns"]
    assert scenarios["throughput"]["system"]["turns"] > 0 and scenarios["throughput"]["floor"]["turns"] > 0
    assert scenarios["replay"]["storm"]["gaps"] == 0
    for point in scenarios["offered_load"]["points"]:  # the realistic graph streams: first deltas are measured
        assert point["first_delta"]["n"] == point["final"]["n"] > 0, point
        assert point["first_delta"]["p50_ms"] < point["final"]["p50_ms"], point
    assert (out / "turn_latency.png").exists() and (out / "throughput.png").exists()
    assert {"cpu", "cores", "memory_mb", "python"} <= set(results["machine"])  # the table describes the machine
