"""`townhall bench join` against a real server (small, bounded runs)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from tests.conftest import LiveServer
from townhall.bench.join import Tally, join_command, percentile, summarize

# bench join floods from one address: lift the per-network join bucket and the
# proof-of-work threshold (issue 10), which would otherwise (rightly) stop it
UNLIMITED = {
    "TOWNHALL_JOINS_PER_NETWORK_PER_10S": "1000000",
    "TOWNHALL_CHALLENGE_JOINS_PER_S": "1000000",
}


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path / "data", UNLIMITED).start()
    try:
        yield server
    finally:
        server.stop()


def test_bench_join_reports_joins_latency_and_cpu(live_server: LiveServer) -> None:
    result = CliRunner().invoke(
        join_command,
        [
            "--target",
            live_server.url,
            "--concurrency",
            "4",
            "--requests",
            "300",
            "--duration-s",
            "30",
            "--json",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert report["joins_ok"] == 300 and report["errors"] == {}
    assert (
        0
        < report["latency_ms"]["p50"]
        <= report["latency_ms"]["p99"]
        <= report["latency_ms"]["max"]
    )
    assert report["joins_per_s"] > 0 and report["generator_cpu_s"] >= 0
    # the joins were real: the server counted them
    metrics = live_server_metrics(live_server)
    assert 'townhall_joins_total{kind="new"} 300.0' in metrics


def live_server_metrics(server: LiveServer) -> str:
    import httpx

    return httpx.get(server.url + "/metrics", timeout=5).text


def test_bench_join_counts_errors_by_kind(live_server: LiveServer) -> None:
    result = CliRunner().invoke(
        join_command,
        [
            "--target",
            live_server.url,
            "--space",
            "nosuchspace0",
            "--requests",
            "20",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "http_404: 20" in result.output
    assert "joins/s" in result.output


def test_bench_join_refuses_remote_targets() -> None:
    result = CliRunner().invoke(
        join_command, ["--target", "http://192.0.2.10:8000", "--requests", "1"]
    )
    assert result.exit_code == 2
    assert "not a loopback address" in result.output


def test_summary_percentiles() -> None:
    tally = Tally(latencies_s=[i / 1000 for i in range(1, 101)])
    tally.errors["timeout"] = 2
    report = summarize(tally, wall_s=2.0, cpu_s=0.5, concurrency=8)
    assert report["joins_per_s"] == 50.0
    assert report["latency_ms"] == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert report["error_count"] == 2 and report["generator_cpu_percent"] == 25.0
    assert percentile([], 99) == 0.0
