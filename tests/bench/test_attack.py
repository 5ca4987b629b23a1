"""`townhall bench attack`: the pure helpers and one small bounded run."""

from __future__ import annotations

import orjson
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
