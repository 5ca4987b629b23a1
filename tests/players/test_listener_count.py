"""The listener count is who is listening now (issue 12): a listener who stops
saying "still here" leaves the count within ``listener_presence_s``, and a
restart hands the count over to the next process instead of reading 0. The
app in-process over its real HTTP interface; the pure sketch without a loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.conftest import FAST_ARGON2, Api
from townhall.config import Settings
from townhall.live.roomstate import ListenerCounter, load_presence, save_presence
from townhall.server.app import create_app


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_snapshot_is_taken_over_for_one_presence_window(tmp_path: Path) -> None:
    clock = Clock()
    counter = ListenerCounter(ttl_s=4, clock=clock)
    counter.add("gone", "x")
    clock.now = 9  # "gone" was seen two generations ago: not saved
    for i in range(50):
        counter.add("s", f"t{i}")
    path = tmp_path / "presence.json"
    save_presence(counter, path, now_s=1000.0)
    later = Clock()
    fresh = ListenerCounter(ttl_s=4, clock=later)
    assert load_presence(fresh, path, now_s=1003.0, max_age_s=8) == 1
    assert not path.exists()  # used once
    assert abs(fresh.count("s") - 50) <= 2 and fresh.count("gone") == 0
    later.now = 4.1  # the taken-over generation is now the previous one...
    fresh.add("s", "t1")  # one still listening says so
    assert abs(fresh.count("s") - 50) <= 2
    later.now = 8.2  # ...and then forgotten: only who said so since counts
    assert fresh.count("s") == 1


def test_stale_or_broken_snapshot_restores_nothing(tmp_path: Path) -> None:
    counter = ListenerCounter(ttl_s=4)
    counter.add("s", "a")
    path = tmp_path / "presence.json"
    save_presence(counter, path, now_s=1000.0)
    assert load_presence(ListenerCounter(ttl_s=4), path, now_s=1009.0, max_age_s=8) == 0
    path.write_text("{not json")
    assert load_presence(ListenerCounter(ttl_s=4), path, now_s=1000.0, max_age_s=8) == 0
    assert load_presence(ListenerCounter(ttl_s=4), tmp_path / "none", now_s=0, max_age_s=8) == 0


async def _count(client: httpx.AsyncClient, space_id: str) -> int:
    return int((await client.get(f"/spaces/{space_id}/state.json")).json()["listener_count"])


async def test_a_listener_who_stops_saying_so_leaves_the_count(tmp_path: Path) -> None:
    presence_s = 2.0
    settings = Settings(  # type: ignore[arg-type]
        data_dir=tmp_path / "data",
        listener_presence_s=presence_s,
        state_interval_ms=100,
        **FAST_ARGON2,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            api = Api(client)
            _, host = await api.account("counthost")
            sid = (await api.space(host))["id"]
            joins = [(await client.post(f"/api/spaces/{sid}/join")).json() for _ in range(3)]
            assert {j["presence_interval_s"] for j in joins} == {round(presence_s / 3, 2)}
            await asyncio.sleep(0.15)
            assert await _count(client, sid) == 3
            staying = {"Authorization": f"Bearer {joins[0]['token']}"}
            # the second leaves with a goodbye, the third just goes quiet
            left = await client.post(f"/api/spaces/{sid}/leave", json={"token": joins[1]["token"]})
            assert left.status_code == 204
            started = time.monotonic()
            dropped_after_s = None
            while time.monotonic() - started < 3 * presence_s:
                beat = await client.post(f"/api/spaces/{sid}/presence", headers=staying)
                assert beat.status_code == 204, beat.text
                if await _count(client, sid) == 1 and dropped_after_s is None:
                    dropped_after_s = time.monotonic() - started
                await asyncio.sleep(presence_s / 6)
            assert dropped_after_s is not None and dropped_after_s <= presence_s + 0.5
            assert await _count(client, sid) == 1  # the one who keeps saying so stays

            # refusals say what to send
            bare = await client.post(f"/api/spaces/{sid}/presence")
            assert bare.status_code == 401 and "listener token" in bare.json()["detail"]
            forged = await client.post(
                f"/api/spaces/{sid}/presence", headers={"Authorization": "Bearer nope"}
            )
            assert forged.status_code == 401
            other = await client.post("/api/spaces/aaaaaaaaaaaa/presence", headers=staying)
            assert other.status_code == 404


async def test_restart_takes_the_count_over(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", state_interval_ms=100, **FAST_ARGON2)  # type: ignore[arg-type]
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            api = Api(client)
            _, host = await api.account("restarthost")
            sid = (await api.space(host))["id"]
            tokens = [
                (await client.post(f"/api/spaces/{sid}/join")).json()["token"] for _ in range(4)
            ]
            await asyncio.sleep(0.15)
            assert await _count(client, sid) == 4
    app = create_app(settings)  # the next process, same data directory
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert await _count(client, sid) == 4  # not 0 while the pages come back
            for token in tokens[:3]:
                beat = await client.post(
                    f"/api/spaces/{sid}/presence", headers={"Authorization": f"Bearer {token}"}
                )
                assert beat.status_code == 204
