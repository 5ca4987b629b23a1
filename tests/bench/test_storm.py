"""`townhall bench storm`: its pure figures, and a small real storm against a
real server with a cap (nobody beyond the cap, the line moves, places of
those who gave up are reclaimed)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LiveServer
from townhall.bench.hlsclient import ListenerStats
from townhall.bench.playout import Playout
from townhall.bench.storm import clock_late_p99
from townhall.bench.storm_client import CookieConnection, write_records
from townhall.bench.storm_probe import ProbeSecond, join_latency, queue_docs_of, summarize_probe
from townhall.bench.storm_report import Arrival, Sample, reclaim_times, spearman
from townhall.bench.storm_wait import Lookouts, look


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_reclaim_times() -> None:
    a = Arrival(
        0, 0.0, False, 5.0, 10.0, ListenerStats(0.0, Playout(0.0)), number=3, gave_up_at=1.0
    )
    samples = [
        Sample(10.0, 0, 5, 2, 0, 10, 0),
        Sample(11.0, 0, 5, 3, 0, 10, 0),  # called
        Sample(17.5, 0, 5, 4, 1, 10, 0),  # released
    ]
    assert reclaim_times([a], samples) == [6.5]


def test_clock_late_p99() -> None:
    def scrape(counts: list[int]) -> str:
        bounds = ["0.001", "0.005", "0.02", "+Inf"]
        return "\n".join(
            f'townhall_mixer_clock_late_seconds_bucket{{le="{b}"}} {c}'
            for b, c in zip(bounds, counts, strict=True)
        )

    assert clock_late_p99(scrape([0, 0, 0, 0]), scrape([980, 995, 1000, 1000])) == 0.005
    assert clock_late_p99(scrape([5, 5, 5, 5]), scrape([5, 5, 5, 5])) is None


@pytest.mark.slow
def test_small_storm(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", extra_env={"TOWNHALL_MAX_LISTENERS": "5"}).start()
    try:
        plot = tmp_path / "storm.png"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "townhall",
                "bench",
                "storm",
                "--target",
                server.url,
                "--arrivals",
                "30",
                "--over-s",
                "2",
                "--pre-s",
                "1",
                "--listen-s",
                "4",
                "--give-up",
                "0.2",
                "--duration-s",
                "25",
                "--json",
                "--plot",
                str(plot),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads(result.stdout)
    finally:
        server.stop()
    assert summary["cap"] == 5 and summary["arrivals"] == 30
    assert summary["admitted_beyond_cap"] == 0
    assert summary["admitted"] > 5  # the line moved as listeners left
    assert summary["start_delay_s"] is not None
    assert summary["max_position_age_s"] < 3
    assert plot.stat().st_size > 1000


def test_probe_summary_flags_hot_seconds() -> None:
    seconds = [
        ProbeSecond(101.0, 40.0, 0.01, 30.0, 2.0, 0.0, 1.0),
        ProbeSecond(102.0, 97.0, 0.02, 35.0, 1.0, 5.0, 2.0),  # saturated
        ProbeSecond(103.0, 50.0, 0.4, 90.0, 3.0, 60.0, 3.0),  # the loop lagged
    ]
    out = summarize_probe(seconds, t0=100.0)
    assert out["generator_seconds_saturated"] == 1
    assert out["seconds_hot"] == [2.0, 3.0]
    assert out["loop_lag_max_s"] == 0.4
    assert out["server_cpu_max_percent"] == 90.0
    assert out["origin_queue_docs_per_s_max"] == 3.0
    assert out["generator_wait_max_percent"] == 60.0
    assert summarize_probe([], t0=None) == {}


def test_join_latency_by_window() -> None:
    out = join_latency([(100.0, 0.01), (101.0, 0.02), (106.0, 2.0)], 100.0)
    assert out["join_s_max"] == 2.0
    assert out["join_s_p99_by_5s"] == [[0, 2, 0.02], [5, 1, 2.0]]


def test_queue_docs_of_sums_statuses() -> None:
    text = (
        "# HELP townhall_queue_documents_total x\n"
        'townhall_queue_documents_total{status="200"} 7.0\n'
        'townhall_queue_documents_total{status="304"} 3.0\n'
        'townhall_joins_total{kind="new"} 99.0\n'
    )
    assert queue_docs_of(text) == 10.0


def _arrival(number: int | None) -> Arrival:
    return Arrival(0, 0.0, False, None, 10.0, ListenerStats(0.0, Playout(0.0)), number=number)


def test_look_decides_as_the_page_does() -> None:
    doc = {"admitting_through": 10, "admit_rate_per_s": 5.0, "drawn": True}
    kw = {"now": 100.0, "posted_at": 99.0, "retry_s": 30.0, "jitter": 0.9}
    eta = lambda *a, **k: 1.0  # noqa: E731
    assert look(_arrival(10), doc, eta_of=eta, **kw)  # its turn
    assert not look(_arrival(11), doc, eta_of=eta, **kw)  # not yet
    assert not look(_arrival(None), doc, eta_of=eta, **kw)  # drawn, but posted 1 s ago
    assert look(_arrival(None), doc, eta_of=eta, **{**kw, "jitter": 0.1})
    assert look(_arrival(11), doc, eta_of=eta, **{**kw, "posted_at": 50.0})  # renewal due


async def test_lookouts_wake_only_whom_it_concerns() -> None:
    doc: dict[str, object] = {"admitting_through": 0, "admit_rate_per_s": 5.0}
    lookouts = Lookouts(lambda: doc, lambda *a, **k: None)
    now = time.monotonic()
    first, second = _arrival(1), _arrival(2)
    quitter = Arrival(0, 0.0, False, 0.5, 10.0, ListenerStats(0.0, Playout(0.0)), number=3)
    f1 = lookouts.wait(first, now, 30.0, now)
    f2 = lookouts.wait(second, now, 30.0, now)
    f3 = lookouts.wait(quitter, now, 30.0, now)
    lookouts.step(now + 2.0)
    assert not f1.done() and not f2.done()
    assert f3.result() is False and quitter.gave_up_at is not None
    doc["admitting_through"] = 1
    lookouts.step(now + 4.0)
    assert f1.result() is True and not f2.done()
    task = asyncio.create_task(lookouts.run(time.monotonic() + 0.1))
    await task
    assert f2.result() is False  # the run ended
    assert len(lookouts) == 0


def test_cookie_connection_keeps_set_cookies() -> None:
    conn = CookieConnection()
    conn.on_header(b"Set-Cookie", b"th_link=abc; Path=/spaces/x/; HttpOnly")
    conn.on_header(b"set-cookie", b"th_exp=123; Path=/spaces/x/")
    conn.on_header(b"Content-Type", b"application/json")
    assert conn.cookies == {"th_link": "abc", "th_exp": "123"}


def test_records_keep_the_queue_documents_read(tmp_path: Path) -> None:
    """--records also writes each queue.json read (FILE.docs), so an ETA model
    can be replayed against the same documents (benchmarks/storm_eta_replay.py)."""
    a = Arrival(0, 0.0, False, None, 10.0, ListenerStats(0.0, Playout(0.0)), number=7)
    a.shown_etas.append((100.0, 12.5))
    path = tmp_path / "run.records"
    docs = [(100.5, b'{"admitting_through":3}'), (101.5, b'{"admitting_through":5}')]
    write_records(path, [a], docs)
    (row,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert row["number"] == 7 and row["shown_etas"] == [[100.0, 12.5]]
    read = [json.loads(line) for line in (tmp_path / "run.records.docs").read_text().splitlines()]
    assert read == [
        {"read_at": 100.5, "doc": {"admitting_through": 3}},
        {"read_at": 101.5, "doc": {"admitting_through": 5}},
    ]
    write_records(tmp_path / "none.records", [a])
    assert not (tmp_path / "none.records.docs").exists()
