"""`townhall bench attack`: the pure helpers and one small bounded run."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from tests.conftest import LiveServer
from townhall.bench.attack import attack_command, source_address, time_to_mitigate


def test_sources_spread_over_networks_and_skip_the_legit_one() -> None:
    addresses = [source_address(i, 300) for i in range(900)]
    assert len(set(addresses)) == 900
    assert len({a.rsplit(".", 1)[0] for a in addresses}) == 300
    assert not any(a.startswith("127.0.") for a in addresses)


def test_time_to_mitigate() -> None:
    samples = [(1.0, 1.0), (5.0, 0.5), (6.0, 0.9), (7.0, 0.97), (8.0, 1.0)]
    assert time_to_mitigate(samples, 4.0) == 3.0
    assert time_to_mitigate([(1.0, 1.0), (5.0, 1.0)], 4.0) == 0.0
    assert time_to_mitigate([(5.0, 0.2)], 4.0) is None


def test_small_join_flood_is_refused_by_network(live_server: LiveServer) -> None:
    result = CliRunner().invoke(
        attack_command,
        [
            "--target", live_server.url, "--shape", "join", "--sources", "20",
            "--networks", "2", "--rate", "150", "--connections", "8", "--listeners", "2",
            "--duration-s", "6", "--attack-start-s", "1", "--json", "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert report["attack_attempts"] > 100
    # two /24s, 200 joins per 10 s each: most of the flood is refused
    assert report["attack_statuses"].get("429", 0) > 0
    assert report["attacker_success_per_1000"] < 1000
    assert report["legit_joins"] == 2 and report["timeline"]


def test_refuses_a_remote_target() -> None:
    result = CliRunner().invoke(attack_command, ["--target", "http://192.0.2.1:80"])
    assert result.exit_code != 0 and "loopback" in result.output


@pytest.mark.parametrize("shape", ["headers", "slowloris"])
def test_connection_shapes_are_cut_and_a_new_listener_still_plays(
    tmp_path: Path, shape: str
) -> None:
    """Endless headers are cut at the head limit (431), slow heads at the header
    timeout (408); both reconnect; a listener joining meanwhile plays; the
    report carries the server's memory."""
    env = {"TOWNHALL_PROGRAM_WAITS_FOR_HOST": "false", "TOWNHALL_HTTP_HEADER_TIMEOUT_S": "2"}
    server = LiveServer(tmp_path / "data", env).start()
    try:
        result = CliRunner().invoke(
            attack_command,
            [
                "--target", server.url, "--shape", shape, "--sources", "20", "--networks", "4",
                "--slow-connections", "10", "--header-rate", "1000000", "--listeners", "1",
                "--duration-s", "9", "--attack-start-s", "1", "--probe-at-s", "2",
                "--json", "--no-progress",
            ],
        )  # fmt: skip
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert report["attack_statuses"].get("cut_by_server", 0) >= 10, report["attack_statuses"]
    assert report["attack_attempts"] > 10  # they came back after being cut
    assert report["probe_join_s"] is not None and report["probe_join_to_audio_s"] is not None
    assert report["server_rss_mb_before_attack"] and report["server_rss_mb_after"]
