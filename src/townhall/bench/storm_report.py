"""The figures of `townhall bench storm` (pure: records in, one summary dict
out), its text table and its plot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from townhall.bench.hlsclient import ListenerStats
from townhall.bench.report import _pyplot, percentile

Summary = dict[str, Any]


@dataclass
class Arrival:
    """One simulated arrival. Times are wall-clock seconds (time.time())."""

    index: int  # arrival order, from 0
    offset_s: float
    before_start: bool
    give_up_after_s: float | None
    listen_s: float
    stats: ListenerStats
    arrived_at: float | None = None
    queued: bool = False
    number: int | None = None
    eta_at: float | None = None  # when the first ETA with a number was given
    eta_s: float | None = None
    admitted_at: float | None = None
    first_audio_at: float | None = None
    gave_up_at: float | None = None
    delivery: str = "llhls"
    refusals: Counter[str] = field(default_factory=Counter)
    # (when, ETA) as the page computes it from queue.json, one every few seconds
    shown_etas: list[tuple[float, float]] = field(default_factory=list)
    unknown_etas: int = 0  # looks at queue.json when no ETA could be shown (not known yet)
    shown_etas_old: list[tuple[float, float]] = field(default_factory=list)  # the old model
    # the model without the settled speed (the full line's measured speed only)
    shown_etas_measured: list[tuple[float, float]] = field(default_factory=list)
    first_eta_unknown: bool = False  # the first answer with a number had no ETA


@dataclass(frozen=True, slots=True)
class Sample:
    """queue.json as read at ``at`` (plus the generator's own counts)."""

    at: float
    admitted: int
    waiting: int
    through: int
    released: int
    arrivals: int
    playing: int


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None under 3 points."""
    n = len(xs)
    if n < 3 or n != len(ys):
        return None

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(n), key=lambda i: values[i])
        out = [0.0] * n
        i = 0
        while i < n:
            j = i
            while j + 1 < n and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return None if vx == 0 or vy == 0 else cov / (vx * vy) ** 0.5


def reclaim_times(arrivals: Sequence[Arrival], samples: Sequence[Sample]) -> list[float]:
    """For each ticket given up whose turn was called: seconds from its call
    to the first queue document showing one more place released."""
    out: list[float] = []
    for a in arrivals:
        if a.gave_up_at is None or a.number is None:
            continue
        called = next((s for s in samples if s.through >= a.number), None)
        if called is None:
            continue
        later = next(
            (s for s in samples if s.at > called.at and s.released > called.released), None
        )
        if later is not None:
            out.append(later.at - called.at)
    return out


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def summarize(
    arrivals: Sequence[Arrival],
    samples: Sequence[Sample],
    *,
    live_at: float | None,
    cap: int,
    max_doc_age_s: float,
    clock_late_p99_s: float | None,
    clock_late_whole_p99_s: float | None,
    client_cpu_percent: float,
    drawn_count: int | None = None,
    meta: Mapping[str, Any],
) -> Summary:
    admitted = [a for a in arrivals if a.admitted_at is not None]
    audio = [a.first_audio_at for a in admitted if a.first_audio_at is not None]
    ttfa = [
        a.first_audio_at - a.admitted_at for a in admitted if a.first_audio_at and a.admitted_at
    ]
    waited = [
        a.admitted_at - a.arrived_at
        for a in admitted
        if a.queued and a.arrived_at and a.admitted_at
    ]
    eta_errors = [
        abs((a.admitted_at - a.eta_at) - a.eta_s) / max(1.0, a.admitted_at - a.eta_at)
        for a in admitted
        if a.eta_at is not None and a.eta_s is not None and a.admitted_at is not None
    ]
    # after the start by the server's account: numbers past the pre-start draw
    drawn = drawn_count or 0
    shown_errors = [
        abs((a.admitted_at - at) - eta) / max(10.0, a.admitted_at - at)
        for a in admitted
        if a.admitted_at is not None
        for at, eta in a.shown_etas
    ]
    shown_old = [
        abs((a.admitted_at - at) - eta) / max(10.0, a.admitted_at - at)
        for a in admitted
        if a.admitted_at is not None
        for at, eta in a.shown_etas_old
    ]
    shown_measured = [
        abs((a.admitted_at - at) - eta) / max(10.0, a.admitted_at - at)
        for a in admitted
        if a.admitted_at is not None
        for at, eta in a.shown_etas_measured
    ]
    after = [a for a in admitted if a.queued and a.number is not None and a.number > drawn]
    fairness = spearman([a.index for a in after], [a.admitted_at or 0.0 for a in after])
    stalled = played = 0.0
    for a in admitted:
        stalled += a.stats.playout.stalled_s
        played += a.stats.playout.played_s(a.stats.ended_at_s or 0.0)
    refusals: Counter[str] = Counter()
    for a in arrivals:
        refusals.update(a.refusals)
    reclaim = reclaim_times(arrivals, samples)
    max_playing = max((s.playing for s in samples), default=0)
    max_admitted = max((s.admitted for s in samples), default=0)
    return {
        **meta,
        "cap": cap,
        "arrivals": len(arrivals),
        "arrived_before_start": sum(1 for a in arrivals if a.before_start),
        "drawn_at_start": drawn_count,
        "admitted": len(admitted),
        "queued": sum(1 for a in arrivals if a.queued),
        "gave_up": sum(1 for a in arrivals if a.gave_up_at is not None),
        "still_waiting": sum(
            1 for a in arrivals if a.queued and a.admitted_at is None and a.gave_up_at is None
        ),
        "start_delay_s": _r(min(audio) - live_at) if audio and live_at else None,
        "live_at": live_at,  # wall clock (epoch s) of the host's start
        "first_audio_at": min(audio) if audio else None,
        "ttfa_p50_s": _r(percentile(ttfa, 50)),
        "ttfa_p99_s": _r(percentile(ttfa, 99)),
        "wait_p50_s": _r(percentile(waited, 50)),
        "wait_p99_s": _r(percentile(waited, 99)),
        "eta_error_p50": _r(percentile(eta_errors, 50)),
        "eta_error_p90": _r(percentile(eta_errors, 90)),
        "shown_eta_error_p50": _r(percentile(shown_errors, 50)),
        "shown_eta_error_p90": _r(percentile(shown_errors, 90)),
        "shown_eta_error_p50_old_model": _r(percentile(shown_old, 50)),
        "shown_eta_error_p90_old_model": _r(percentile(shown_old, 90)),
        "shown_eta_error_p50_measured_speed": _r(percentile(shown_measured, 50)),
        "shown_eta_error_p90_measured_speed": _r(percentile(shown_measured, 90)),
        "eta_first_given": len(eta_errors),
        "eta_first_unknown": sum(1 for a in admitted if a.first_eta_unknown),
        "shown_eta_unknown_share": _r(
            unknown / (unknown + len(shown_errors))
            if (unknown := sum(a.unknown_etas for a in admitted)) + len(shown_errors)
            else None,
            4,
        ),
        "max_position_age_s": _r(max_doc_age_s),
        "rank_correlation_after_start": _r(fairness, 4),
        "abandoned_called": len(reclaim),
        "reclaim_p50_s": _r(percentile(reclaim, 50)),
        "reclaim_max_s": _r(max(reclaim) if reclaim else None),
        "stall_ratio": _r(stalled / played if played else None, 5),
        "mixer_clock_late_p99_s": clock_late_p99_s,
        "mixer_clock_late_whole_run_p99_s": clock_late_whole_p99_s,
        "max_admitted_seen": max_admitted,
        "max_playing_in_generator": max_playing,
        "admitted_beyond_cap": max(0, max_admitted - cap, max_playing - cap),
        "refusals": dict(refusals),
        "client_cpu_percent": round(client_cpu_percent, 1),
        "client_saturated": client_cpu_percent >= 90.0,
    }


def format_table(summary: Mapping[str, Any]) -> str:
    def f(key: str, unit: str = "") -> str:
        value = summary.get(key)
        return "-" if value is None else f"{value}{unit}"

    rows = [
        ("target", f("url")),
        (
            "cap / arrivals (before start)",
            f"{f('cap')} / {f('arrivals')} ({f('arrived_before_start')})",
        ),
        (
            "admitted / queued / gave up / still waiting",
            f"{f('admitted')} / {f('queued')} / {f('gave_up')} / {f('still_waiting')}",
        ),
        ("start delay (go-live to first audio)", f("start_delay_s", " s")),
        ("time to first audio p50 / p99", f"{f('ttfa_p50_s', ' s')} / {f('ttfa_p99_s', ' s')}"),
        ("wait p50 / p99", f"{f('wait_p50_s', ' s')} / {f('wait_p99_s', ' s')}"),
        ("ETA error p50 / p90 (first given)", f"{f('eta_error_p50')} / {f('eta_error_p90')}"),
        (
            "ETA error p50 / p90 (as shown)",
            f"{f('shown_eta_error_p50')} / {f('shown_eta_error_p90')}",
        ),
        (
            "ETA error p50 / p90 (as shown, measured full-line speed only)",
            f"{f('shown_eta_error_p50_measured_speed')} / {f('shown_eta_error_p90_measured_speed')}",
        ),
        (
            "ETA error p50 / p90 (as shown, old model: position / line speed)",
            f"{f('shown_eta_error_p50_old_model')} / {f('shown_eta_error_p90_old_model')}",
        ),
        (
            "ETA not known yet: first answers / share of looks",
            f"{f('eta_first_unknown')} / {f('shown_eta_unknown_share')}",
        ),
        ("oldest position shown", f("max_position_age_s", " s")),
        ("rank correlation after the start", f("rank_correlation_after_start")),
        (
            "abandoned places reclaimed (p50 / max)",
            f"{f('abandoned_called')} ({f('reclaim_p50_s', ' s')} / {f('reclaim_max_s', ' s')})",
        ),
        ("stall ratio of admitted listeners", f("stall_ratio")),
        (
            "mixer clock lateness p99 (from go-live + 2 s / whole run)",
            f"{f('mixer_clock_late_p99_s', ' s')} / {f('mixer_clock_late_whole_run_p99_s', ' s')}",
        ),
        ("admitted beyond the cap", f("admitted_beyond_cap")),
        (
            "refusals",
            ", ".join(f"{k} {v}" for k, v in summary.get("refusals", {}).items()) or "none",
        ),
        (
            "load generator CPU",
            f"{f('client_cpu_percent')} % of one core"
            + ("  (SATURATED)" if summary.get("client_saturated") else ""),
        ),
    ]
    probe = summary.get("probe") or {}
    if probe:

        def g(key: str, unit: str = "") -> str:
            value = probe.get(key)
            return "-" if value is None else f"{value}{unit}"

        rows += [
            (
                "generator CPU per second p50 / max (s >= 95 %)",
                f"{g('generator_cpu_p50_percent', ' %')} / {g('generator_cpu_max_percent', ' %')}"
                f" ({g('generator_seconds_saturated')})",
            ),
            ("generator event-loop lag max", g("loop_lag_max_s", " s")),
            (
                "server CPU per second p50 / max",
                f"{g('server_cpu_p50_percent', ' %')} / {g('server_cpu_max_percent', ' %')}",
            ),
            (
                "waiting for a CPU p50 / max: generator, server",
                f"{g('generator_wait_p50_percent', ' %')} / {g('generator_wait_max_percent', ' %')}, "
                f"{g('server_wait_p50_percent', ' %')} / {g('server_wait_max_percent', ' %')}",
            ),
            (
                "join answer p50 / p99 / max (as the generator saw it)",
                f"{g('join_s_p50', ' s')} / {g('join_s_p99', ' s')} / {g('join_s_max', ' s')}",
            ),
            (
                "origin queue.json answers per second p50 / max",
                f"{g('origin_queue_docs_per_s_p50')} / {g('origin_queue_docs_per_s_max')}",
            ),
        ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def plot(samples: Sequence[Sample], path: Path, *, live_at: float | None) -> None:
    """Admitted, waiting and arrivals over time (PNG)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if samples:
        t0 = samples[0].at
        xs = [s.at - t0 for s in samples]
        ax.plot(xs, [s.arrivals for s in samples], label="arrivals (cumulative)")
        ax.plot(xs, [s.waiting for s in samples], label="waiting (queue.json)")
        ax.plot(xs, [s.admitted for s in samples], label="admitted (queue.json)")
        if live_at is not None:
            ax.axvline(live_at - t0, color="grey", linestyle=":", label="go-live")
    ax.set_xlabel("seconds")
    ax.set_ylabel("listeners")
    ax.set_title("Join storm: admitted, waiting and arrivals")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
