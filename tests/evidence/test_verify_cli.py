"""`townhall evidence verify`: against a real server, and on stored chains
(two recorded scenarios, a flash crowd and an attack), failing by name."""

from __future__ import annotations

import random
import time
from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import LiveServer
from tests.evidence.test_evidence import Clock, _attack, _flash_crowd
from townhall.cli.main import main
from townhall.evidence.book import EvidenceBook, make_document
from townhall.evidence.rule import Thresholds


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["evidence", "verify", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("scenario", "label"), [(_flash_crowd, "flash crowd"), (_attack, "attack")]
)
def test_recorded_scenarios_verify_and_fail_on_one_byte(  # type: ignore[no-untyped-def]
    tmp_path: Path, scenario, label
) -> None:
    clock = Clock()
    book = EvidenceBook(Ed25519PrivateKey.generate(), b"k", clock=clock)
    scenario(book, clock, random.Random(3))
    book.tick()
    doc = book.document("s")
    assert doc is not None
    path = tmp_path / "evidence.json"
    path.write_bytes(orjson.dumps(doc))
    code, out = _run(str(path), "--key", book.public_key)
    assert code == 0, out
    assert f"{label}: 1" in out and "verified" in out
    # one byte of record 1 changed (the first digit of its arrivals)
    raw = path.read_bytes()
    at = raw.index(b'"arrivals":', raw.index(b'"arrivals":') + 1) + len(b'"arrivals":')
    digit = raw[at : at + 1]
    changed = raw[:at] + (b"9" if digit != b"9" else b"8") + raw[at + 1 :]
    path.write_bytes(changed)
    code, out = _run(str(path), "--key", book.public_key)
    assert code == 1 and "record #1 (seq 1)" in out and "signature" in out


def test_verify_a_live_server_chain(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", {"TOWNHALL_EVIDENCE_INTERVAL_S": "1"}).start()
    try:
        with httpx.Client(base_url=server.url) as client:
            client.post(
                "/api/accounts", json={"username": "hostess", "password": "correct horse 1"}
            )
            session = client.post(
                "/api/sessions", json={"username": "hostess", "password": "correct horse 1"}
            ).json()["token"]
            space = client.post(
                "/api/spaces", json={"title": "t"}, headers={"Authorization": f"Bearer {session}"}
            ).json()
        for i in range(1, 6):  # from five loopback networks
            transport = httpx.HTTPTransport(local_address=f"127.0.{i}.1")
            with httpx.Client(base_url=server.url, transport=transport) as client:
                assert client.post(f"/api/spaces/{space['id']}/join").status_code == 200
        url = f"{server.url}/spaces/{space['id']}/evidence.json"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(httpx.get(url).json()["records"]) < 2:
            time.sleep(0.3)
        doc = httpx.get(url).json()
        assert doc["records"][0]["arrivals"] == 5
        assert doc["records"][0]["networks_estimate"] == 5
        code, out = _run(url)
        assert code == 0, out
        # a record re-signed with another key, or a doc carrying another key, fails
        other = Ed25519PrivateKey.generate()
        forged = make_document(
            space["id"], EvidenceBook(other, b"x").public_key, doc["records"], 1, Thresholds()
        )
        path = tmp_path / "forged.json"
        path.write_bytes(orjson.dumps(forged))
        key = httpx.get(f"{server.url}/api/evidence/key").json()["public_key"]
        code, out = _run(str(path), "--key", key)
        assert code == 1 and "not the node's key" in out
        # the chain is kept with the recording
        assert (tmp_path / "data" / "recordings" / space["id"] / "evidence.jsonl").exists()
    finally:
        server.stop()
