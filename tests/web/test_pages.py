"""The pages and static files through the app's HTTP interface (no browser)."""

from __future__ import annotations

import httpx
import pytest

SPACE_ID = "abcdefgh2345"

PAGES = [
    ("/", "public, max-age=30", "home"),
    ("/signin", "public, max-age=30", "signin"),
    ("/signup", "public, max-age=30", "signup"),
    ("/new", "public, max-age=30", "new"),
    (f"/spaces/{SPACE_ID}", "public, max-age=30", "listener"),
    (f"/spaces/{SPACE_ID}/host", "no-store", "host"),
    (f"/spaces/{SPACE_ID}/replay", "public, max-age=30", "replay"),
]


@pytest.mark.parametrize(("path", "cache_control", "page"), PAGES)
async def test_page_is_html_with_its_module(
    app_client: httpx.AsyncClient, path: str, cache_control: str, page: str
) -> None:
    response = await app_client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == cache_control
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert f'data-page="{page}"' in response.text
    assert f'src="/static/js/pages/{page}.js' in response.text
    # every module the page loads is served
    module = await app_client.get(f"/static/js/pages/{page}.js")
    assert module.status_code == 200
    assert "javascript" in module.headers["content-type"]


async def test_space_pages_carry_the_space_id(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get(f"/spaces/{SPACE_ID}")
    assert f'data-space-id="{SPACE_ID}"' in response.text


@pytest.mark.parametrize(
    "path", ["/spaces/NOT-AN-ID", "/spaces/short/host", "/spaces/x%22y/replay"]
)
async def test_malformed_space_id_is_404_problem(app_client: httpx.AsyncClient, path: str) -> None:
    response = await app_client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "check the link" in response.json()["detail"]


async def test_pages_are_not_in_the_openapi_schema(app_client: httpx.AsyncClient) -> None:
    paths = (await app_client.get("/api/openapi.json")).json()["paths"]
    assert not [p for p in paths if not p.startswith("/api/") and "{space_id}" not in p]
    for page_path in ("/", "/signin", "/new", "/spaces/{space_id}", "/spaces/{space_id}/host"):
        assert page_path not in paths
    assert not [p for p in paths if p.startswith("/static")]


async def test_static_files_are_served_with_revalidation(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/static/app.css")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")
    assert response.headers["cache-control"] == "no-cache"
    etag = response.headers["etag"]
    again = await app_client.get("/static/app.css", headers={"If-None-Match": etag})
    assert again.status_code == 304


@pytest.mark.parametrize(
    "path",
    [
        "/static/../server/pages.py",
        "/static/%2e%2e/templates/home.html",
        "/static/js/..%2f..%2ftemplates/home.html",
        "/static/",
        "/static/js",
        "/static/no-such-file.js",
    ],
)
async def test_static_refuses_escapes_and_unknown_files(
    app_client: httpx.AsyncClient, path: str
) -> None:
    response = await app_client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_static_refuses_writes(app_client: httpx.AsyncClient) -> None:
    response = await app_client.post("/static/app.css", content=b"x")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"


async def test_hls_js_is_vendored(app_client: httpx.AsyncClient) -> None:
    response = await app_client.head("/static/vendor/hls.min.js")
    assert response.status_code == 200, "run scripts/setup.sh: it copies hls.js from npm"
