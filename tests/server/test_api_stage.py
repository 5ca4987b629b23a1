"""Stage moderation through the real HTTP interface: seats, requests, mute,
move to the audience, blocks."""

from __future__ import annotations

import httpx

from tests.conftest import Api


def problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["detail"])


async def test_eleventh_speaker_and_third_cohost_are_409(
    app_client: httpx.AsyncClient, api: Api
) -> None:
    _, host = await api.account("host")
    sid = (await api.space(host))["id"]
    for i in range(10):
        await api.account(f"speaker{i}")
        response = await app_client.post(
            f"/api/spaces/{sid}/invites",
            json={"username": f"speaker{i}", "role": "speaker"},
            headers=host,
        )
        assert response.status_code == 200, response.text
    await api.account("speaker10")
    response = await app_client.post(
        f"/api/spaces/{sid}/invites",
        json={"username": "speaker10", "role": "speaker"},
        headers=host,
    )
    detail = problem(response, 409)
    assert "already has 10 speakers" in detail and "audience first" in detail

    for name in ("co1", "co2", "co3"):
        await api.account(name)
    for name in ("co1", "co2"):
        response = await app_client.post(
            f"/api/spaces/{sid}/invites", json={"username": name, "role": "cohost"}, headers=host
        )
        assert response.status_code == 200
    response = await app_client.post(
        f"/api/spaces/{sid}/invites", json={"username": "co3", "role": "cohost"}, headers=host
    )
    assert "already has 2 co-hosts" in problem(response, 409)
    state = (await app_client.get(f"/spaces/{sid}/state.json")).json()
    assert [s["role"] for s in state["speakers"]].count("speaker") == 10
    assert [s["role"] for s in state["speakers"]].count("cohost") == 2


async def test_request_approve_deny(app_client: httpx.AsyncClient, api: Api) -> None:
    _, host = await api.account("host")
    ann_id, ann = await api.account("ann")
    ben_id, ben = await api.account("ben")
    sid = (await api.space(host))["id"]
    assert (await app_client.post(f"/api/spaces/{sid}/requests", headers=ann)).status_code == 202
    assert (await app_client.post(f"/api/spaces/{sid}/requests", headers=ben)).status_code == 202
    assert "host and co-hosts" in problem(
        await app_client.get(f"/api/spaces/{sid}/requests", headers=ann), 403
    )
    pending = (await app_client.get(f"/api/spaces/{sid}/requests", headers=host)).json()
    assert [r["username"] for r in pending["requests"]] == ["ann", "ben"]
    assert pending["requests"][0]["requested_at"].endswith("Z")
    approved = await app_client.post(f"/api/spaces/{sid}/requests/{ann_id}/approve", headers=host)
    assert approved.status_code == 200 and approved.json()["role"] == "speaker"
    denied = await app_client.post(f"/api/spaces/{sid}/requests/{ben_id}/deny", headers=host)
    assert denied.status_code == 200
    assert (await app_client.get(f"/api/spaces/{sid}/requests", headers=host)).json() == {
        "requests": []
    }
    again = await app_client.post(f"/api/spaces/{sid}/requests/{ben_id}/approve", headers=host)
    assert "not asked" in problem(again, 404)
    # ann is on stage now: she can get a speaker token, and cannot ask again
    token = await app_client.post(f"/api/spaces/{sid}/speaker-token", headers=ann)
    assert token.status_code == 200 and token.json()["role"] == "speaker"
    assert "already on stage" in problem(
        await app_client.post(f"/api/spaces/{sid}/requests", headers=ann), 403
    )


async def test_mute_demote_rules(app_client: httpx.AsyncClient, api: Api) -> None:
    host_id, host = await api.account("host")
    co_id, co = await api.account("coh")
    sp_id, sp = await api.account("spk")
    _, listener = await api.account("lis")
    sid = (await api.space(host))["id"]
    for name, role in (("coh", "cohost"), ("spk", "speaker")):
        await app_client.post(
            f"/api/spaces/{sid}/invites", json={"username": name, "role": role}, headers=host
        )
    base = f"/api/spaces/{sid}/speakers"
    assert "host and co-hosts" in problem(
        await app_client.post(f"{base}/{sp_id}/mute", headers=listener), 403
    )
    assert "to the host" in problem(
        await app_client.post(f"{base}/{host_id}/mute", headers=co), 403
    )
    muted = await app_client.post(f"{base}/{sp_id}/mute", headers=co)
    assert muted.status_code == 200 and muted.json()["muted"] is True
    assert (await app_client.post(f"{base}/{sp_id}/unmute", headers=sp)).status_code == 200
    assert (await app_client.post(f"{base}/{host_id}/mute", headers=host)).status_code == 200
    assert "cannot leave the stage" in problem(
        await app_client.post(f"{base}/{host_id}/demote", headers=host), 403
    )
    assert (await app_client.post(f"{base}/{sp_id}/demote", headers=sp)).status_code == 200
    assert "not on stage" in problem(await app_client.post(f"{base}/{sp_id}/mute", headers=co), 403)
    assert (await app_client.post(f"{base}/{co_id}/demote", headers=host)).status_code == 200
    assert "request to speak" in problem(
        await app_client.post(f"/api/spaces/{sid}/speaker-token", headers=co), 403
    )
    assert "no such account" in problem(
        await app_client.post(f"{base}/zzzzzzzzzzzz/mute", headers=host), 404
    )


async def test_cohost_cannot_end_or_block_the_host(app_client: httpx.AsyncClient, api: Api) -> None:
    host_id, host = await api.account("host")
    _, co = await api.account("coh")
    sid = (await api.space(host))["id"]
    await app_client.post(
        f"/api/spaces/{sid}/invites", json={"username": "coh", "role": "cohost"}, headers=host
    )
    assert "Only the host" in problem(
        await app_client.post(f"/api/spaces/{sid}/end", headers=co), 403
    )
    response = await app_client.post(
        f"/api/spaces/{sid}/blocks", json={"account_id": host_id}, headers=co
    )
    assert "to the host" in problem(response, 403)
    response = await app_client.post(
        f"/api/spaces/{sid}/invites", json={"username": "host", "role": "speaker"}, headers=co
    )
    assert "to the host" in problem(response, 403)
    response = await app_client.post(
        f"/api/spaces/{sid}/invites", json={"username": "nobody", "role": "speaker"}, headers=co
    )
    assert "no account" in problem(response, 404)
    response = await app_client.post(
        f"/api/spaces/{sid}/invites", json={"username": "coh", "role": "boss"}, headers=host
    )
    assert "'role'" in problem(response, 422)


async def test_blocked_account_cannot_rejoin(app_client: httpx.AsyncClient, api: Api) -> None:
    _, host = await api.account("host")
    troll_id, troll = await api.account("troll")
    sid = (await api.space(host))["id"]
    await app_client.post(
        f"/api/spaces/{sid}/invites", json={"username": "troll", "role": "speaker"}, headers=host
    )
    joined = await app_client.post(f"/api/spaces/{sid}/join", headers=troll)
    listener_token = joined.json()["token"]
    blocked = await app_client.post(
        f"/api/spaces/{sid}/blocks", json={"account_id": troll_id}, headers=host
    )
    assert blocked.status_code == 200 and blocked.json()["blocked"] is True
    assert "blocked" in problem(
        await app_client.post(f"/api/spaces/{sid}/join", headers=troll), 403
    )
    renewal = await app_client.post(f"/api/spaces/{sid}/join", json={"token": listener_token})
    assert "blocked" in problem(renewal, 403)
    assert "blocked" in problem(
        await app_client.post(f"/api/spaces/{sid}/speaker-token", headers=troll), 403
    )
    assert "blocked" in problem(
        await app_client.post(f"/api/spaces/{sid}/requests", headers=troll), 403
    )
    state = (await app_client.get(f"/spaces/{sid}/state.json")).json()
    assert troll_id not in {s["account_id"] for s in state["speakers"]}
    # blocking again is harmless; the host cannot block themself
    again = await app_client.post(
        f"/api/spaces/{sid}/blocks", json={"account_id": troll_id}, headers=host
    )
    assert again.status_code == 200
