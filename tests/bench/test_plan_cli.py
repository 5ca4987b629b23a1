"""`townhall bench plan` end to end: the real command in a child process, on
the calibration shipped with the package, bounded in time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "townhall", "bench", "plan", "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )


def test_plan_prints_json_and_a_plot(tmp_path: Path) -> None:
    png = tmp_path / "plan.png"
    done = run(
        "--arrivals", "200000", "--over-s", "20", "--cap", "50000", "--admit-rate", "5000",
        "--pre-s", "5", "--listen-s", "30", "--json", "--plot", str(png),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["scenario"]["arrivals"] == 200_000
    assert plan["origin_cores"] >= 1 and plan["cache_nodes"] >= 1
    assert plan["peak_listeners"] <= 50_000 * 1.0001
    waits = plan["wait_s"]
    assert 0 < waits["p50"] <= waits["p99"] <= waits["max"]
    assert plan["start_delay_s"] is not None and plan["start_delay_s"] > 0
    assert plan["redis_ops_peak_per_s"] > 0 and plan["egress_peak_gbps"] > 0
    assert len(plan["sweep"]) >= 5
    cores = [p["origin_cores"] for p in plan["sweep"]]
    assert cores == sorted(cores)  # more arrivals never need fewer cores
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_table_for_the_default_night() -> None:
    done = run()
    assert done.returncode == 0, done.stderr
    assert "20,000,000 in 60 s" in done.stdout
    for row in ("origin cores", "cache nodes", "Redis ops/s", "start delay", "wait p50", "egress"):
        assert row in done.stdout


def test_plan_refuses_bad_input_with_a_sentence(tmp_path: Path) -> None:
    done = run("--give-up", "3")
    assert done.returncode == 2 and "give_up is a fraction" in done.stderr
    missing = tmp_path / "none.json"
    done = run("--costs", str(missing))
    assert done.returncode == 2 and "plan_calibrate.py" in done.stderr
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"origin_us": {"join": 1}}))
    done = run("--costs", str(broken))
    assert done.returncode == 2 and "lacks" in done.stderr and "nginx_us" in done.stderr
    done = run("--over-s", "86400", "--step-s", "0.01")
    assert done.returncode == 2 and "--step-s" in done.stderr


def test_the_space_feed_shortens_the_start_behind_one_cache() -> None:
    # behind one nginx, a fetch just after the draw that reaches a node
    # without the go-live brings the old copy for 2 s more; with the feed no
    # node is without it a few ms after the draw
    night = ("--arrivals", "200000", "--over-s", "20", "--cap", "50000", "--admit-rate", "5000",
             "--pre-s", "5", "--cache-nodes", "1", "--json")  # fmt: skip
    fed, refreshed = run(*night), run(*night, "--no-space-feed")
    assert fed.returncode == 0 and refreshed.returncode == 0, fed.stderr + refreshed.stderr
    with_feed, without = json.loads(fed.stdout), json.loads(refreshed.stdout)
    assert with_feed["scenario"]["golive_published"] is True
    assert without["scenario"]["golive_published"] is False
    assert without["start_delay_s"] > with_feed["start_delay_s"] + 0.2
