from __future__ import annotations

import httpx

from tests.conftest import LiveServer
from townhall.config import Settings
from townhall.server.app import create_app


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


async def test_unexpected_error_is_a_500_problem_that_keeps_the_connection(
    settings: Settings,
) -> None:
    # the error must not propagate out of the app: the server would close the
    # keep-alive connection and fail the client's next request on it
    app = create_app(settings)

    @app.get("/boom", include_in_schema=False)
    async def boom() -> None:
        raise RuntimeError("a bug")

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "logged" in response.json()["detail"]


async def test_405_names_every_allowed_method(app_client: httpx.AsyncClient) -> None:
    cases = {
        "/api/spaces": "GET, POST",
        "/api/sessions": "POST",
        "/api/sessions/current": "DELETE",
        "/api/me": "GET",
        "/api/spaces/abcdefghijkl/join": "POST",
        "/spaces/abcdefghijkl/state.json": "GET, OPTIONS",  # CORS preflight (issue 12)
        "/static/js/ui.js": "GET, HEAD",
    }
    for path, allow in cases.items():
        for method in ("TRACE", "PUT", "PATCH"):
            response = await app_client.request(method, path)
            assert response.status_code == 405, (method, path, response.status_code)
            assert response.headers["allow"] == allow, (method, path)
            assert response.headers["content-type"] == "application/problem+json"
