"""Accounts and sessions through the real HTTP interface."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import FAST_ARGON2, Api
from townhall.config import Settings
from townhall.policy.tokens import TokenSigner, load_keys
from townhall.server.auth import client_network


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        signin_per_account_per_min=5,
        signin_per_network_per_min=12,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )


def problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    return str(body["detail"])


async def test_sign_up_sign_in_and_me(app_client: httpx.AsyncClient, api: Api) -> None:
    account_id, headers = await api.account("Ada_L")
    me = await app_client.get("/api/me", headers=headers)
    assert me.status_code == 200
    assert me.json() == {"id": account_id, "username": "ada_l", "display_name": "ada_l"}
    session = await app_client.post(
        "/api/sessions", json={"username": "ADA_L", "password": Api.PASSWORD}
    )
    assert session.status_code == 200
    assert session.json()["expires_at"].endswith("Z")


async def test_duplicate_username_is_409(app_client: httpx.AsyncClient, api: Api) -> None:
    await api.account("bob")
    response = await app_client.post(
        "/api/accounts", json={"username": "BOB", "password": Api.PASSWORD}
    )
    assert "taken" in problem(response, 409)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "ab", "password": "long enough pw"}, "username"),
        ({"username": "has space", "password": "long enough pw"}, "username"),
        ({"username": "carol", "password": "short"}, "password"),
        ({"username": 5, "password": "long enough pw"}, "username"),
        ({"username": "carol", "password": ["x"]}, "password"),
        ({"password": "long enough pw"}, "username"),
        (
            {"username": "carol", "password": "long enough pw", "display_name": "x" * 65},
            "display_name",
        ),
    ],
)
async def test_sign_up_validation_names_the_field(
    app_client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    response = await app_client.post("/api/accounts", json=body)
    assert f"'{field}'" in problem(response, 422)


async def test_malformed_json_is_400(app_client: httpx.AsyncClient) -> None:
    response = await app_client.post(
        "/api/accounts", content=b'{"username": ', headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in problem(response, 400)


async def test_oversized_body_is_413(app_client: httpx.AsyncClient) -> None:
    response = await app_client.post(
        "/api/sessions",
        content=b"{" + b" " * (70 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert "larger than" in problem(response, 413)


async def test_wrong_password_is_401(app_client: httpx.AsyncClient, api: Api) -> None:
    await api.account("dave")
    response = await app_client.post(
        "/api/sessions", json={"username": "dave", "password": "not the password"}
    )
    assert "Wrong username or password" in problem(response, 401)
    response = await app_client.post(
        "/api/sessions", json={"username": "nobody", "password": "not the password"}
    )
    assert "Wrong username or password" in problem(response, 401)


async def test_sign_in_brute_force_is_429_with_retry_after(
    app_client: httpx.AsyncClient, api: Api
) -> None:
    await api.account("erin")
    for _ in range(5):
        response = await app_client.post(
            "/api/sessions", json={"username": "erin", "password": "guess guess guess"}
        )
        assert response.status_code == 401
    # locked: even the right password is refused until the window passes
    response = await app_client.post(
        "/api/sessions", json={"username": "erin", "password": Api.PASSWORD}
    )
    assert "failed sign-ins for this account" in problem(response, 429)
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["retry_after_s"] > 0
    metrics = (await app_client.get("/metrics")).text
    assert 'townhall_rate_limited_total{limit="signin_account"}' in metrics


async def test_sign_in_is_limited_per_network(app_client: httpx.AsyncClient) -> None:
    statuses = []
    for i in range(13):
        response = await app_client.post(
            "/api/sessions", json={"username": f"user{i}", "password": "guess guess guess"}
        )
        statuses.append(response.status_code)
    assert statuses[:12] == [401] * 12
    assert statuses[12] == 429
    assert "from your network" in response.json()["detail"]
    assert "retry-after" in response.headers


async def test_me_needs_a_valid_session(
    app_client: httpx.AsyncClient, api: Api, settings: Settings
) -> None:
    account_id, headers = await api.account("frank")
    assert "Sign in first" in problem(await app_client.get("/api/me"), 401)
    bad_scheme = await app_client.get("/api/me", headers={"Authorization": "Basic abc"})
    assert "Bearer" in problem(bad_scheme, 401)
    garbage = await app_client.get("/api/me", headers={"Authorization": "Bearer nonsense"})
    assert "malformed" in problem(garbage, 401)

    keys = load_keys("", settings.data_dir)
    expired = TokenSigner(keys, clock=lambda: 1_000_000.0).issue("session", account_id, 60)
    response = await app_client.get("/api/me", headers={"Authorization": f"Bearer {expired}"})
    assert "expired" in problem(response, 401)

    forged = TokenSigner([b"not-the-server-key-0123456789-0123456789"]).issue(
        "session", account_id, 60
    )
    response = await app_client.get("/api/me", headers={"Authorization": f"Bearer {forged}"})
    assert "forged or tampered" in problem(response, 401)

    token = headers["Authorization"].split()[1]
    head, payload, signature = token.split(".")
    tampered = f"{head}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{signature}"
    response = await app_client.get("/api/me", headers={"Authorization": f"Bearer {tampered}"})
    assert response.status_code == 401
    assert (
        "forged or tampered" in response.json()["detail"]
        or "malformed" in response.json()["detail"]
    )

    listener = TokenSigner(keys).issue("listener", account_id, 60, space_id="x")
    response = await app_client.get("/api/me", headers={"Authorization": f"Bearer {listener}"})
    assert "wrong kind" in problem(response, 401)


@pytest.mark.parametrize(
    ("host", "network"),
    [
        ("203.0.113.77", "203.0.113.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.9", "198.51.100.0/24"),
        (None, "unknown"),
        ("not-an-ip", "unknown"),
    ],
)
def test_client_network(host: str | None, network: str) -> None:
    assert client_network(host) == network
