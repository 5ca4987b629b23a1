from __future__ import annotations

import httpx

from tests.conftest import LiveServer


async def test_healthz_answers(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_metrics_are_prometheus_text(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "townhall_http_requests_total" in response.text


async def test_openapi_schema_is_served(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.json()["info"]["title"] == "townhall"


async def test_unknown_path_is_problem_json(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "check the URL" in response.json()["detail"]


async def test_oversized_body_is_413(app_client: httpx.AsyncClient, settings: object) -> None:
    response = await app_client.post("/api/accounts", content=b"x" * (65 * 1024))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert "larger than" in response.json()["detail"]


def test_serve_runs_and_answers_healthz(live_server: LiveServer) -> None:
    response = httpx.get(live_server.url + "/healthz", timeout=5)
    assert response.status_code == 200
