"""The table of ``benchmarks/attack_full.sh``: one row per ``townhall bench
attack --json`` result, in Markdown, with issue 10's bars checked.

    python -m townhall.bench.attack_table RESULT.json ...

A file's name is ``MODE-SHAPE.json`` (``inproc-join.json``); a result the
run could not produce (the file is empty or not JSON) is a row saying so.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

GOODPUT_BAR = 0.95
MITIGATE_BAR_S = 5.0
CLOCK_BAR_S = 0.020
JOIN_BAR_S = 3.0
RSS_BAR_MB = 100.0
REPLAY_ALLOWANCE_PER_10S = 10  # reactions_per_token_per_10s's default

COLUMNS = (
    "mode",
    "shape",
    "attack req/s sent / answered",
    "legit goodput min / mean",
    "back >= 95 %",
    "attacker success /1000",
    "frames skipped",
    "mixer clock p99",
    "RSS before / max / after (MB)",
    "new listener join to audio",
    "server CPU",
    "load gen CPU mean / max",
    "load avg",
    "bars",
)


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def bars(r: dict[str, Any]) -> list[str]:
    """The bars this result misses (empty: all met)."""
    missed = []
    if (r.get("legit_goodput_min") or 0.0) < GOODPUT_BAR:
        missed.append("goodput")
    ttm = r.get("time_to_mitigate_s")
    if ttm is None or ttm > MITIGATE_BAR_S:
        missed.append("5 s")
    accepted = (r.get("attacker_success_per_1000") or 0.0) * (r.get("attack_attempts") or 0) / 1000
    if r["shape"] in ("forged", "ticket") and accepted > 0:
        missed.append("accepted")
    if r["shape"] == "replay":
        # a replayed real token is its owner's as far as the server can tell:
        # it keeps the token's own reaction allowance (a burst, then the rate)
        attack_s = r["duration_s"] - r["attack_start_s"]
        if accepted > REPLAY_ALLOWANCE_PER_10S * (1 + attack_s / 10) + 0.5:
            missed.append("accepted beyond the token's own limit")
    p99 = r.get("mixer_clock_late_p99_s")
    if p99 is None or p99 > CLOCK_BAR_S:
        missed.append("clock")
    if r["shape"] in ("slowloris", "headers"):
        join = r.get("probe_join_to_audio_s")
        if join is None or join > JOIN_BAR_S:
            missed.append("join 3 s")
        before, peak = r.get("server_rss_mb_before_attack"), r.get("server_rss_mb_max")
        if before is None or peak is None:
            missed.append("memory (no figure)")
        elif peak - before > RSS_BAR_MB:
            missed.append("memory")
    if r.get("client_saturated"):
        missed.append("GENERATOR SATURATED")
    if r.get("client_starved"):
        missed.append("generator starved")
    return missed


def row(mode: str, shape: str, r: dict[str, Any] | None) -> list[str]:
    if r is None:
        return [mode, shape, "no result (see its .err file)", *["-"] * (len(COLUMNS) - 3)]
    load = r.get("load_average") or []
    shape_name = "control (1 req/s)" if r.get("rate_per_s", 0) <= 1 else shape
    if r["shape"] in ("slowloris", "headers"):
        sent = f"{_f(r.get('attack_attempts'))} connections opened"
    else:
        sent = f"{_f(r.get('attack_per_s'), 0)} / {_f(r.get('attack_answered_per_s'), 0)}"
    p99 = r.get("mixer_clock_late_p99_s")
    missed = bars(r)
    return [
        mode,
        shape_name,
        sent,
        f"{_f(r.get('legit_goodput_min'))} / {_f(r.get('legit_goodput_mean'))}",
        "never" if r.get("time_to_mitigate_s") is None else f"{r['time_to_mitigate_s']:g} s",
        _f(r.get("attacker_success_per_1000"), 1),
        _f(r.get("mixer_skipped_frames"), 0),
        "> 1 s" if p99 is None else f"{1000 * p99:g} ms",
        " / ".join(
            _f(r.get(k), 0)
            for k in ("server_rss_mb_before_attack", "server_rss_mb_max", "server_rss_mb_after")
        ),
        "-" if r.get("probe_join_to_audio_s") is None else f"{r['probe_join_to_audio_s']:.3f} s",
        f"{_f(r.get('server_cpu_percent'), 0)} %",
        f"{_f(r.get('client_cpu_percent'), 0)} / {_f(r.get('client_cpu_max_percent'), 0)} %",
        " / ".join(f"{x:.1f}" for x in load) or "-",
        "all met" if not missed else "missed: " + ", ".join(missed),
    ]


def table(paths: list[Path]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for path in paths:
        mode, _, shape = path.stem.partition("-")
        try:
            result: dict[str, Any] | None = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            result = None
        lines.append("| " + " | ".join(row(mode, shape, result)) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    print(table([Path(a) for a in argv]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
