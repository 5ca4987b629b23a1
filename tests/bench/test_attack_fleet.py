"""`townhall bench attack` at full size's parts: listeners each from their own
loopback address, pipelined floods, the generator's own CPU, the table."""

from __future__ import annotations

from pathlib import Path

import httptools
import orjson
from click.testing import CliRunner

from tests.conftest import LiveServer
from townhall.bench.attack import attack_command, listener_address, source_address
from townhall.bench.attack_table import table
from townhall.bench.flood import FLOOD_SHAPES, request_maker


def test_listener_addresses_are_their_own_and_apart_from_the_attack() -> None:
    listeners = [listener_address(i, 250) for i in range(1000)]
    assert len(set(listeners)) == 1000
    assert len({a.rsplit(".", 1)[0] for a in listeners}) == 250
    assert all(a.startswith("127.0.") and not a.startswith("127.0.0.") for a in listeners)
    attack = {source_address(i, 1000) for i in range(1000)}
    assert not attack & set(listeners)


class _Count:
    def __init__(self) -> None:
        self.messages = 0
        self.bodies: list[bytes] = []
        self.auth: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.auth.append(value)

    def on_body(self, body: bytes) -> None:
        self.bodies.append(body)

    def on_message_complete(self) -> None:
        self.messages += 1


def _parse(data: bytes) -> _Count:
    count = _Count()
    httptools.HttpRequestParser(count).feed_data(data)
    return count


def test_flood_requests_are_well_formed_and_forged_ones_all_differ() -> None:
    for shape in FLOOD_SHAPES:
        make = request_maker(shape, "sp1", "127.0.0.1:9", "tok.en.sig")
        assert _parse(make(7)).messages == 7, shape
    signins = _parse(request_maker("signin", "sp1", "127.0.0.1:9", None)(20))
    names = {orjson.loads(b)["username"] for b in signins.bodies}
    assert len(names) == 20 and all(0 < len(n) <= 64 for n in names)
    forged = _parse(request_maker("forged", "sp1", "127.0.0.1:9", None)(50))
    assert len(set(forged.auth)) == 50
    tickets = _parse(request_maker("ticket", "sp1", "127.0.0.1:9", None)(20))
    assert len({orjson.loads(b)["ticket"] for b in tickets.bodies}) == 20


def test_listeners_from_their_own_networks_and_a_forged_flood(tmp_path: Path) -> None:
    """20 listeners from 20 /24s join a server that lets one join per /24 in
    10 s (so they only all get in from addresses of their own) and keep
    playing beside a pipelined flood of forged tokens at 5 x their request
    rate from 50 sources: none is accepted; goodput and the generator's own
    CPU are reported."""
    env = {"TOWNHALL_JOINS_PER_NETWORK_PER_10S": "1"}
    server = LiveServer(tmp_path / "data", env).start()
    try:
        result = CliRunner().invoke(
            attack_command,
            [
                "--target", server.url, "--shape", "forged", "--rate-x", "5",
                "--sources", "50", "--networks", "50", "--listeners", "20",
                "--listener-networks", "20", "--duration-s", "10", "--attack-start-s", "5",
                "--probe-at-s", "100", "--json", "--no-progress",
            ],
        )  # fmt: skip
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output[result.output.index("{") :])
    assert report["legit_joins"] == 20, report["legit_errors"]
    assert report["legit_playing_at_end"] == 20
    assert report["legit_req_per_s"] > 20  # a blocking reload and a part per listener and part
    assert report["rate_per_s"] > 100
    assert report["attack_attempts"] > 300
    assert report["attack_connections_peak"] == 50
    assert report["attacker_success_per_1000"] == 0
    answered = {k for k in report["attack_statuses"] if k.isdigit()}
    assert answered and answered <= {"401", "429"}, report["attack_statuses"]
    assert report["legit_goodput_mean"] is not None
    assert report["client_cpu_percent"] > 0 and report["client_cpu_max_percent"] is not None
    assert isinstance(report["client_saturated"], bool)
    path = tmp_path / "inproc-forged.json"
    path.write_bytes(orjson.dumps(report))
    rows = table([path, tmp_path / "inproc-missing.json"]).splitlines()
    assert len(rows) == 4 and "| inproc | forged |" in rows[2] and "no result" in rows[3]


async def test_a_churning_flood_drops_the_connections_a_server_stopped_answering() -> None:
    # a real loopback server that reads nothing and answers nothing (a
    # connection the origin paused): the flood drops each full, unanswered
    # connection after churn_s and opens a new one; without churn it keeps it
    import asyncio
    import time

    from townhall.bench.flood import Flood, Tally

    accepted = 0

    def on_connect(_r: asyncio.StreamReader, _w: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        results = {}
        for churn in (None, 0.1):
            before = accepted
            flood = Flood(
                port=port,
                sources=["127.0.0.1"],
                connections=1,
                make=request_maker("playlist", "sp1", f"127.0.0.1:{port}", None),
                rate_per_s=200.0,
                pipeline=4,
                deadline_s=time.monotonic() + 0.8,
                tally=Tally(),
                success_status=None,
                churn_s=churn,
            )
            await flood.run()
            results[churn] = (flood.churned, accepted - before)
        assert results[None] == (0, 1), results
        churned, opened = results[0.1]
        assert churned >= 3 and opened >= churned, results
    finally:
        server.close()
        await server.wait_closed()
