"""Share and listener URLs never come from a Host the server does not answer
for: with public_url empty they are absolute only for an allowed Host
(allowed_hosts; default the bound address and loopback names), else relative."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FAST_ARGON2, Api
from townhall.config import Settings
from townhall.server.app import create_app
from townhall.server.auth import (
    base_url,
    host_allowed,
    parse_allowed_hosts,
    public_url_warning,
)

FORGED = ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost.evil", "[::2]"]


async def _client(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Api]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client, Api(client)


async def _links(client: httpx.AsyncClient, api: Api, host: str) -> list[str]:
    """The live_m3u8 URL of create, list, get and join, all sent with ``host``."""
    _, auth = await api.account("host" + str(abs(hash(host)) % 10_000))
    headers = {**auth, "Host": host}
    created = await client.post("/api/spaces", json={"title": "t"}, headers=headers)
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    listed = (await client.get("/api/spaces", headers={"Host": host})).json()["spaces"]
    got = (await client.get(f"/api/spaces/{sid}", headers={"Host": host})).json()
    joined = (await client.post(f"/api/spaces/{sid}/join", headers={"Host": host})).json()
    return [
        created.json()["urls"]["live_m3u8"],
        next(s for s in listed if s["id"] == sid)["urls"]["live_m3u8"],
        got["urls"]["live_m3u8"],
        joined["urls"]["live_m3u8"],
    ], sid  # type: ignore[return-value]


@pytest.fixture
async def default_client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Api]]:
    async for pair in _client(Settings(data_dir=tmp_path / "d", **FAST_ARGON2)):  # type: ignore[arg-type]
        yield pair


@pytest.mark.parametrize("host", FORGED)
async def test_forged_host_gets_relative_links(
    default_client: tuple[httpx.AsyncClient, Api], host: str
) -> None:
    client, api = default_client
    links, sid = await _links(client, api, host)  # type: ignore[misc]
    assert links == [f"/spaces/{sid}/live.m3u8"] * 4


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"])
async def test_loopback_host_gets_absolute_links(
    default_client: tuple[httpx.AsyncClient, Api], host: str
) -> None:
    client, api = default_client
    links, sid = await _links(client, api, host)  # type: ignore[misc]
    assert links == [f"http://{host}/spaces/{sid}/live.m3u8"] * 4


async def test_allowed_hosts_and_public_url(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "a", allowed_hosts="townhall.example", **FAST_ARGON2)  # type: ignore[arg-type]
    async for client, api in _client(settings):
        links, sid = await _links(client, api, "townhall.example:8443")  # type: ignore[misc]
        assert links == [f"http://townhall.example:8443/spaces/{sid}/live.m3u8"] * 4
        links, sid = await _links(client, api, "localhost")  # type: ignore[misc]
        assert links == [f"/spaces/{sid}/live.m3u8"] * 4
    settings = Settings(data_dir=tmp_path / "b", public_url="https://live.example/", **FAST_ARGON2)  # type: ignore[arg-type]
    async for client, api in _client(settings):
        links, sid = await _links(client, api, "evil.example")  # type: ignore[misc]
        assert links == [f"https://live.example/spaces/{sid}/live.m3u8"] * 4


def test_host_matching_is_exact() -> None:
    allowed = parse_allowed_hosts("", "192.0.2.7")
    assert allowed == {"192.0.2.7", "localhost", "127.0.0.1", "::1"}
    assert host_allowed("192.0.2.7:8000", allowed) and host_allowed("[::1]", allowed)
    for host in [*FORGED, None, "", "localhost@evil.example", "127.0.0.1:80@evil"]:
        assert not host_allowed(host, allowed), host
    ported = parse_allowed_hosts("Live.Example:443", "127.0.0.1")
    assert host_allowed("live.example:443", ported) and not host_allowed("live.example", ported)
    settings = Settings(allowed_hosts="", public_url="")
    assert base_url(settings, "evil.example", "http") == ""


def test_serve_warns_when_public_without_public_url() -> None:
    assert public_url_warning(Settings(host="127.0.0.1")) is None
    assert public_url_warning(Settings(host="::1")) is None
    assert public_url_warning(Settings(host="localhost")) is None
    assert public_url_warning(Settings(host="0.0.0.0", public_url="https://x.example")) is None
    warning = public_url_warning(Settings(host="0.0.0.0"))
    assert warning is not None and "public_url" in warning and "relative" in warning
