"""The pure parts of the local bus (server/local_bus.py) and its door: the
primary's endpoints answer only with the supervisor's secret."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAST_ARGON2
from townhall.config import Settings
from townhall.origin.bus import Closed, Entry
from townhall.origin.entry_log import EntryLog
from townhall.server.app import create_app
from townhall.server.local_bus import PRIMARY_FILE, SECRET_HEADER, primary_url


def entry(seq: int) -> Entry:
    return Entry(seq, Closed(False))


def test_the_log_keeps_the_newest_entries_of_each_room() -> None:
    log = EntryLog(max_entries=3)
    assert log.after("a", 0) is None  # no such room here
    for seq in range(1, 6):
        log.add("a", entry(seq))
    log.add("b", entry(1))
    assert [e.seq for e in log.after("a", 0) or []] == [3, 4, 5]  # 1-2 gone: the reader sees a gap
    assert [e.seq for e in log.after("a", 4) or []] == [5]
    assert log.after("a", 5) == []
    assert [e.seq for e in log.after("b", 0) or []] == [1]
    log.drop("a")
    assert log.after("a", 0) is None


async def test_a_long_poll_wakes_on_the_next_entry_and_on_the_rooms_end() -> None:
    log = EntryLog(max_entries=8)
    log.add("a", entry(1))
    assert await log.wait_after("a", 1, 0.05) == []  # nothing new: at the end of the wait
    waiting = asyncio.create_task(log.wait_after("a", 1, 5.0))
    await asyncio.sleep(0.05)
    log.add("a", entry(2))
    assert [e.seq for e in await asyncio.wait_for(waiting, 1.0) or []] == [2]
    waiting = asyncio.create_task(log.wait_after("a", 2, 5.0))
    await asyncio.sleep(0.05)
    log.drop("a")
    assert await asyncio.wait_for(waiting, 1.0) is None
    log.add("a", entry(1))
    log.drop_if_idle("a", {"a": object()})  # runs again: kept
    assert log.after("a", 0) is not None
    log.drop_if_idle("a", {})
    assert log.after("a", 0) is None


@pytest.mark.parametrize(
    ("written", "url"),
    [
        ({"url": "http://127.0.0.1:4711", "pid": 1}, "http://127.0.0.1:4711"),
        ({"url": "http://10.0.0.1:4711", "pid": 1}, None),  # loopback only
        ({"pid": 1}, None),
        (["http://127.0.0.1:1"], None),
        (None, None),  # no file
    ],
)
def test_the_primarys_address(tmp_path: Path, written: object, url: str | None) -> None:
    if written is not None:
        (tmp_path / PRIMARY_FILE).parent.mkdir(parents=True)
        (tmp_path / PRIMARY_FILE).write_text(json.dumps(written))
    assert primary_url(tmp_path) == url


@pytest.mark.parametrize("role", ["primary", ""])
async def test_the_local_bus_answers_only_with_the_secret(tmp_path: Path, role: str) -> None:
    secret = "s3cret-of-the-supervisor" if role else ""
    settings = Settings(
        data_dir=tmp_path,
        worker_role=role,
        local_bus_secret=secret,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        if role:
            assert json.loads((tmp_path / PRIMARY_FILE).read_text())["pid"] > 0
            assert type(app.state.services.rooms.local_log) is EntryLog
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            path = "/_townhall/local/s1/entries?after=0"
            for headers in ({}, {SECRET_HEADER: "guess"}, {SECRET_HEADER: ""}):
                assert (await client.get(path, headers=headers)).status_code == 404
            # with the secret: there is no such room on this primary
            known = {SECRET_HEADER: secret}
            assert (await client.get(path, headers=known)).status_code == 404
            snapshot = "/_townhall/local/s1/snapshot"
            assert (await client.get(snapshot, headers=known)).status_code == 404
            assert "/_townhall/" not in (await client.get("/api/openapi.json")).text


def test_a_listener_worker_waits_for_the_primary(tmp_path: Path) -> None:
    import http.server
    import threading

    from townhall.server.local_bus import wait_for_primary

    assert wait_for_primary(tmp_path, 0.3) is False  # nothing published
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / PRIMARY_FILE).parent.mkdir(parents=True)
        gone = {"url": "http://127.0.0.1:1", "pid": 1}  # published, but nobody answers
        (tmp_path / PRIMARY_FILE).write_text(json.dumps(gone))
        assert wait_for_primary(tmp_path, 0.3) is False
        there = {"url": f"http://127.0.0.1:{server.server_address[1]}", "pid": 2}
        (tmp_path / PRIMARY_FILE).write_text(json.dumps(there))
        assert wait_for_primary(tmp_path, 5.0) is True  # it answers (501 is an answer)
    finally:
        server.shutdown()
