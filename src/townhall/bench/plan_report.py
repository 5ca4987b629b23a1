"""`townhall bench plan`: the model of :mod:`townhall.bench.plan` on the
command line (table, ``--json``, a PNG), fed by the calibration JSON.

Nothing here touches a network: the plan is arithmetic on costs measured
before (``benchmarks/plan_calibrate.py``; the file measured on the project's
machine ships as ``townhall/bench/plan_costs.json``).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from townhall.bench.plan import Costs, Result, Scenario, plan, storm_notice

SHIPPED_COSTS = Path(__file__).with_name("plan_costs.json")
MAX_ARRIVALS = 1_000_000_000
MAX_STEPS = 200_000
# how a waiting page learns its turn: it fetches queue.json itself every
# second (web/static/js/queue.js, POLL_MS) through a cache that honours the
# document's max-age 1 (server/api_queue.py), and posts on the poll that read it
PAGE_POLL_S = 1.0
QUEUE_DOC_MAX_AGE_S = 1.0


def load_costs(path: Path) -> Costs:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise click.UsageError(
            f"No calibration at {path}: run benchmarks/plan_calibrate.py --out {path}."
        ) from None
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"{path} is not JSON ({exc}); measure it again.") from None
    try:
        return Costs.from_json(data)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _n(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _spread(d: dict[str, float | None]) -> str:
    return f"{_n(d.get('p10'))}-{_n(d.get('p90'))}"


def _dist(d: dict[str, float | None]) -> str:
    return " / ".join(_n(d[k]) for k in ("p50", "p90", "p99", "max"))


def rows(r: Result) -> list[tuple[str, str]]:
    s = r.scenario
    cap = f"{s.cap:,}" if s.cap else "none"
    return [
        ("arrivals / over", f"{s.arrivals:,} in {s.over_s:g} s ({s.arrivals / s.over_s:,.0f}/s)"),
        ("cap / admit rate", f"{cap} / {s.admit_rate_per_s:,.0f} per s"),
        ("go-live after first arrival", f"{s.pre_s:g} s"),
        ("origin cores (sized at util.)", f"{r.origin_cores:,.0f} ({s.utilization:.0%})"),
        ("origin CPU peak / mean", f"{_n(r.origin_cpu_peak_cores)} / {_n(r.origin_cpu_mean_cores)} cores"),
        ("cache nodes", f"{r.cache_nodes:,} x {s.cache_node_cores:g} cores, {s.cache_node_gbps:g} Gbit/s"),
        ("Redis ops/s peak / mean", f"{_n(r.redis_ops_peak_per_s)} / {_n(r.redis_ops_mean_per_s)}"),
        ("Redis cores at peak (shards of one core)", f"{_n(r.redis_cores_peak)} ({r.redis_shards})"),
        ("start delay (go-live to first audio), mean (p10-p90 over runs)", f"{_n(r.start_delay_s)} s ({_spread(r.start_delay_spread_s)} s)"),
        ("wait p50 / p90 / p99 / max", f"{_dist(r.wait_s)} s"),
        ("first audio after admission p50/p90/p99/max", f"{_dist(r.ttfa_after_admission_s)} s"),
        ("first audio after arrival p50/p90/p99/max", f"{_dist(r.ttfa_from_arrival_s)} s"),
        ("join answer at the peak", f"{_n(r.join_latency_peak_s, 3)} s"),
        ("admitted / gave up / waiting at end", f"{r.admitted:,.0f} / {r.gave_up:,.0f} / {r.waiting_at_end:,.0f}"),
        ("peak listening / waiting", f"{r.peak_listeners:,.0f} / {r.peak_waiting:,.0f}"),
        ("egress peak (all caches)", f"{_n(r.egress_peak_gbps)} Gbit/s ({_n(r.egress_per_cache_gbps)} per cache)"),
        ("origin egress peak (to caches)", f"{_n(r.origin_egress_peak_mbps)} Mbit/s"),
    ]  # fmt: skip


def format_table(r: Result) -> str:
    out = ["| figure | plan |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows(r)]
    top = sorted(r.origin_cpu_by_kind.items(), key=lambda kv: -kv[1])[:6]
    out.append(
        "| origin CPU by kind (mean cores) | " + ", ".join(f"{k} {_n(v, 3)}" for k, v in top) + " |"
    )
    return "\n".join(out)


def sweep(costs: Costs, s: Scenario, points: int = 7) -> list[dict[str, float]]:
    """Origin cores and cache nodes against arrivals (same T, cap and rate
    scaled with N), from N/10^(points-1)... up to N on a log scale."""
    out = []
    for k in range(points - 1, -1, -1):
        n = max(1, round(s.arrivals / 10 ** (k * math.log10(max(10, s.arrivals)) / points)))
        scale = n / s.arrivals
        scenario = replace(
            s,
            arrivals=n,
            cap=max(1, round(s.cap * scale)) if s.cap else 0,
            admit_rate_per_s=max(1.0, s.admit_rate_per_s * scale) if s.cap else s.admit_rate_per_s,
            origin_cores=None,
            cache_nodes=None,
        )
        r = plan(costs, scenario)
        out.append(
            {
                "arrivals": n,
                "origin_cores": r.origin_cores,
                "origin_cpu_peak_cores": r.origin_cpu_peak_cores,
                "cache_nodes": r.cache_nodes,
                "redis_ops_peak_per_s": r.redis_ops_peak_per_s,
            }
        )
    return out


def plot(r: Result, curve: list[dict[str, float]], path: Path) -> None:
    """Left: arrived, waiting, listening over time; right: cores vs arrivals."""
    from townhall.bench.report import _pyplot

    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    ts = [p["t"] for p in r.timeline]
    for key, label in (("arrived", "arrived"), ("waiting", "waiting"), ("listening", "admitted")):
        ax.plot(ts, [p[key] for p in r.timeline], label=label)
    ax.axvline(r.scenario.pre_s, color="grey", linestyle=":", label="go-live")
    ax.set_xlabel("seconds")
    ax.set_ylabel("people")
    ax.set_title(f"{r.scenario.arrivals:,} arrivals in {r.scenario.over_s:g} s")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(ts, [p["origin_cores"] for p in r.timeline], color="black", alpha=0.4, lw=0.8)
    ax2.set_ylabel("origin CPU (cores, grey)")
    ax.legend(loc="upper left")
    xs = [p["arrivals"] for p in curve]
    bx.loglog(xs, [p["origin_cores"] for p in curve], marker="o", label="origin cores")
    bx.loglog(xs, [p["cache_nodes"] for p in curve], marker="s", label="cache nodes")
    bx.set_xlabel(f"arrivals in {r.scenario.over_s:g} s")
    bx.set_title("what it takes")
    bx.grid(True, which="both", alpha=0.3)
    bx.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@click.command("plan")
@click.option("--arrivals", type=int, default=20_000_000, show_default=True)
@click.option("--over-s", type=float, default=60.0, show_default=True)
@click.option("--cap", type=int, default=20_000_000, show_default=True, help="0: no cap.")
@click.option("--admit-rate", "admit_rate_per_s", type=float, default=400_000.0, show_default=True)
@click.option(
    "--pre-s",
    type=float,
    default=10.0,
    show_default=True,
    help="Go-live this long after the first arrival.",
)
@click.option(
    "--listen-s",
    type=float,
    default=0.0,
    show_default=True,
    help="Mean listening time; 0: to the end.",
)
@click.option(
    "--give-up",
    type=float,
    default=0.05,
    show_default=True,
    help="Share giving up after 3-30 s of waiting.",
)
@click.option("--delivery", type=click.Choice(["llhls", "hls"]), default="llhls", show_default=True)
@click.option("--origin-nodes", type=int, default=3, show_default=True)
@click.option("--origin-cores", type=float, default=None, help="Leave out to size it.")
@click.option(
    "--cache-nodes", type=int, default=None, help="Leave out to size it; 0: no cache tier."
)
@click.option("--cache-node-cores", type=float, default=16.0, show_default=True)
@click.option("--cache-node-gbps", type=float, default=10.0, show_default=True)
@click.option("--utilization", type=float, default=0.7, show_default=True, help="Sizing target.")
@click.option(
    "--rtt-s", type=float, default=0.05, show_default=True, help="Listener to cache round trip."
)
@click.option(
    "--space-feed/--no-space-feed",
    "golive_published",
    default=True,
    show_default=True,
    help="The go-live reaches every node at once (the space feed); without, each node at its "
    "next index refresh (--index-refresh-s).",
)
@click.option(
    "--index-refresh-s",
    type=float,
    default=1.0,
    show_default=True,
    help="Without the space feed: how often a node reloads its space index.",
)
@click.option("--step-s", type=float, default=0.1, show_default=True)
@click.option(
    "--costs",
    "costs_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=SHIPPED_COSTS,
    show_default=True,
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a PNG.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON on stdout.")
@click.option("--no-progress", is_flag=True)
def plan_command(**kw: Any) -> None:  # fmt: skip
    """The plan to internet scale: N arrivals in T seconds, with a cap and a
    cache tier, through a model calibrated on measured costs: origin cores,
    cache nodes, Redis operations per second, start delay, waits, egress."""
    costs = load_costs(kw.pop("costs_path"))
    plot_path, as_json = kw.pop("plot_path"), kw.pop("as_json")
    progress = not kw.pop("no_progress") and sys.stderr.isatty()
    if not 1 <= kw["arrivals"] <= MAX_ARRIVALS:
        raise click.UsageError(f"--arrivals must be between 1 and {MAX_ARRIVALS:,}.")
    notice = storm_notice("each", kw["rtt_s"], poll_s=PAGE_POLL_S, max_age_s=QUEUE_DOC_MAX_AGE_S)
    scenario = Scenario(**kw, **notice)
    try:
        scenario.check()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if scenario.horizon_s / scenario.step_s > MAX_STEPS:
        raise click.UsageError(
            f"{scenario.horizon_s:,.0f} s in steps of {scenario.step_s:g} s is over "
            f"{MAX_STEPS:,} steps: raise --step-s (it may be up to 1 s)."
        )
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=100, unit="%", file=sys.stderr, leave=False, desc="plan")

    def tick(done: float) -> None:
        if bar is not None:
            bar.n = round(done * 100)
            bar.refresh()

    result = plan(costs, scenario, progress=tick)
    if bar is not None:
        bar.close()
    curve = sweep(costs, scenario) if plot_path is not None else []
    if plot_path is not None:
        plot(result, curve, plot_path)
    if as_json:
        out = result.summary()
        out["costs"] = {"file": str(kw.get("costs_path", "")), **dict(costs.meta)}
        out["sweep"] = curve
        click.echo(json.dumps(out, default=str))
    else:
        click.echo(format_table(result))
