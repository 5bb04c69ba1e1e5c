"""The tables :mod:`.redis_cost` prints of its figures (its JSON ``result``)."""

from __future__ import annotations

from typing import Any


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _grid(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table(result: dict) -> str:
    out = [f"Redis cost per turn: {result['conversations']} conversation(s) x {result['turns']} turns, "
           f"{result['env']}, Redis {result.get('redis_version', '?')}"
           + (f", Redis pinned to CPU {result['cpus_pinned']['redis']}" if result.get("cpus_pinned") else ""),
           f"background (no turns): {result['background']['commands_per_s']} commands/s, "
           f"{result['background']['cpu_us_per_s']} us CPU/s", ""]
    rows = []
    for r in result["buckets"]:
        rows.append([f"{r['first']}-{r['last']}", r["commands"], r["cpu_us"], r["cpu_main_thread_us"], r["proc_cpu_us"],
                     r.get("cmdstat_usec_top_level"), r.get("cmdstat_usec_inner"), r.get("script_overhead_usec"),
                     r.get("cpu_us_less_background"), r["memory_bytes"], r["net_in_bytes"], r["net_out_bytes"],
                     r["aof_bytes"], r["socket_reads"], r["socket_writes"], r["turn_ms_p50"],
                     r.get("checkpoint", {}).get("document_bytes"), r.get("checkpoint", {}).get("memory_bytes"),
                     r.get("checkpoint", {}).get("kept")])
    out.append(_grid(["turns", "cmds", "cpu_us", "main_us", "proc_us", "exec_us", "inner_us", "lua_us", "cpu-bg_us",
                      "mem_B", "in_B", "out_B", "aof_B", "reads", "writes", "turn_ms", "doc_B", "doc_mem_B", "kept"],
                     rows))
    out.append("(per turn. cmds: commandstats calls, script bodies' included; cpu: INFO cpu, main: its main thread, "
               "proc: /proc schedstat; exec: commandstats usec of the services' own commands, inner: of the "
               "commands scripts ran, lua: scripts' time outside their commands; cpu-bg: cpu less the idle rate; "
               "doc: the newest checkpoint document at the bucket's end, as JSON text and as stored, and the "
               "checkpoints kept)")
    names = sorted({n for f in result["ranges"].values() for n in f["by_command"]},
                   key=lambda n: -max(f["by_command"].get(n, {}).get("usec", 0) for f in result["ranges"].values()))
    header = ["command"] + [f"{k} calls/us" for k in result["ranges"]]
    rows = [[n] + [f"{f['by_command'][n]['calls']:g} / {f['by_command'][n]['usec']:g}" if n in f["by_command"]
                   else "-" for f in result["ranges"].values()] for n in names]
    rows.append(["TOTAL (usec double-counts)"] + [f"{f['commands']:g} / {f['cmdstat_usec']:g}"
                                                  for f in result["ranges"].values()])
    for key, label in (("cmdstat_usec_top_level", "executing the services' commands"),
                       ("cmdstat_usec_inner", "  of which: commands run by scripts"),
                       ("script_overhead_usec", "  of which: scripts outside them"), ("cpu_us", "Redis CPU (INFO cpu)")):
        rows.append([label] + [_cell(f.get(key)) for f in result["ranges"].values()])
    out += ["", "per command, per turn (commandstats; script bodies' commands included):", _grid(header, rows)]
    if "slowlog" in result:
        s, spread = result["slowlog"]["all"], _spread(result["slowlog"]["buckets"])
        out += ["", f"SLOWLOG: {s['top_level_commands']} top-level commands per turn (EXEC is never logged), "
                    f"{s['top_level_usec']} us executing them; {s['inner_commands']} run inside scripts"]
        out.append(_grid(["script", "calls/turn", "us/turn", "us/call", "inner/call", "inner_us/call",
                          *(f"us/call {b['first']}-{b['last']}" for b in spread), "slowest inner commands (us/call)"],
                         [[n, v["calls"], v["usec"], v["usec_per_call"], v["inner_per_call"], v["inner_usec_per_call"],
                           *(b["by_script"].get(n, {}).get("usec_per_call") for b in spread),
                           " ".join(f"{c}:{k['usec']:g}" for c, k in list(v["inner_by_command_per_call"].items())[:4])]
                          for n, v in s["by_script"].items()]))
        out.append(_grid(["top-level command", "calls/turn", "us/turn", "us/call"],
                         [[n, v["calls"], v["usec"], v["usec_per_call"]] for n, v in s["by_command"].items()]))
    if "monitor" in result:
        m = result["monitor"]["all"]
        out += ["", f"MONITOR: {m['top_level_commands']} top-level + {m['inner_commands']} inside scripts "
                    f"= {m['all_commands']} commands per turn"]
        out.append(_grid(["script", "calls/turn", "inner/call", "inner/turn", "req_B/call", "inner commands per call"],
                         [[n, v["calls"], v["inner_per_call"], v["inner_per_turn"], v["request_bytes_per_call"],
                           " ".join(f"{c}:{k:g}" for c, k in v["inner_by_command_per_call"].items())]
                          for n, v in m["by_script"].items()]))
        out.append("top level: " + " ".join(f"{c}:{k:g}" for c, k in m["top_level_by_command"].items()))
        if m["in_transactions_by_command"]:
            out.append("  of which run by an EXEC: " + " ".join(
                f"{c}:{k:g}" for c, k in m["in_transactions_by_command"].items()))
    return "\n".join(out)


def _spread(rows: list[dict], count: int = 4) -> list[dict]:
    """A few rows, first to last."""
    if len(rows) <= count:
        return rows
    return [rows[round(i * (len(rows) - 1) / (count - 1))] for i in range(count)]
