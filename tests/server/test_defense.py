"""Evidence over HTTP and the join path's defense layers, through the app."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ARGON2, Api
from townhall.config import Settings
from townhall.evidence.chain import verify_chain
from townhall.policy import challenge as pow_
from townhall.policy.netbuckets import NetBuckets


def services(client: httpx.AsyncClient) -> Any:
    return client._transport.app.state.services  # type: ignore[attr-defined]


async def _live_space(api: Api) -> str:
    _, headers = await api.account("hostess")
    return str((await api.space(headers))["id"])


async def test_evidence_records_joins_and_verifies(app_client: httpx.AsyncClient, api: Api) -> None:
    space_id = await _live_space(api)
    for _ in range(3):
        assert (await app_client.post(f"/api/spaces/{space_id}/join")).status_code == 200
    node = services(app_client).evidence
    node.book._clock = lambda: 10**10  # close the open interval now
    node.tick()
    response = await app_client.get(f"/spaces/{space_id}/evidence.json")
    assert response.status_code == 200
    assert "max-age=" in response.headers["cache-control"]
    doc = response.json()
    key = (await app_client.get("/api/evidence/key")).json()
    verdict = verify_chain(doc, pinned_key=key["public_key"])
    assert verdict.ok, verdict.problems
    assert doc["records"][0]["arrivals"] == 3
    assert doc["records"][0]["label"] == "quiet"
    assert "127.0.0.1" not in response.text and "testclient" not in response.text
    # stored beside the recording
    stored = node.store.records(space_id)
    assert stored == doc["records"]
    page = await app_client.get(f"/spaces/{space_id}/evidence")
    assert page.status_code == 200 and "<svg" in page.text and "quiet" in page.text


async def test_evidence_of_unknown_space_is_404(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/spaces/nosuchspace/evidence.json")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_stall_reports_need_a_token_and_are_rate_limited(
    app_client: httpx.AsyncClient, api: Api
) -> None:
    space_id = await _live_space(api)
    token = (await app_client.post(f"/api/spaces/{space_id}/join")).json()["token"]
    url = f"/api/spaces/{space_id}/stalls"
    body = {"played_s": 29.0, "stalled_s": 1.0}
    assert (await app_client.post(url, json=body)).status_code == 401
    auth = {"Authorization": f"Bearer {token}"}
    assert (await app_client.post(url, json=body, headers=auth)).status_code == 202
    again = await app_client.post(url, json=body, headers=auth)
    assert again.status_code == 429 and "Retry-After" in again.headers
    rec = services(app_client).evidence.recorder(space_id)
    assert rec.goodput_reports == 1 and rec.stalled_s == 1.0


async def test_join_under_pressure_asks_for_proof_of_work(
    app_client: httpx.AsyncClient, api: Api
) -> None:
    space_id = await _live_space(api)
    defense = services(app_client).defense
    defense.effort = pow_.Effort(8)
    defense.unsolved_lane = NetBuckets(1, 3600.0, max_keys=1)
    url = f"/api/spaces/{space_id}/join"
    # the slower lane lets one client that does not solve in...
    assert (await app_client.post(url)).status_code == 200
    # ...then the others are asked to solve
    response = await app_client.post(url)
    assert response.status_code == 429
    problem = response.json()
    assert problem["type"].endswith("challenge-required") and problem["bits"] == 8
    assert "Retry-After" in response.headers and "lower rate" in problem["detail"]
    text = problem["challenge"]
    nonce = pow_.solve(text, 8)
    solved = await app_client.post(url, headers={"X-Townhall-Pow": f"{text} {nonce}"})
    assert solved.status_code == 200, solved.text
    assert solved.json()["seen_mark"]
    replay = await app_client.post(url, headers={"X-Townhall-Pow": f"{text} {nonce}"})
    assert replay.status_code == 429 and "already used" in replay.json()["detail"]
    # a challenge for another space is refused
    other = await api.space((await api.account("other"))[1])
    wrong = await app_client.post(
        f"/api/spaces/{other['id']}/join", headers={"X-Townhall-Pow": f"{text} {nonce}"}
    )
    assert wrong.status_code == 429 and "another space" in wrong.json()["detail"]
    # garbage is a clear 429 problem, never a 500
    bad = await app_client.post(url, headers={"X-Townhall-Pow": "garbage"})
    assert bad.status_code == 429 and bad.json()["challenge"]


async def test_listener_count_capped_per_network(app_client: httpx.AsyncClient, api: Api) -> None:
    space_id = await _live_space(api)
    defense = services(app_client).defense
    defense.listener_cap.cap = 5
    defense.join_buckets = type(defense.join_buckets)(10_000, 10.0)
    for _ in range(30):
        assert (await app_client.post(f"/api/spaces/{space_id}/join")).status_code == 200
    count = services(app_client).listeners.count(space_id)
    assert count <= 6, count


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        spaces_live_per_account=2,
        spaces_scheduled_per_account=1,
        spaces_created_per_account_per_hour=4,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )


async def test_account_space_limits(app_client: httpx.AsyncClient, api: Api) -> None:
    _, headers = await api.account("busyhost")
    await api.space(headers)
    await api.space(headers)
    third = await app_client.post("/api/spaces", json={"title": "3"}, headers=headers)
    assert third.status_code == 409 and third.json()["limit"] == "live"
    assert "end one" in third.json()["detail"]
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    await api.space(headers, scheduled_for=later)
    again = await app_client.post(
        "/api/spaces", json={"title": "s", "scheduled_for": later}, headers=headers
    )
    assert again.status_code == 409 and again.json()["limit"] == "scheduled"
    # ending one frees a live place; then the hourly rate stops the fourth creation
    first = (await app_client.get("/api/spaces?state=live")).json()["spaces"][0]["id"]
    assert (await app_client.post(f"/api/spaces/{first}/end", headers=headers)).status_code == 200
    assert (
        await app_client.post("/api/spaces", json={"title": "4"}, headers=headers)
    ).status_code == 201
    live = [s["id"] for s in (await app_client.get("/api/spaces?state=live")).json()["spaces"]]
    assert (await app_client.post(f"/api/spaces/{live[0]}/end", headers=headers)).status_code == 200
    fast = await app_client.post("/api/spaces", json={"title": "5"}, headers=headers)
    assert fast.status_code == 429 and "per hour" in fast.json()["detail"]
    assert int(fast.headers["Retry-After"]) > 3000


async def test_a_network_sending_forged_tokens_is_slowed_before_any_work(
    tmp_path: Path,
) -> None:
    from townhall.server.app import create_app

    settings = Settings(data_dir=tmp_path / "d", refusals_per_network_per_10s=5, **FAST_ARGON2)  # type: ignore[arg-type]
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.9.8.7", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            forged = {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.forged.sig"}
            statuses = [
                (await client.post("/api/spaces", json={"title": "t"}, headers=forged)).status_code
                for _ in range(8)
            ]
            assert statuses[:5] == [401] * 5 and statuses[5:] == [429] * 3
            shielded = await client.get("/api/spaces")
            assert shielded.status_code == 429 and "were refused" in shielded.json()["detail"]
            assert (await client.get("/healthz")).status_code == 200
        other = httpx.ASGITransport(app=app, client=("10.9.99.7", 1234))
        async with httpx.AsyncClient(transport=other, base_url="http://t") as client:
            assert (await client.get("/api/spaces")).status_code == 200


async def test_one_token_replayed_from_many_networks_is_shielded(tmp_path: Path) -> None:
    from townhall.server.app import create_app

    settings = Settings(
        data_dir=tmp_path / "d",
        refusals_per_network_per_10s=3,
        reactions_per_token_per_10s=1,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        home = httpx.ASGITransport(app=app, client=("10.1.1.1", 1))
        async with httpx.AsyncClient(transport=home, base_url="http://t") as client:
            api = Api(client)
            _, headers = await api.account("hostess")
            space = (await api.space(headers))["id"]
            token = (await client.post(f"/api/spaces/{space}/join")).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        statuses = []
        for i in range(8):  # the same token from 8 networks
            transport = httpx.ASGITransport(app=app, client=(f"10.2.{i}.1", 1))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                r = await client.post(
                    f"/api/spaces/{space}/reactions", json={"emoji": "🔥"}, headers=auth
                )
                statuses.append((r.status_code, r.json().get("detail", "")))
        assert statuses[0][0] == 202
        assert [s for s, _ in statuses[1:]] == [429] * 7
        assert "were refused" in statuses[-1][1]  # the shield, not the route
