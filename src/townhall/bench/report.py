"""Reports of the listener benchmark: one summary dict per run (what ``--json``
prints), a text table for people, and the plots of the side-by-side run
(matplotlib with the Agg backend, written as PNG)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from townhall.bench.hlsclient import ListenerStats

# a run's result is summarised in a plain dict so that it crosses process
# boundaries as JSON (side_by_side.py runs the load generator as a child)
Summary = dict[str, Any]

STALL_BAR = 0.005  # the capacity bar: stall ratio at most 0.5 %
SATURATED_CPU_PERCENT = 90.0  # the load generator's own core is considered full above this


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values`` by nearest rank; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def quantiles(values: Sequence[float], points: int = 101) -> list[float]:
    """``points`` evenly spaced quantiles (for a CDF plot that stays small in JSON)."""
    if not values:
        return []
    ordered = sorted(values)
    n = len(ordered)
    return [ordered[min(n - 1, round(i * (n - 1) / (points - 1)))] for i in range(points)]


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def summarize(
    stats: Sequence[ListenerStats],
    *,
    end_s: float,
    wall_s: float,
    cpu_s: float,
    meta: Mapping[str, Any],
) -> Summary:
    """Aggregate the listeners of one run at ``end_s`` (monotonic). Closes each
    listener's playout books (a buffer dry at the end is a stall)."""
    held = 0
    started = 0
    stalled_s = 0.0
    played_s = 0.0
    stall_events = 0
    listener_s = 0.0
    requests = 0
    byte_count = 0
    errors: Counter[str] = Counter()
    ttfa: list[float] = []
    joins: list[float] = []
    failed = 0
    for s in stats:
        playout = s.playout
        if playout.play_start_s is not None:
            started += 1
            if not s.failed and not playout.stalled_at(end_s):
                held += 1
        playout.finish(end_s)
        stalled_s += playout.stalled_s
        played_s += playout.played_s(end_s)
        stall_events += playout.stall_events
        listener_s += max(0.0, min(s.ended_at_s or end_s, end_s) - s.started_at_s)
        requests += s.requests
        byte_count += s.bytes
        errors.update(s.errors)
        failed += s.failed
        if s.first_audio_s is not None:
            ttfa.append(s.first_audio_s)
        if s.join_s is not None:
            joins.append(s.join_s)
    cpu_percent = 100.0 * cpu_s / wall_s if wall_s > 0 else 0.0
    return {
        **meta,
        "listeners": len(stats),
        "listeners_started": started,
        "listeners_held": held,
        "listeners_failed": failed,
        "stall_ratio": _round(stalled_s / played_s if played_s > 0 else None, 6),
        "stall_events": stall_events,
        "stalled_s": round(stalled_s, 3),
        "played_s": round(played_s, 3),
        "listener_s": round(listener_s, 3),
        "ttfa_p50_s": _round(percentile(ttfa, 50)),
        "ttfa_p99_s": _round(percentile(ttfa, 99)),
        "ttfa_max_s": _round(max(ttfa) if ttfa else None),
        "ttfa_quantiles_s": [round(v, 4) for v in quantiles(ttfa)],
        "joins": len(joins),
        "join_p50_s": _round(percentile(joins, 50)),
        "join_p99_s": _round(percentile(joins, 99)),
        "join_quantiles_s": [round(v, 4) for v in quantiles(joins)],
        "requests": requests,
        "requests_per_s": round(requests / wall_s, 1) if wall_s > 0 else 0.0,
        "bytes": byte_count,
        "errors": dict(errors.most_common()),
        "wall_s": round(wall_s, 3),
        "client_cpu_s": round(cpu_s, 3),
        "client_cpu_percent": round(cpu_percent, 1),
        "client_saturated": cpu_percent >= SATURATED_CPU_PERCENT,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(summary: Mapping[str, Any]) -> str:
    """A two-column text table of the headline figures of one run."""
    ratio = summary.get("stall_ratio")
    rows = [
        ("target", summary.get("url")),
        ("mode / shape", f"{summary.get('mode')} / {summary.get('shape')}"),
        (
            "listeners (held / started)",
            f"{summary['listeners_held']} / {summary['listeners_started']} of {summary['listeners']}",
        ),
        (
            "stall ratio",
            "-" if ratio is None else f"{100 * ratio:.3f} %  (bar {100 * STALL_BAR:g} %)",
        ),
        ("stall events / stalled s", f"{summary['stall_events']} / {summary['stalled_s']:.1f}"),
        (
            "time to first audio p50 / p99",
            f"{_fmt(summary['ttfa_p50_s'])} s / {_fmt(summary['ttfa_p99_s'])} s",
        ),
        (
            "joins (p50 / p99)",
            f"{summary['joins']} ({_fmt(summary['join_p50_s'])} s / {_fmt(summary['join_p99_s'])} s)",
        ),
        ("requests (per s)", f"{summary['requests']} ({summary['requests_per_s']:g}/s)"),
        ("bytes", f"{summary['bytes']:,}"),
        ("errors", ", ".join(f"{k} {v}" for k, v in summary["errors"].items()) or "none"),
        (
            "load generator CPU",
            f"{summary['client_cpu_percent']:.0f} % of one core"
            + (
                "  (SATURATED: figures are the client's limit)"
                if summary["client_saturated"]
                else ""
            ),
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {_fmt(value)}" for name, value in rows)


# -- plots (side-by-side run) -----------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cpu_vs_listeners(series: Mapping[str, Iterable[tuple[int, float]]], path: Path) -> None:
    """Server CPU (% of its one core) against listeners held, one line per server."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = {name: sorted(points) for name, points in series.items()}
    for name, pts in series.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel("concurrent listeners")
    ax.set_ylabel("server CPU, % of one core")
    ax.set_xscale("log")
    ticks = sorted({p[0] for pts in series.values() for p in pts})
    if ticks:
        from matplotlib.ticker import NullFormatter

        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axhline(100, color="grey", linestyle=":", linewidth=1)
    ax.set_title("Listeners vs server CPU (server pinned to one core)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cdfs(
    series: Mapping[str, Sequence[float]], path: Path, *, xlabel: str, title: str
) -> None:
    """CDFs from quantile lists (as ``quantiles`` returns), one line per series."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, qs in series.items():
        if qs:
            ys = [i / (len(qs) - 1) if len(qs) > 1 else 1.0 for i in range(len(qs))]
            ax.plot(qs, ys, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of listeners")
    ax.set_ylim(0, 1.01)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
