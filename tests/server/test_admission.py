"""The join contract with a cap: 200 / 202 + ticket, queue.json, exchange once,
bad tickets named, leave frees a place, the cap holds, renewals survive a
lowered cap, Redis away."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ARGON2, Api
from townhall.config import Settings
from townhall.policy import tickets
from townhall.server.app import create_app


def services(client: httpx.AsyncClient) -> Any:
    return client._transport.app.state.services  # type: ignore[attr-defined]


@pytest.fixture
async def capped(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        data_dir=tmp_path / "data",
        max_listeners=2,
        admit_rate_per_s=1000,
        queue_interval_ms=1000,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def live_space(client: httpx.AsyncClient, **body: Any) -> str:
    api = Api(client)
    _, host = await api.account("host" + str(len(body)))
    return str((await api.space(host, **body))["id"])


def problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["detail"])


async def test_full_space_queues_then_admits_in_turn(capped: httpx.AsyncClient) -> None:
    sid = await live_space(capped)
    join = f"/api/spaces/{sid}/join"
    first = await capped.post(join)
    second = await capped.post(join)
    assert first.status_code == second.status_code == 200
    assert first.json()["delivery"] == "llhls"
    assert first.json()["listen_url"].endswith(f"/spaces/{sid}/live.m3u8")
    assert f"th_listener={first.json()['token']}" in first.headers["set-cookie"]
    assert f"Path=/spaces/{sid}/" in first.headers["set-cookie"]

    queued = await capped.post(join)
    assert queued.status_code == 202, queued.text
    body = queued.json()
    assert {"ticket", "position", "eta_s", "retry_after_s", "queue_url"} <= set(body)
    assert body["queue_url"].endswith(f"/spaces/{sid}/queue.json")
    assert body["number"] == 1 and body["position"] == 1 and body["reason"] == "full"
    assert int(queued.headers["retry-after"]) >= 1
    later = await capped.post(join)
    assert later.json()["number"] == 2

    await services(capped).admission.tick()
    doc = await capped.get(f"/spaces/{sid}/queue.json")
    assert doc.status_code == 200
    assert doc.headers["cache-control"] == "public, max-age=1"
    state = doc.json()
    assert state["admitting_through"] == 0 and state["waiting"] == 2
    assert state["admitted"] == 2 and state["max_listeners"] == 2
    assert {"admit_rate_per_s", "updated_at"} <= set(state)
    again = await capped.get(
        f"/spaces/{sid}/queue.json", headers={"If-None-Match": doc.headers["etag"]}
    )
    assert again.status_code == 304

    # before its turn: 202 with where it stands and a refreshed ticket
    early = await capped.post(join, json={"ticket": body["ticket"]})
    assert early.status_code == 202 and early.json()["reason"] == "not_your_turn"
    assert early.json()["detail"] == "Your turn has not come yet: you are number 1 in line."

    # a listener leaves: the place frees at once, the pointer calls ticket 1
    left = await capped.post(f"/api/spaces/{sid}/leave", json={"token": first.json()["token"]})
    assert left.status_code == 204
    await services(capped).admission.tick()
    state = (await capped.get(f"/spaces/{sid}/queue.json")).json()
    assert state["admitting_through"] == 1 and state["waiting"] == 1

    # ticket 2 is not called (no place); ticket 1 is, and admits once
    assert (await capped.post(join, json={"ticket": later.json()["ticket"]})).status_code == 202
    admitted = await capped.post(join, json={"ticket": early.json()["ticket"]})
    assert admitted.status_code == 200, admitted.text
    assert admitted.json()["role"] == "listener"
    reused = await capped.post(join, json={"ticket": early.json()["ticket"]})
    assert problem(reused, 409) == tickets.REUSED
    # never past the cap
    await services(capped).admission.tick()
    state = (await capped.get(f"/spaces/{sid}/queue.json")).json()
    assert state["admitted"] == 2
    # a newcomer does not pass ticket 2
    assert (await capped.post(join)).json()["number"] == 3


async def test_bad_tickets_are_named(capped: httpx.AsyncClient) -> None:
    sid = await live_space(capped)
    other = await live_space(capped, title="Other")
    join = f"/api/spaces/{sid}/join"
    for _ in range(2):
        assert (await capped.post(join)).status_code == 200
    ticket = (await capped.post(join)).json()["ticket"]
    prefix, kid, payload, sig = ticket.split(".")
    cases = [
        ("not a ticket", 400, tickets.MALFORMED),
        (f"{prefix}.{kid}.{payload}.{sig[:-2]}AA", 401, tickets.FORGED),
        (f"{prefix}.{kid}.{payload[:-2]}xx.{sig}", 401, tickets.FORGED),
        (f"{prefix}.00000000.{payload}.{sig}", 401, tickets.UNKNOWN_KEY),
    ]
    for bad, status, detail in cases:
        assert problem(await capped.post(join, json={"ticket": bad}), status) == detail
    wrong = await capped.post(f"/api/spaces/{other}/join", json={"ticket": ticket})
    assert problem(wrong, 401) == tickets.WRONG_SPACE
    signer = services(capped).admission.tickets
    expired = signer.sign(tickets.Ticket(sid, 1, 1, 2))
    assert problem(await capped.post(join, json={"ticket": expired}), 401) == tickets.EXPIRED
    typed = await capped.post(join, json={"ticket": 5})
    assert problem(typed, 422).startswith("Field 'ticket' is invalid")


async def test_renewals_survive_a_lowered_cap(capped: httpx.AsyncClient) -> None:
    sid = await live_space(capped)
    join = f"/api/spaces/{sid}/join"
    tokens = [(await capped.post(join)).json()["token"] for _ in range(2)]
    admission = services(capped).admission
    admission.settings = admission.settings.model_copy(update={"max_listeners": 1})
    for token in tokens:
        renewed = await capped.post(join, json={"token": token})
        assert renewed.status_code == 200, renewed.text
    assert (await capped.post(join)).status_code == 202


async def test_waiting_room_before_the_start_draws_places(capped: httpx.AsyncClient) -> None:
    api = Api(capped)
    _, host = await api.account("hostw")
    soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    sid = (await api.space(host, scheduled_for=soon))["id"]
    closed = (await api.space(host, scheduled_for=later, title="Later"))["id"]
    refused = await capped.post(f"/api/spaces/{closed}/join")
    assert problem(refused, 503).startswith("The waiting room of this space is not open yet")
    assert int(refused.headers["retry-after"]) > 3600
    join = f"/api/spaces/{sid}/join"
    early = [(await capped.post(join)).json() for _ in range(6)]
    assert all(e["reason"] == "before_start" and e["number"] is None for e in early)
    assert all(e["eta_s"] is not None and e["eta_s"] > 200 for e in early)
    await capped.post(f"/api/spaces/{sid}/start", headers=host)
    await services(capped).admission.tick()
    doc = (await capped.get(f"/spaces/{sid}/queue.json")).json()
    assert doc["drawn"] is True and doc["drawn_count"] == 6
    numbers = []
    for e in early:
        answer = await capped.post(join, json={"ticket": e["ticket"]})
        numbers.append(answer.json().get("number"))
    drawn = [n for n in numbers if n is not None]
    # the two admitted have no number in their 200; the others were drawn from 1..6
    assert len(drawn) >= 4 and set(drawn) <= set(range(1, 7))
    after = (await capped.post(join)).json()
    assert after["number"] == 7  # after the start: first come, first served


async def test_redis_unreachable_keeps_listeners_playing(tmp_path: Path) -> None:
    from tests.scale.conftest import REDIS_URL

    settings = Settings(
        data_dir=tmp_path / "data",
        max_listeners=5,
        redis_url=REDIS_URL,
        redis_prefix=f"townhall-test-{tmp_path.name}:",
        redis_timeout_ms=100,
        redis_backoff_ms=60_000,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            admission = services(client).admission
            if admission.health is None or not await services(client).shared.ping():
                pytest.skip("REDIS NOT TESTED: unreachable")
            sid = await live_space(client)
            join = f"/api/spaces/{sid}/join"
            token = (await client.post(join)).json()["token"]
            await services(client).redis.delete(
                *await services(client).redis.keys(settings.redis_prefix + "*")
            )
            # Redis goes away: a failure marks it down for the backoff
            admission.health.failed("test", OSError("gone"))
            refused = await client.post(join)
            assert problem(refused, 503).startswith("Admission is paused for a moment")
            assert "retry-after" in refused.headers
            # nobody admitted is cut off
            assert (await client.post(join, json={"token": token})).status_code == 200


async def test_uncapped_spaces_need_no_queue(app_client: httpx.AsyncClient, api: Api) -> None:
    _, host = await api.account("hostu")
    sid = (await api.space(host))["id"]
    for _ in range(5):
        joined = await app_client.post(f"/api/spaces/{sid}/join")
        assert joined.status_code == 200 and "set-cookie" not in joined.headers
    doc = (await app_client.get(f"/spaces/{sid}/queue.json")).json()
    assert doc["max_listeners"] == 0 and doc["waiting"] == 0


async def test_degrade_before_queueing(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        llhls_budget_listeners=1,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            sid = await live_space(client)
            first = (await client.post(f"/api/spaces/{sid}/join")).json()
            second = (await client.post(f"/api/spaces/{sid}/join")).json()
            assert first["delivery"] == "llhls"
            assert second["delivery"] == "hls"
            assert second["listen_url"].endswith(f"/spaces/{sid}/plain.m3u8")
            assert "a few seconds more delay" in second["detail"]
            renewed = (
                await client.post(f"/api/spaces/{sid}/join", json={"token": second["token"]})
            ).json()
            assert renewed["delivery"] == "hls"
