"""Sign-out on one node: the token is refused after DELETE (or POST .../revoke),
other sessions are not; sign out everywhere stops all older sessions of the
account and none of another account's."""

from __future__ import annotations

import httpx

from tests.conftest import Api


async def sign_in(client: httpx.AsyncClient, username: str) -> dict[str, str]:
    response = await client.post(
        "/api/sessions", json={"username": username, "password": Api.PASSWORD}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def test_sign_out_revokes_this_session_only(app_client: httpx.AsyncClient, api: Api) -> None:
    _, first = await api.account("ada")
    second = await sign_in(app_client, "ada")
    response = await app_client.delete("/api/sessions/current", headers=first)
    assert response.status_code == 204 and response.content == b""
    refused = await app_client.get("/api/me", headers=first)
    assert refused.status_code == 401 and "signed out" in refused.json()["detail"]
    # a revoked session cannot create spaces, nor sign out again
    assert (
        await app_client.post("/api/spaces", json={"title": "x"}, headers=first)
    ).status_code == 401
    assert (await app_client.delete("/api/sessions/current", headers=first)).status_code == 401
    assert (await app_client.get("/api/me", headers=second)).status_code == 200
    post = await app_client.post("/api/sessions/current/revoke", headers=second)
    assert post.status_code == 204
    assert (await app_client.get("/api/me", headers=second)).status_code == 401
    assert (await app_client.delete("/api/sessions/current")).status_code == 401


async def test_sign_out_everywhere(app_client: httpx.AsyncClient, api: Api) -> None:
    _, ada1 = await api.account("ada")
    ada2 = await sign_in(app_client, "ada")
    _, bob = await api.account("bob")
    assert (await app_client.post("/api/sessions/revoke-all", headers=ada1)).status_code == 204
    for headers in (ada1, ada2):
        assert (await app_client.get("/api/me", headers=headers)).status_code == 401
    assert (await app_client.get("/api/me", headers=bob)).status_code == 200
    # signing in again right away (same second) gives a session that works
    again = await sign_in(app_client, "ada")
    assert (await app_client.get("/api/me", headers=again)).status_code == 200
    # a revoked session's account joins anonymously no more: the join refuses it
    space = await api.space(bob)
    joined = await app_client.post(f"/api/spaces/{space['id']}/join", headers=ada1)
    assert joined.status_code == 401
