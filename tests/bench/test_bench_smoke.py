"""The benchmark suite works (tiny scale): every scenario runs and reports
its figures. The numbers themselves are for `make bench`, not for tests."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.stats import percentile, summary_ms

ROOT = Path(__file__).resolve().parents[2]  # `python -m bench` runs from the repository root


def test_bench_depends_on_the_package_and_never_on_tests():
    """tests -> bench -> switchboard, one way: no bench module imports from
    ``tests`` or names one of its modules (``GRAPH="tests...."``, say)."""
    found = []
    for path in sorted((ROOT / "bench").rglob("*.py")):
        if ".peers" in path.relative_to(ROOT).parts:
            continue  # the peer servers' cached virtualenvs
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value]
            else:
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name!r}"
                      for name in names if re.match(r"tests(?:[.:]|$)", name)]
    assert not found, found


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert summary_ms([0.001, 0.002, 0.003])["p50_ms"] == 2.0


@pytest.mark.timeout(900)
def test_the_quick_suite_runs_every_scenario(tmp_path):
    out = tmp_path / "bench"
    run = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT,
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
