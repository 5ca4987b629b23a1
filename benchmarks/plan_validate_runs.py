#!/usr/bin/env python3
"""The model's start delay against several validation runs, not one.

    python benchmarks/plan_validate_runs.py benchmarks/results/plan_validate_rtt50_0939.json ...

One run's start delay (go-live to the first page's first audio) falls
wherever the run's phase puts it: when the one nginx in front fetches
queue.json again after the draw, and which node that fetch reaches. The model
gives the start delay as a distribution over that phase
(townhall.bench.plan_notice): its mean, and p10-p90. This script reads the
results of benchmarks/plan_validate.py (predicted again with ``--model-only``
after a model change), and puts the runs' mean beside the model's mean (the
bar: within 20 %), with the standard error of the runs' mean, and counts the
runs inside the model's p10-p90 (about 8 in 10 if the spread is right). With
``--plot`` it draws the model's distribution and the runs on it (PNG).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs' start delays beside the model's, and the other figures'
    ratios per run (predicted over measured)."""
    runs = []
    for r in results:
        m, p = r["measured"], r["predicted"]
        runs.append(
            {
                "run": r.get("name"),
                "measured_s": m.get("start_delay_s"),
                "model_mean_s": p.get("start_delay_s"),
                "model_spread_s": p.get("start_delay_spread_s"),
                "inside_p10_p90": r.get("start_delay_inside_p10_p90"),
                "ratios": r.get("predicted_over_measured", {}),
                "load_before": r.get("load_before"),
                "notice": r.get("first_audio_by_admission", {}).get("notice"),
            }
        )
    measured = [float(x["measured_s"]) for x in runs if x["measured_s"] is not None]
    models = [float(x["model_mean_s"]) for x in runs if x["model_mean_s"] is not None]
    out: dict[str, Any] = {"runs": runs}
    if measured and models:
        mean = statistics.fmean(measured)
        model = statistics.fmean(models)
        sem = statistics.stdev(measured) / math.sqrt(len(measured)) if len(measured) > 1 else None
        out |= {
            "measured_mean_s": round(mean, 3),
            "measured_sem_s": None if sem is None else round(sem, 3),
            "model_mean_s": round(model, 3),
            "model_over_measured_mean": round(model / mean, 3) if mean else None,
            "inside_p10_p90": sum(1 for x in runs if x["inside_p10_p90"]),
            "of": len(runs),
        }
    keys = ("origin_cpu_mean_cores", "ttfa_after_admission_p50_s", "ttfa_after_admission_p99_s")
    out["ratio_means"] = {
        k: round(statistics.fmean(vals), 3)
        for k in keys
        if (vals := [float(x["ratios"][k]) for x in runs if x["ratios"].get(k) is not None])
    }
    return out


def plot(summary: dict[str, Any], phases: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    if phases:
        xs = sorted(phases)
        ax.step(
            xs,
            [(i + 0.5) / len(xs) for i in range(len(xs))],
            where="mid",
            label="model: a run's start delay (over its phase)",
        )
    measured = sorted(
        float(x["measured_s"]) for x in summary["runs"] if x["measured_s"] is not None
    )
    if measured:
        ax.plot(
            measured,
            [(i + 0.5) / len(measured) for i in range(len(measured))],
            "o",
            label="measured runs (sorted)",
        )
    for key, color, whose in (
        ("measured_mean_s", "C1", "runs'"),
        ("model_mean_s", "C0", "model's"),
    ):
        if summary.get(key) is not None:
            value = summary[key]
            ax.axvline(value, color=color, ls="--", lw=1, label=f"{whose} mean {value:.2f} s")
    ax.set_xlabel("start delay: go-live to the first page's first audio (s)")
    ax.set_ylabel("share of runs")
    ax.set_ylim(0, 1)
    ax.set_title("The start delay through one nginx, 50 ms away: model and runs")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="plan_validate.py result JSON files")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/plan_validate_runs.json")
    ap.add_argument("--plot", type=Path, default=None, help="Write a PNG.")
    args = ap.parse_args(argv)
    results = []
    for path in args.results:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"{path}: cannot read it ({exc}); leave it out or run it again.", file=sys.stderr)
            return 2
        if "predicted" not in data or "measured" not in data:
            print(f"{path}: not a plan_validate.py result.", file=sys.stderr)
            return 2
        data["name"] = path.stem
        results.append(data)
    summary = summarize(results)
    summary["command"] = "python benchmarks/plan_validate_runs.py " + " ".join(
        str(p.relative_to(ROOT)) if p.is_absolute() and ROOT in p.parents else str(p)
        for p in args.results
    )
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    if args.plot is not None:
        # the model's start delay over the phases, pooled over the runs
        phases = [float(v) for r in results for v in r["predicted"].get("start_delay_points_s", [])]
        plot(summary, phases, args.plot)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
