"""Plots (PNG) and the BENCHMARKS.md table from results.json."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: Path) -> None:  # noqa: ANN001
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plots(results: dict, out: Path) -> list[Path]:
    made = []
    s = results["scenarios"]
    lat = s.get("turn_latency", {})
    if lat.get("series_ms"):
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
        series = lat["series_ms"]
        a.plot(range(1, len(series) + 1), series, lw=0.8)
        a.set(xlabel="turn number (conversation length)", ylabel="send → reply (ms)",
              title="Turn latency vs conversation length")
        ordered = sorted(series)
        b.plot(ordered, [i / len(ordered) for i in range(1, len(ordered) + 1)])
        b.set(xlabel="send → reply (ms)", ylabel="fraction of turns", title="Turn latency CDF")
        _save(fig, out / "turn_latency.png")
        made.append(out / "turn_latency.png")
    bars = {}
    if "system" in s.get("throughput", {}):
        t = s["throughput"]
        bars["switchboard"] = t["system"]["turns_per_s"]
        bars["floor (ainvoke)"] = t["floor"]["turns_per_s"]
        bars["floor, durability=exit"] = t["floor_durability_exit"]["turns_per_s"]
    for name, peer in s.get("peers", {}).get("peers", {}).items():
        if isinstance(peer, dict) and "turns_per_s" in peer:
            bars[name] = peer["turns_per_s"]
    if bars:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        ax.barh(list(bars), list(bars.values()))
        ax.set(xlabel="turns per second", title="Turn throughput (same graph, same machine)")
        _save(fig, out / "throughput.png")
        made.append(out / "throughput.png")
    load = s.get("offered_load", {}).get("points")
    if load:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        x = [p["offered_per_s"] for p in load]
        for key, label in (("first_delta", "first delta"), ("final", "final event")):
            ax.plot(x, [p.get(key, {}).get("p50_ms", math.nan) for p in load], marker="o", label=f"p50 {label}")
            ax.plot(x, [p.get(key, {}).get("p99_ms", math.nan) for p in load], marker="o", label=f"p99 {label}")
        ax.set(xlabel="offered turns per second", ylabel="latency (ms)", yscale="log",
               title="Latency vs offered load (200 ms to first token, streamed reply)")
        ax.legend()
        _save(fig, out / "offered_load.png")
        made.append(out / "offered_load.png")
    if s.get("redis_cost", {}).get("buckets"):
        redis_cost_plot(s["redis_cost"], out / "redis_cost.png")
        made.append(out / "redis_cost.png")
    if s.get("cluster_scaling", {}).get("median"):
        from .cluster_scaling import plot as cluster_plot

        cluster_plot(s["cluster_scaling"], out / "cluster_scaling.png")
        made.append(out / "cluster_scaling.png")
    return made


def redis_cost_plot(result: dict, path: Path) -> None:
    """bench.redis_cost: Redis CPU, commands and memory per turn vs turn number."""
    rows = result["buckets"]
    x = [(r["first"] + r["last"]) / 2 for r in rows]
    fig, (a, b, c, d) = plt.subplots(1, 4, figsize=(18, 3.8))
    a.plot(x, [r["cpu_us"] for r in rows], marker=".", label="Redis CPU (INFO cpu)")
    if any(r.get("cpu_main_thread_us") is not None for r in rows):
        a.plot(x, [r.get("cpu_main_thread_us") for r in rows], marker=".", label="main thread")
    a.plot(x, [r.get("cmdstat_usec_top_level", r["cmdstat_usec"]) for r in rows], marker=".",
           label="executing commands (commandstats)")
    a.axhline(result["goal"]["cpu_us_per_turn"], ls="--", c="grey", lw=0.8, label="goal")
    a.set(xlabel="turn number (conversation length)", ylabel="µs per turn", title="Redis CPU per turn", ylim=(0, None))
    a.legend(fontsize=7)
    b.plot(x, [r["commands"] for r in rows], marker=".", label="all (script bodies' commands included)")
    top = {(m["first"], m["last"]): m["top_level_commands"]
           for m in result.get("monitor", result.get("slowlog", {})).get("buckets", [])}
    if top:
        b.plot(x, [top.get((r["first"], r["last"])) for r in rows], marker=".", label="sent by the services")
    b.axhline(result["goal"]["commands_per_turn"], ls="--", c="grey", lw=0.8, label="goal")
    b.set(xlabel="turn number (conversation length)", ylabel="commands per turn", title="Redis commands per turn",
          ylim=(0, None))
    b.legend(fontsize=7)
    c.plot(x, [r["memory_bytes"] / 1024 for r in rows], marker=".")
    c.set(xlabel="turn number (conversation length)", ylabel="KiB per turn", title="Redis used_memory growth per turn")
    if all("checkpoint" in r for r in rows):
        ends = [r["last"] for r in rows]
        d.plot(ends, [r["checkpoint"]["document_bytes"] / 1024 for r in rows], marker=".", label="as JSON text")
        d.plot(ends, [r["checkpoint"]["memory_bytes"] / 1024 for r in rows], marker=".", label="as stored")
        d.set(xlabel="turn number (conversation length)", ylabel="KiB", title="the newest checkpoint document",
              ylim=(0, None))
        d.legend(fontsize=7)
    _save(fig, path)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
    return str(value)


def _met(value: object) -> str:
    return {True: "met", False: "**not met**", None: "—"}.get(value, str(value))


def markdown(results: dict, out: Path) -> str:
    m = results["machine"]
    s = results["scenarios"]
    rows = []

    def row(scenario: str, metric: str, value: object, goal: str, met: object) -> None:
        rows.append(f"| {scenario} | {metric} | {_fmt(value)} | {goal} | {_met(met)} |")

    if "turn_latency" in s and "overhead" in s["turn_latency"]:
        t = s["turn_latency"]
        row("1 turn latency", "overhead p50 (ms)", t["overhead"]["p50_ms"], "≤ 5 ms", t["overhead"]["p50_ms"] <= 5)
        row("1 turn latency", "overhead p99 (ms)", t["overhead"]["p99_ms"], "≤ 20 ms", t["overhead"]["p99_ms"] <= 20)
        if "overhead_first_50_turns" in t:
            early = t["overhead_first_50_turns"]
            row("1 turn latency", "overhead p50 / p99, turns 1–50 only (ms)",
                f"{early['p50_ms']} / {early['p99_ms']}", "", None)
        row("1 turn latency", f"graph's own time p50 (ms), {t['turns']} turns", t["graph_own"]["p50_ms"], "", None)
    if "throughput" in s and "ratio" in s["throughput"]:
        t = s["throughput"]
        row("2 throughput", "switchboard turns/s", t["system"]["turns_per_s"], "", None)
        row("2 throughput", "floor turns/s (ainvoke + AsyncRedisSaver)", t["floor"]["turns_per_s"], "", None)
        row("2 throughput", "ratio to the floor", t["ratio"], "≥ 1.0", t["met"])
    if "peers" in s:
        p = s["peers"]
        for name, peer in p.get("peers", {}).items():
            if "turns_per_s" in peer:
                row("3 peers", f"{name} turns/s (20×20)", peer["turns_per_s"], "", None)
                row("3 peers", f"{name} sequential p50 (ms)", peer["sequential"]["p50_ms"], "", None)
            else:
                row("3 peers", name, peer.get("error", "did not run"), "", None)
        if "throughput_ratio" in p:
            row("3 peers", "switchboard ÷ best peer, throughput", p["throughput_ratio"], "≥ 4×", p["met_throughput"])
            row("3 peers", "switchboard ÷ best peer, sequential p50", p["latency_ratio"], "≤ 0.5", p["met_latency"])
    if "offered_load" in s and "points" in s["offered_load"]:
        for point in s["offered_load"]["points"]:
            first = point.get("first_delta", {})
            row("4 offered load", f"{point['offered_per_s']}/s offered: achieved; p50/p99 first delta; "
                "p50/p99 final (ms)",
                f"{point['achieved_per_s']}/s; {first.get('p50_ms')}/{first.get('p99_ms')}; "
                f"{point['final'].get('p50_ms')}/{point['final'].get('p99_ms')}", "", None)
    if "connections" in s and "rss_per_connection_kib" in s["connections"]:
        c = s["connections"]
        row("5 connections", f"RSS per idle connection at {c['connections']} (KiB)", c["rss_per_connection_kib"],
            "≤ 40 KiB at 10,000", c["met"])
        row("5 connections", "handshakes (hello→welcome) per s", c["handshakes_per_s"], "", None)
    if "fanout" in s and "deliveries_per_s" in s["fanout"]:
        f = s["fanout"]
        row("6 fanout", f"deliveries/s, 1 user × {f['devices']} devices", f["deliveries_per_s"], "≥ 20,000", f["met"])
    if "replay" in s and "replay_seconds" in s["replay"]:
        r = s["replay"]
        row("7 replay", f"replay of {r['missed_events']} missed events (s)", r["replay_seconds"], "≤ 1 s",
            r["replay_seconds"] <= 1.0)
        st = r["storm"]
        row("7 replay", f"storm of {st['devices']} devices: seconds / gaps", f"{st['seconds']} / {st['gaps']}",
            "≤ 30 s, 0 gaps", st["seconds"] <= 30 and st["gaps"] == 0)
    if "scaling" in s and "workers" in s["scaling"]:
        for workers, value in s["scaling"]["workers"].items():
            row("8 scaling", f"{workers} worker(s), 20 ms graph: turns/s", value["turns_per_s"], "", None)
        for users, value in s["scaling"]["users"].items():
            row("8 scaling", f"{users} concurrent conversations: turns/s", value["turns_per_s"], "", None)
    if "prehello" in s and "peak_growth_per_socket_kib" in s["prehello"]:
        h = s["prehello"]
        row("9 before hello", f"peak RSS per socket, {h['sockets']} half-sent 2 MiB messages (KiB)",
            h["peak_growth_per_socket_kib"], "≤ 100 KiB, all closed 1009", h["met"])
    if "redis_cost" in s and "ranges" in s["redis_cost"]:
        r = s["redis_cost"]
        for span, f in r["ranges"].items():
            row("10 Redis cost", f"turns {span}: commands / Redis CPU µs / bytes of memory per turn",
                f"{f['commands']} / {f['cpu_us']} / {f['memory_bytes']}", "", None)
        row("10 Redis cost", f"commands per turn, turns 1–{r['turns']}", r["all"]["commands"],
            f"≤ {r['goal']['commands_per_turn']}", r["all"]["commands"] <= r["goal"]["commands_per_turn"])
        row("10 Redis cost", f"Redis CPU µs per turn, turns 1–{r['turns']}", r["all"]["cpu_us"],
            f"≤ {r['goal']['cpu_us_per_turn']}", r["all"]["cpu_us"] <= r["goal"]["cpu_us_per_turn"])
    if s.get("cluster_scaling", {}).get("median"):
        for setup, f in s["cluster_scaling"]["median"].items():
            per_node = ", ".join(f"{n} {v:g}" for n, v in f["redis_cpu_us_per_turn"].items())
            row("11 Redis Cluster", f"{setup}: turns/s; Redis CPU µs per turn, total ({per_node})",
                f"{f['turns_per_s']}; {f['redis_cpu_us_per_turn_total']}", "", None)
    for name, value in s.items():
        if "error" in value:
            row(name, "error", value["error"], "", False)
    images = "\n".join(f"![{p.stem}]({p.as_posix()})" for p in sorted(out.glob("*.png")))
    notes_file = Path(__file__).with_name("NOTES.md")
    notes = notes_file.read_text() if notes_file.exists() else ""
    return f"""# Benchmarks

Measured by `make bench` (the programs in `bench/`); raw figures in
`{out.as_posix()}/results.json`. This machine is shared and noisy: compare
figures *within* one run (ratios), not across runs.

Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mb']} MB, Python {m['python']}, {m['platform']}.
Run: {m['date']}. Redis: the embedded Redis 8.2 (AOF, appendfsync everysec) on the same machine.

| scenario | metric | value | goal | |
|---|---|---|---|---|
{chr(10).join(rows)}

{notes}
{images}
"""
