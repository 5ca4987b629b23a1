"""A host's own listener cap: set at creation or changed later (PATCH), never
above the deployment's max_listeners (the ceiling, and the default); bad
values get 422 problem+json naming the field; a lowered cap cuts nobody off;
on a deployment without a cap, a space with its own gates its media alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ARGON2, Api
from townhall.config import Settings
from townhall.server.app import create_app


def services(client: httpx.AsyncClient) -> Any:
    return client._transport.app.state.services  # type: ignore[attr-defined]


async def app_with(tmp_path: Path, ceiling: int) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        data_dir=tmp_path / "data",
        max_listeners=ceiling,
        admit_rate_per_s=1000,
        queue_interval_ms=1000,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@pytest.fixture
async def ceiling_3(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in app_with(tmp_path, 3):
        yield client


@pytest.fixture
async def no_ceiling(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in app_with(tmp_path, 0):
        yield client


def problem(response: httpx.Response, status: int = 422) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["detail"])


async def test_bad_caps_are_refused_with_a_sentence(ceiling_3: httpx.AsyncClient) -> None:
    api = Api(ceiling_3)
    _, host = await api.account("caphost")
    for bad, words in [
        (4, "at most 3 listeners per space"),
        (0, "at most 3 listeners per space"),
        (-1, "is negative"),
        ("2", "max_listeners"),
        (True, "max_listeners"),
        (2.5, "max_listeners"),
    ]:
        made = await ceiling_3.post(
            "/api/spaces", json={"title": "Bad", "max_listeners": bad}, headers=host
        )
        assert words in problem(made), (bad, made.text)
    sid = (await api.space(host, title="Fine"))["id"]
    for bad in (4, 0, -1):
        changed = await ceiling_3.patch(
            f"/api/spaces/{sid}", json={"max_listeners": bad}, headers=host
        )
        assert "max_listeners" in problem(changed)
    unknown = await ceiling_3.patch(f"/api/spaces/{sid}", json={"title": "x"}, headers=host)
    assert unknown.status_code == 422


async def test_own_cap_admits_queues_and_changes(ceiling_3: httpx.AsyncClient) -> None:
    api = Api(ceiling_3)
    _, host = await api.account("caphost")
    space = await api.space(host, title="Small room", max_listeners=1)
    sid = space["id"]
    assert space["max_listeners"] == 1
    got = (await ceiling_3.get(f"/api/spaces/{sid}")).json()
    assert got["max_listeners"] == 1
    join = f"/api/spaces/{sid}/join"
    first = await ceiling_3.post(join)
    assert first.status_code == 200
    queued = await ceiling_3.post(join)
    assert queued.status_code == 202 and queued.json()["number"] == 1
    doc = (await ceiling_3.get(f"/spaces/{sid}/queue.json")).json()
    assert doc["max_listeners"] == 1

    # only the host changes it
    _, other = await api.account("notthehost")
    refused = await ceiling_3.patch(f"/api/spaces/{sid}", json={"max_listeners": 2}, headers=other)
    assert problem(refused, 403).startswith("Only the host")
    raised = await ceiling_3.patch(f"/api/spaces/{sid}", json={"max_listeners": 2}, headers=host)
    assert raised.status_code == 200 and raised.json()["max_listeners"] == 2
    await services(ceiling_3).admission.tick()
    doc = (await ceiling_3.get(f"/spaces/{sid}/queue.json")).json()
    assert doc["max_listeners"] == 2 and doc["admitting_through"] == 1
    second = await ceiling_3.post(join, json={"ticket": queued.json()["ticket"]})
    assert second.status_code == 200, second.text

    # lowered below who is in: nobody is cut off, newcomers wait
    lowered = await ceiling_3.patch(f"/api/spaces/{sid}", json={"max_listeners": 1}, headers=host)
    assert lowered.status_code == 200
    for answer in (first, second):
        renewed = await ceiling_3.post(join, json={"token": answer.json()["token"]})
        assert renewed.status_code == 200, renewed.text
    assert (await ceiling_3.post(join)).status_code == 202
    # null: back to the deployment's cap
    reset = await ceiling_3.patch(f"/api/spaces/{sid}", json={"max_listeners": None}, headers=host)
    assert reset.status_code == 200 and reset.json()["max_listeners"] is None
    await services(ceiling_3).admission.tick()
    doc = (await ceiling_3.get(f"/spaces/{sid}/queue.json")).json()
    assert doc["max_listeners"] == 3


async def test_without_a_ceiling_a_space_of_its_own_cap_is_gated_alone(
    no_ceiling: httpx.AsyncClient,
) -> None:
    api = Api(no_ceiling)
    _, host = await api.account("caphost")
    capped = (await api.space(host, title="Capped", max_listeners=1))["id"]
    free = (await api.space(host, title="Open"))["id"]
    assert (await api.space(host, title="Huge", max_listeners=5_000_000))["max_listeners"]
    too_big = await no_ceiling.post(
        "/api/spaces", json={"title": "x", "max_listeners": 10**8}, headers=host
    )
    assert "at most 10,000,000" in problem(too_big)
    gated = await no_ceiling.get(f"/spaces/{capped}/init.mp4")
    assert problem(gated, 401).startswith("This space has a listener limit")
    assert (await no_ceiling.get(f"/spaces/{free}/init.mp4")).status_code != 401
    # and the cap holds there too
    join = f"/api/spaces/{capped}/join"
    assert (await no_ceiling.post(join)).status_code == 200
    assert (await no_ceiling.post(join)).status_code == 202
    for _ in range(3):
        assert (await no_ceiling.post(f"/api/spaces/{free}/join")).status_code == 200


async def test_a_replay_is_not_gated(ceiling_3: httpx.AsyncClient) -> None:
    """The cap is about live capacity: once the space ends, its replay needs no
    token and nobody queues for it (docs/CONTRACTS.md, Admission)."""
    api = Api(ceiling_3)
    _, host = await api.account("caphost")
    sid = (await api.space(host, title="Ends", max_listeners=1))["id"]
    async with httpx.AsyncClient(
        transport=ceiling_3._transport, base_url="http://testserver"
    ) as bare:  # no cookie
        assert (await bare.get(f"/spaces/{sid}/init.mp4")).status_code == 401
        ended = await ceiling_3.post(f"/api/spaces/{sid}/end", headers=host)
        assert ended.status_code == 200, ended.text
        for name in ("live.m3u8", "init.mp4", "recording.m4a"):
            answer = await bare.get(f"/spaces/{sid}/{name}")
            assert answer.status_code != 401, (name, answer.text)
        for _ in range(3):
            assert (await bare.post(f"/api/spaces/{sid}/join")).status_code == 200
