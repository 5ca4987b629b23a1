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
# nginx is the origin's trusted proxy, as docs/DEPLOYMENT.md has it (its
# kept-alive upstream connections carry every client: never paused)
PROXY = {"TOWNHALL_TRUSTED_PROXIES": "127.0.0.1"}


@pytest.fixture
def capped_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(
        tmp_path / "data",
        extra_env={"TOWNHALL_MAX_LISTENERS": "50", "TOWNHALL_EDGE_LINK_SECRET": SECRET, **PROXY},
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


@pytest.fixture
def uncapped_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(
        tmp_path / "data", extra_env={"TOWNHALL_EDGE_LINK_SECRET": SECRET, **PROXY}
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ungated(uncapped_server: LiveServer, tmp_path: Path) -> Iterator[str]:
    yield from run_nginx(uncapped_server, tmp_path, gate="off", secret=SECRET)


async def _host_space(http: httpx.AsyncClient, **body: object) -> str:
    password = "correct horse 1"
    await http.post("/api/accounts", json={"username": "caphost", "password": password})
    token = (
        await http.post("/api/sessions", json={"username": "caphost", "password": password})
    ).json()["token"]
    response = await http.post(
        "/api/spaces",
        json={"title": "Capped", **body},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _live_part(http: httpx.AsyncClient, base: str) -> str:
    for _ in range(100):
        playlist = await http.get(base + "live.m3u8")
        if playlist.status_code == 200 and "#EXT-X-PART:" in playlist.text:
            found = re.search(r'URI="(part/\d+\.\d+\.m4s)"', playlist.text)
            assert found
            return found.group(1)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no part in {base}live.m3u8: {playlist.status_code} {playlist.text}")


async def test_a_hosts_own_cap_is_gated_behind_the_cache(
    ungated: str, uncapped_server: LiveServer
) -> None:
    """No deployment cap (@MEDIA_GATE@ off): a space whose host set a cap is
    never served from the cache to a client without a good link, however a
    joined listener (or an attacker who joined and dropped the link) filled
    it; an uncapped space beside it is cached for everyone as before."""
    async with httpx.AsyncClient(base_url=ungated, timeout=20) as http:
        capped = await _host_space(http, max_listeners=5)
        open_space = await _host_space(http)
        base = f"/spaces/{capped}/"
        # a joined listener plays, and fills the cache
        listener = httpx.AsyncClient(base_url=ungated, timeout=20)
        other = httpx.AsyncClient(base_url=ungated, timeout=20)
        stranger = httpx.AsyncClient(base_url=ungated, timeout=20)
        sly = httpx.AsyncClient(base_url=ungated, timeout=20)
        async with listener, other, stranger, sly:
            assert (await listener.post(f"/api/spaces/{capped}/join", json={})).status_code == 200
            assert listener.cookies.get("th_link") and listener.cookies.get("th_listener")
            part = await _live_part(listener, base)
            assert (await listener.get(base + part)).status_code == 200
            assert (await listener.get(base + "init.mp4")).status_code == 200
            # a second joined listener is served by the cache
            assert (await other.post(f"/api/spaces/{capped}/join", json={})).status_code == 200
            shared = await other.get(base + part)
            assert shared.status_code == 200 and shared.headers["x-cache"] == "HIT"
            # joined, then dropped the link cookies, kept the listener token: what
            # it fetches must not become a cached answer for clients without a token
            assert (await sly.post(f"/api/spaces/{capped}/join", json={})).status_code == 200
            token = sly.cookies["th_listener"]
            sly.cookies.clear()
            sly.cookies.set("th_listener", token, path=base)
            for name in (part, "init.mp4", "live.m3u8"):
                assert (await sly.get(base + name)).status_code == 401, name
            # no token, no link: refused, never the cached bytes
            for name in (part, "init.mp4", "live.m3u8", "plain.m3u8"):
                refused = await stranger.get(base + name)
                assert refused.status_code == 401, (name, refused.headers.get("x-cache"))
                assert "application/problem+json" in refused.headers["content-type"]
            forged = {"Cookie": "th_link=AAAAAAAAAAAAAAAAAAAAAA; th_exp=4102444800"}
            assert (await stranger.get(base + part, headers=forged)).status_code == 401
            # the refusal itself is kept a second (s-maxage=1): one origin request
            # per URL per second, however many without a link ask
            first = await stranger.get(base + "plain.m3u8?x=1")
            again = await stranger.get(base + "plain.m3u8?x=1")
            assert first.status_code == again.status_code == 401
            assert first.headers["cache-control"] == "max-age=0, s-maxage=1"
            assert again.headers["x-cache"] == "HIT", again.headers
            # the uncapped space: no token needed, one cache object for everyone
            open_base = f"/spaces/{open_space}/"
            open_part = await _live_part(stranger, open_base)
            assert (await stranger.get(open_base + open_part)).status_code == 200
            hit = await listener.get(open_base + open_part)
            assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT"
