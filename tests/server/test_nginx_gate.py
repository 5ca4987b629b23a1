"""The media gate behind nginx (deploy/nginx-cache.conf with @MEDIA_GATE@ on):
nginx checks the link cookies that join sets (secure_link) and refuses a
missing, forged or expired one with 403 without asking the origin; a
playlist stays one cache object for every listener; queue.json reaches the
origin about once per second however many ask."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.server.test_nginx_cache import live_space, run_nginx

pytestmark = [pytest.mark.slow]

SECRET = "edge-secret-for-tests"


@pytest.fixture
def capped_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(
        tmp_path / "data",
        extra_env={"TOWNHALL_MAX_LISTENERS": "50", "TOWNHALL_EDGE_LINK_SECRET": SECRET},
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gated(capped_server: LiveServer, tmp_path: Path) -> Iterator[str]:
    yield from run_nginx(capped_server, tmp_path, gate="on", secret=SECRET)


def served_bytes(origin: str) -> float:
    text = httpx.get(origin + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("townhall_listener_bytes_served_total{")
    )


async def test_nginx_refuses_media_without_a_link(gated: str, capped_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=gated, timeout=20) as http:
        space_id = await live_space(http)
        base = f"/spaces/{space_id}/"
        before = served_bytes(capped_server.url)
        forged = {"th_link": "AAAAAAAAAAAAAAAAAAAAAA", "th_exp": "4102444800"}
        expired = {"th_link": "AAAAAAAAAAAAAAAAAAAAAA", "th_exp": "1000"}
        for cookies in ({}, forged, expired):
            for name in ("live.m3u8", "plain.m3u8", "init.mp4", "part/0.0.m4s", "live.aac"):
                header = "; ".join(f"{k}={v}" for k, v in cookies.items())
                answer = await http.get(base + name, headers={"Cookie": header} if header else {})
                assert answer.status_code == 403, (name, cookies, answer.text)
                assert "needs the link that joining gives" in answer.json()["detail"]
        assert served_bytes(capped_server.url) == before  # the origin was never asked

        # join through nginx: the cookies let media through, and two listeners
        # with different links share ONE cached playlist
        http.cookies.clear()
        joined = await http.post(f"/api/spaces/{space_id}/join", json={})
        assert joined.status_code == 200
        first_jar = httpx.Cookies(http.cookies)
        assert first_jar.get("th_link") and first_jar.get("th_exp")
        async with httpx.AsyncClient(base_url=gated, timeout=20) as other:
            assert (await other.post(f"/api/spaces/{space_id}/join", json={})).status_code == 200
            for _ in range(100):
                playlist = await http.get(base + "live.m3u8")
                if playlist.status_code == 200 and "#EXT-X-PART:" in playlist.text:
                    break
                await asyncio.sleep(0.1)
            assert playlist.status_code == 200, playlist.text
            hint = re.search(r'URI="(part/\d+\.\d+\.m4s)"', playlist.text)
            assert hint
            part_a = await http.get(base + hint.group(1))
            part_b = await other.get(base + hint.group(1))
            assert part_a.status_code == part_b.status_code == 200
            assert part_b.headers["x-cache"] == "HIT"


async def test_queue_json_is_answered_by_the_cache(gated: str, capped_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=gated, timeout=20) as http:
        space_id = await live_space(http)
        url = f"/spaces/{space_id}/queue.json"
        answers = []
        for _ in range(4):  # 4 bursts of 50 over about 2 s
            answers += await asyncio.gather(*(http.get(url) for _ in range(50)))
            await asyncio.sleep(0.5)
        assert {a.status_code for a in answers} == {200}
        misses = [a.headers.get("x-cache") for a in answers].count("MISS")
        assert misses <= 4, misses  # about one origin request per second, not 200
