"""Spaces, join, speaker tokens through the real HTTP interface."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Api
from townhall.config import Settings
from townhall.policy.tokens import TokenSigner, load_keys


def problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["detail"])


def payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return dict(orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def services(client: httpx.AsyncClient) -> Any:
    return client._transport.app.state.services  # type: ignore[attr-defined]


async def test_create_live_space_and_read_it(app_client: httpx.AsyncClient, api: Api) -> None:
    host_id, headers = await api.account("host")
    space = await api.space(headers, title="Launch night", description="Q&A")
    assert space["state"] == "live"
    assert space["host"]["id"] == host_id
    assert space["started_at"].endswith("Z") and space["scheduled_for"] is None
    sid = space["id"]
    assert len(sid) == 12 and sid.isalnum() and sid.islower()
    # Host "testserver" is not an allowed host: the links are relative
    assert space["urls"]["live_m3u8"] == f"/spaces/{sid}/live.m3u8"
    assert set(space["urls"]) == {
        "page", "master_m3u8", "live_m3u8", "plain_m3u8", "live_aac", "state_json", "recording_m4a"
    }  # fmt: skip
    got = await app_client.get(f"/api/spaces/{sid}")
    assert got.status_code == 200 and got.json() == space
    assert services(app_client).rooms.get(sid) is not None  # the room runs


async def test_list_is_public_only_newest_first_and_filters(
    app_client: httpx.AsyncClient, api: Api
) -> None:
    _, headers = await api.account("host")
    live = await api.space(headers, title="live one")
    await api.space(headers, title="hidden", visibility="unlisted")
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    scheduled = await api.space(headers, title="soon", scheduled_for=later)
    listed = (await app_client.get("/api/spaces")).json()["spaces"]
    assert [s["id"] for s in listed] == [scheduled["id"], live["id"]]
    only_live = (await app_client.get("/api/spaces?state=live")).json()["spaces"]
    assert [s["id"] for s in only_live] == [live["id"]]
    response = await app_client.get("/api/spaces?state=bogus")
    assert "'state'" in problem(response, 422)


@pytest.mark.parametrize(
    ("delta", "words"),
    [(timedelta(minutes=-5), "in the past"), (timedelta(days=31), "30 days ahead")],
)
async def test_scheduling_outside_the_window_is_422(
    app_client: httpx.AsyncClient, api: Api, delta: timedelta, words: str
) -> None:
    _, headers = await api.account("host")
    when = (datetime.now(UTC) + delta).isoformat()
    response = await app_client.post(
        "/api/spaces", json={"title": "x", "scheduled_for": when}, headers=headers
    )
    detail = problem(response, 422)
    assert "'scheduled_for'" in detail and words in detail


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": 5}, "title"),
        ({"title": ""}, "title"),
        ({"title": "x", "visibility": "secret"}, "visibility"),
        ({"title": "x", "scheduled_for": "tomorrow"}, "scheduled_for"),
        ({}, "title"),
    ],
)
async def test_create_space_wrong_fields_are_422(
    app_client: httpx.AsyncClient, api: Api, body: dict[str, Any], field: str
) -> None:
    _, headers = await api.account("host")
    response = await app_client.post("/api/spaces", json=body, headers=headers)
    assert f"'{field}'" in problem(response, 422)


async def test_create_space_needs_a_session(app_client: httpx.AsyncClient) -> None:
    response = await app_client.post("/api/spaces", json={"title": "x"})
    assert "Sign in" in problem(response, 401)


async def test_lifecycle_only_host_and_ended_is_final(
    app_client: httpx.AsyncClient, api: Api
) -> None:
    _, host = await api.account("host")
    _, other = await api.account("other")
    later = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    sid = (await api.space(host, scheduled_for=later))["id"]
    assert services(app_client).rooms.get(sid) is None
    assert "Only the host" in problem(
        await app_client.post(f"/api/spaces/{sid}/start", headers=other), 403
    )
    assert "not started" in problem(
        await app_client.post(f"/api/spaces/{sid}/end", headers=host), 409
    )
    started = await app_client.post(f"/api/spaces/{sid}/start", headers=host)
    assert started.status_code == 200 and started.json()["state"] == "live"
    assert services(app_client).rooms.get(sid) is not None
    assert "Only the host" in problem(
        await app_client.post(f"/api/spaces/{sid}/end", headers=other), 403
    )
    ended = await app_client.post(f"/api/spaces/{sid}/end", headers=host)
    assert ended.status_code == 200 and ended.json()["state"] == "ended"
    assert services(app_client).rooms.get(sid) is None
    assert "ended" in problem(await app_client.post(f"/api/spaces/{sid}/start", headers=host), 409)


async def test_unknown_space_is_404_everywhere(app_client: httpx.AsyncClient, api: Api) -> None:
    _, headers = await api.account("someone")
    for method, path in [
        ("GET", "/api/spaces/aaaaaaaaaaaa"),
        ("POST", "/api/spaces/aaaaaaaaaaaa/join"),
        ("POST", "/api/spaces/aaaaaaaaaaaa/start"),
        ("GET", "/spaces/aaaaaaaaaaaa/state.json"),
    ]:
        response = await app_client.request(method, path, headers=headers)
        assert "no space" in problem(response, 404), path


async def test_join_anonymous_renew_and_urls(app_client: httpx.AsyncClient, api: Api) -> None:
    _, headers = await api.account("host")
    sid = (await api.space(headers, visibility="unlisted"))["id"]
    joined = await app_client.post(f"/api/spaces/{sid}/join")
    assert joined.status_code == 200
    assert joined.headers["cache-control"] == "no-store"
    body = joined.json()
    assert body["role"] == "listener" and body["expires_at"].endswith("Z")
    assert body["urls"]["state_json"] == f"/spaces/{sid}/state.json"
    claims = payload(body["token"])
    assert claims["sub"].startswith("anon-") and claims["spc"] == sid
    assert claims["exp"] - claims["iat"] == 300
    renewed = await app_client.post(f"/api/spaces/{sid}/join", json={"token": body["token"]})
    assert renewed.status_code == 200
    again = payload(renewed.json()["token"])
    assert again["jti"] == claims["jti"] and again["sub"] == claims["sub"]
    # an empty object and JSON null are both "no renewal"
    for content in (b"{}", b"null", b""):
        response = await app_client.post(f"/api/spaces/{sid}/join", content=content)
        assert response.status_code == 200
        assert payload(response.json()["token"])["jti"] != claims["jti"]


async def test_join_with_session_names_the_account(app_client: httpx.AsyncClient, api: Api) -> None:
    _, host = await api.account("host")
    guest_id, guest = await api.account("guest")
    sid = (await api.space(host))["id"]
    joined = await app_client.post(f"/api/spaces/{sid}/join", headers=guest)
    assert payload(joined.json()["token"])["sub"] == guest_id
    stale = {"Authorization": "Bearer not.a.token"}
    assert "malformed" in problem(
        await app_client.post(f"/api/spaces/{sid}/join", headers=stale), 401
    )


async def test_join_bad_input(app_client: httpx.AsyncClient, api: Api, settings: Settings) -> None:
    _, headers = await api.account("host")
    sid = (await api.space(headers))["id"]
    other = (await api.space(headers, title="other"))["id"]
    path = f"/api/spaces/{sid}/join"
    assert "not valid JSON" in problem(await app_client.post(path, content=b"{nope"), 400)
    assert "'token'" in problem(await app_client.post(path, json={"token": 5}), 422)
    assert "'body'" in problem(await app_client.post(path, json=[1, 2]), 422)
    assert "larger than" in problem(await app_client.post(path, content=b"x" * 70_000), 413)
    foreign = (await app_client.post(f"/api/spaces/{other}/join")).json()["token"]
    assert "wrong space" in problem(await app_client.post(path, json={"token": foreign}), 401)
    session = headers["Authorization"].split()[1]
    assert "wrong kind" in problem(await app_client.post(path, json={"token": session}), 401)
    signer = TokenSigner(load_keys("", settings.data_dir), clock=lambda: 1_000_000.0)
    expired = signer.issue("listener", "anon-x", 300, space_id=sid, role="listener")
    assert "expired" in problem(await app_client.post(path, json={"token": expired}), 401)


async def test_join_touches_no_database(app_client: httpx.AsyncClient, api: Api) -> None:
    _, headers = await api.account("host")
    sid = (await api.space(headers))["id"]
    db = services(app_client).db

    def no_database() -> None:
        raise AssertionError("join opened a database session")

    original = db.sessions
    db.sessions = no_database
    try:
        response = await app_client.post(f"/api/spaces/{sid}/join", headers=headers)
        assert response.status_code == 200
        assert (await app_client.post(f"/api/spaces/{sid}/join")).status_code == 200
    finally:
        db.sessions = original


async def test_join_counts_in_metrics(app_client: httpx.AsyncClient, api: Api) -> None:
    _, headers = await api.account("host")
    sid = (await api.space(headers))["id"]

    def joins(text: str) -> float:
        for line in text.splitlines():
            if line.startswith('townhall_joins_total{kind="new"}'):
                return float(line.split()[-1])
        return 0.0

    before = joins((await app_client.get("/metrics")).text)
    for _ in range(3):
        await app_client.post(f"/api/spaces/{sid}/join")
    assert joins((await app_client.get("/metrics")).text) == before + 3


async def test_join_is_documented_in_openapi(app_client: httpx.AsyncClient) -> None:
    schema = (await app_client.get("/api/openapi.json")).json()
    operation = schema["paths"]["/api/spaces/{space_id}/join"]["post"]
    assert "200" in operation["responses"] and "default" in operation["responses"]


async def test_speaker_token_for_stage_only(app_client: httpx.AsyncClient, api: Api) -> None:
    host_id, host = await api.account("host")
    _, listener = await api.account("listener")
    sid = (await api.space(host))["id"]
    response = await app_client.post(f"/api/spaces/{sid}/speaker-token", headers=host)
    assert response.status_code == 200
    assert response.json()["role"] == "host"
    claims = payload(response.json()["token"])
    assert claims["knd"] == "speaker" and claims["sub"] == host_id and claims["spc"] == sid
    denied = await app_client.post(f"/api/spaces/{sid}/speaker-token", headers=listener)
    assert "request to speak" in problem(denied, 403)
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    scheduled = (await api.space(host, scheduled_for=later))["id"]
    response = await app_client.post(f"/api/spaces/{scheduled}/speaker-token", headers=host)
    assert "not live" in problem(response, 409)


async def test_live_spaces_resume_after_restart(settings: Settings) -> None:
    from townhall.server.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        async with client:
            api = Api(client)
            _, headers = await api.account("host")
            live = (await api.space(headers))["id"]
            ended = (await api.space(headers, title="done"))["id"]
            assert (
                await client.post(f"/api/spaces/{ended}/end", headers=headers)
            ).status_code == 200
    again = create_app(settings)
    async with again.router.lifespan_context(again):
        rooms = again.state.services.rooms
        assert rooms.get(live) is not None
        assert rooms.get(ended) is None
        # the index was reloaded too: joins work without any write
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=again), base_url="http://t")
        async with client:
            assert (await client.post(f"/api/spaces/{live}/join")).status_code == 200
            assert (await client.post(f"/api/spaces/{ended}/join")).status_code == 200
