"""CORS on listener resources (issue 12): ``cors_origins`` ("*" by default, or
a list), problem+json answers included, so a player on another origin can
read why it was refused; a real Chromium page on another origin reads a 401
body; the real HTTP/1.1 driver answers a list of origins per request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ARGON2, Api, LiveServer
from tests.web.browser import chromium
from townhall.config import Settings
from townhall.origin.cors import Cors, is_listener_resource
from townhall.server.app import create_app

NEWS = "https://news.example"
PASSWORD = "correct horse battery"


def test_policy_parses_and_answers_per_origin() -> None:
    assert Cors.parse("*").allow("https://any.example") == "*"
    assert Cors.parse("").any_origin
    listed = Cors.parse(f" {NEWS}/, http://127.0.0.1:8080 ")
    assert listed.allow(NEWS) == NEWS and listed.allow("http://127.0.0.1:8080")
    assert listed.allow("https://evil.example") is None and listed.allow(None) is None
    assert (b"vary", b"Origin") in listed.head("https://evil.example")
    assert not any(n == b"access-control-allow-origin" for n, _ in listed.head("https://x.y"))
    for bad in ("news.example", "https://news.example/embed", "ftp://x.example"):
        with pytest.raises(ValueError, match="is not an origin"):
            Cors.parse(bad)
    with pytest.raises(ValueError, match="cors_origins"):
        Settings(cors_origins="news.example")
    assert is_listener_resource("/spaces/abcdefghijkl/live.m3u8")
    assert is_listener_resource("/spaces/abcdefghijkl/part/3.1.m4s")
    assert not is_listener_resource("/spaces/abcdefghijkl")
    assert not is_listener_resource("/spaces/abcdefghijkl/host")
    assert not is_listener_resource("/api/spaces/abcdefghijkl/join")


async def _app(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    settings = Settings(data_dir=tmp_path / "data", **FAST_ARGON2, **overrides)  # type: ignore[arg-type]
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            _, host = await Api(client).account("corshost")
            sid = (await Api(client).space(host))["id"]
            yield client, sid


@pytest.fixture
async def open_app(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async for pair in _app(tmp_path):
        yield pair


@pytest.fixture
async def capped_app(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async for pair in _app(tmp_path, max_listeners=5):
        yield pair


@pytest.fixture
async def listed_app(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    async for pair in _app(tmp_path, cors_origins=f"{NEWS},https://embed.example"):
        yield pair


def _readable_problem(response: httpx.Response, status: int, origin: str = "*") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers.get("access-control-allow-origin") == origin
    assert "Retry-After" in response.headers.get("access-control-expose-headers", "")
    assert response.json()["detail"]


async def test_problems_on_listener_resources_carry_cors(
    open_app: tuple[httpx.AsyncClient, str],
) -> None:
    client, sid = open_app
    origin = {"Origin": NEWS}
    _readable_problem(await client.get("/spaces/aaaaaaaaaaaa/live.m3u8", headers=origin), 404)
    _readable_problem(await client.get("/spaces/NOT-AN-ID/live.m3u8", headers=origin), 400)
    _readable_problem(await client.get(f"/spaces/{sid}/live.m3u8?_HLS_msn=x", headers=origin), 400)
    _readable_problem(await client.get(f"/spaces/{sid}/part/99999.0.m4s", headers=origin), 404)
    state = await client.get(f"/spaces/{sid}/state.json", headers=origin)
    assert state.status_code == 200 and state.headers["access-control-allow-origin"] == "*"
    # the pages and the API are not listener resources
    page = await client.get(f"/spaces/{sid}/host")
    assert "access-control-allow-origin" not in page.headers


async def test_a_capped_space_refuses_media_readably(
    capped_app: tuple[httpx.AsyncClient, str],
) -> None:
    client, sid = capped_app
    refused = await client.get(f"/spaces/{sid}/live.m3u8", headers={"Origin": NEWS})
    _readable_problem(refused, 401)
    assert "join" in refused.json()["detail"].lower()


async def test_listed_origins_are_answered_per_request(
    listed_app: tuple[httpx.AsyncClient, str],
) -> None:
    client, sid = listed_app
    for path in ("live.m3u8", "init.mp4", "state.json", "part/99999.0.m4s"):
        allowed = await client.get(f"/spaces/{sid}/{path}", headers={"Origin": NEWS})
        assert allowed.headers.get("access-control-allow-origin") == NEWS, path
        assert allowed.headers.get("vary") == "Origin", path
        other = await client.get(
            f"/spaces/{sid}/{path}", headers={"Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers, path
        assert other.headers.get("vary") == "Origin", path
        bare = await client.get(f"/spaces/{sid}/{path}")  # a cache must not reuse it cross-origin
        assert (
            "access-control-allow-origin" not in bare.headers and bare.headers["vary"] == "Origin"
        )
    preflight = await client.options(
        f"/spaces/{sid}/live.m3u8",
        headers={"Origin": "https://embed.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://embed.example"
    refused = await client.options(
        f"/spaces/{sid}/live.m3u8",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in refused.headers


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


def _space(server: LiveServer) -> str:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.post("/api/accounts", json={"username": "corshost", "password": PASSWORD})
        token = client.post(
            "/api/sessions", json={"username": "corshost", "password": PASSWORD}
        ).json()["token"]
        space = client.post(
            "/api/spaces", json={"title": "Embedded"}, headers={"Authorization": f"Bearer {token}"}
        ).json()
        return str(space["id"])


@pytest.mark.slow
def test_http1_driver_answers_listed_origins(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", extra_env={"TOWNHALL_CORS_ORIGINS": NEWS}).start()
    try:
        sid = _space(server)
        root = f"{server.url}/spaces/{sid}"
        with httpx.Client(timeout=30) as client:
            for path in ("live.m3u8", "init.mp4"):
                got = client.get(f"{root}/{path}", headers={"Origin": NEWS})
                assert got.status_code == 200, (path, got.text)
                assert got.headers.get("access-control-allow-origin") == NEWS
                assert got.headers.get("vary") == "Origin"
                other = client.get(f"{root}/{path}", headers={"Origin": "https://evil.example"})
                assert "access-control-allow-origin" not in other.headers
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.browser
def test_a_page_on_another_origin_reads_the_refusal(tmp_path: Path, playwright: Any) -> None:
    server = LiveServer(tmp_path / "data", extra_env={"TOWNHALL_MAX_LISTENERS": "5"}).start()
    try:
        sid = _space(server)
        with chromium(playwright, tmp_path / "profile") as context:
            page = context.new_page()
            # http://localhost:PORT and http://127.0.0.1:PORT are different origins
            page.goto(f"http://localhost:{server.port}/healthz")
            got = page.evaluate(
                """async (url) => {
                    const r = await fetch(url);
                    return {status: r.status, body: await r.json()};
                }""",
                f"http://127.0.0.1:{server.port}/spaces/{sid}/live.m3u8",
            )
            assert got["status"] == 401, got
            assert "join" in got["body"]["detail"].lower(), got
    finally:
        server.stop()
