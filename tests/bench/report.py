"""Printing and saving the results of `ops/bench compare` and `ops/bench latency`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

# Fewer changes of a group's committed offsets than this make its drain rate coarse.
MIN_CHANGES = 10


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def drain_line(r: Any) -> str:
    if r.error:
        return f"[red]{r.system}: failed: {r.error}[/red]"
    return (
        f"{r.system}: {r.events_per_s:,.0f} events/s over {r.window_s:.1f}s "
        f"({r.offset_changes} offset changes), worker CPU {_num(r.cpu_per_100k['worker'])} s/100k, "
        f"handoffs {r.handoffs:,} ({r.verdict})"
    )


def drain_table(console: Console, result: dict[str, Any]) -> None:
    table = Table(
        title=(
            f"drain of {result['records']:,} records for {result['leads']:,} leads "
            f"(oracle: {result['oracle_handoffs']:,} handoffs)"
        )
    )
    columns = (
        "system",
        "events/s",
        "× Quix",
        "commits seen",
        "CPU s/100k: worker",
        "redis",
        "worker+redis",
        "(broker)",
        "other load, cores",
        "RSS peak / final MiB",
        "handoffs",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("system", "handoffs") else "right")
    for r in result["systems"]:
        if r["error"]:
            table.add_row(r["label"], *["—"] * (len(columns) - 2), f"failed: {r['error']}")
            continue
        cpu = r["cpu_per_100k"]
        table.add_row(
            r["label"],
            _num(r["events_per_s"], 0),
            _num(r["ratio_to_quix"], 2),
            f"{r['offset_changes']}{'' if r['offset_changes'] >= MIN_CHANGES else ' (!)'}",
            _num(cpu["worker"]),
            _num(cpu["redis"]),
            _num(cpu["total"]),
            _num(cpu["kafka"]),
            _num(r["other_load_cores"], 2),
            f"{r['rss_peak_mib']:,.0f} / {r['rss_final_mib']:,.0f}",
            f"{r['handoffs']:,} {r['verdict']}",
        )
    console.print(table)
    if any(not r["error"] and r["offset_changes"] < MIN_CHANGES for r in result["systems"]):
        console.print(
            f"(!) fewer than {MIN_CHANGES} changes of the committed offsets: the rate is coarse "
            "and low (the last commit interval may end idle); drain a bigger backlog (--events)."
        )
    memory = result.get("leadflow_redis_bytes_per_lead")
    if memory:
        console.print(
            f"leadflow Redis per lead (MEMORY USAGE, {memory['leads']:,} leads sampled): "
            f"{memory['total']:,.0f} B = lead key {memory['lead_key']:,.0f} B + "
            f"seen key {memory['seen_key']:,.0f} B"
        )
    console.print(f"command: {result['command']}  ({result['date']})")


def rss_along(console: Console, result: dict[str, Any], chart: Path) -> None:
    """Each worker's RSS along its drain, as a line and as a PNG chart: flat or growing?"""
    drawn = [r for r in result["systems"] if not r["error"] and r.get("rss_along")]
    if not drawn:
        return
    for r in drawn:
        points = r["rss_along"]
        picks = [points[round(q * (len(points) - 1))] for q in (0, 0.25, 0.5, 0.75, 1)]
        console.print(
            f"{r['system']} RSS along the drain, MiB at records committed: "
            + ", ".join(f"{mib:,.0f} at {done:,}" for done, mib in picks)
        )
    from matplotlib.figure import Figure  # slow to import: only when drawn

    fig = Figure(figsize=(8, 4), dpi=100)
    ax = fig.add_subplot()
    for r in drawn:
        done, mib = zip(*r["rss_along"], strict=True)
        ax.plot(done, mib, label=r["label"])
    ax.set_xlabel("records committed")
    ax.set_ylabel("worker RSS, MiB")
    ax.set_ylim(bottom=0)
    ax.set_title(f"worker memory along the drain ({result['command']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    chart.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(chart)
    console.print(f"chart: {chart}")


def latency_table(console: Console, result: dict[str, Any]) -> None:
    table = Table(
        title=(
            f"latency at {result['rate']:,} events/s for {result['seconds']} s "
            "(send of the triggering event -> arrival on the output topic)"
        )
    )
    columns = (
        "system",
        "sent/s achieved",
        "handoffs",
        "p50 ms",
        "p99 ms",
        "max ms",
        "worker cores",
        "harness cores",
        "other cores",
        "note",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("system", "note") else "right")
    for r in result["systems"]:
        table.add_row(
            r["label"],
            _num(r["achieved_rate"], 0),
            f"{r['handoffs']:,}",
            _num(r["p50_ms"], 0),
            _num(r["p99_ms"], 0),
            _num(r["max_ms"], 0),
            _num(r["worker_cores"], 2),
            _num(r["harness_cores"], 2),
            _num(r["other_cores"], 2),
            r["note"],
        )
    console.print(table)
    console.print(f"command: {result['command']}  ({result['date']})")
