"""The pages and static files through the app's HTTP interface (no browser)."""

from __future__ import annotations

from typing import Any

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


# -- issue 12: the rough edges a first use finds ---------------------------------


async def test_unknown_page_is_a_human_page_for_browsers(app_client: httpx.AsyncClient) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    for path in ("/no/such/page", "/spaces/NOT-AN-ID"):
        response = await app_client.get(path, headers=browser)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("text/html")
        assert "Page not found" in response.text
        assert 'href="/"' in response.text
    # machines still get problem+json
    response = await app_client.get("/no/such/page")
    assert response.headers["content-type"] == "application/problem+json"
    api = await app_client.get("/api/nothing", headers=browser)
    assert api.headers["content-type"] == "application/problem+json"


async def test_new_space_form_limits_match_the_server(app_client: httpx.AsyncClient) -> None:
    from townhall.server.api_spaces import SpaceIn

    text = (await app_client.get("/new")).text
    title_max = SpaceIn.model_json_schema()["properties"]["title"]["maxLength"]
    description_max = SpaceIn.model_json_schema()["properties"]["description"]["maxLength"]
    assert f'name="title" required maxlength="{title_max}"' in text
    assert f'maxlength="{description_max}"' in text


async def test_listener_page_has_link_preview_tags(app_client: httpx.AsyncClient, api: Any) -> None:
    _, headers = await api.account("previewhost")
    space = await api.space(headers, title="Town <b>hall</b> & friends", description="We talk.")
    text = (await app_client.get(f"/spaces/{space['id']}")).text
    assert '<meta property="og:title" content="Town &lt;b&gt;hall&lt;/b&gt; &amp; friends">' in text
    assert '<meta property="og:description" content="We talk.">' in text
    assert f'/spaces/{space["id"]}">' in text  # og:url
    assert "<title>Town &lt;b&gt;hall&lt;/b&gt; &amp; friends · townhall</title>" in text


async def test_event_ics_is_a_calendar_entry(app_client: httpx.AsyncClient, api: Any) -> None:
    from datetime import UTC, datetime, timedelta

    _, headers = await api.account("icshost")
    when = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    space = await api.space(
        headers,
        title="Budget, night; with a very long title " + "x" * 80,
        scheduled_for=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    response = await app_client.get(f"/spaces/{space['id']}/event.ics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/calendar")
    assert "attachment" in response.headers["content-disposition"]
    raw = response.content.decode()
    assert raw.startswith("BEGIN:VCALENDAR\r\n") and raw.endswith("END:VCALENDAR\r\n")
    assert all(len(line.encode()) <= 75 for line in raw.split("\r\n"))
    unfolded = raw.replace("\r\n ", "")
    assert f"DTSTART:{when.strftime('%Y%m%dT%H%M%SZ')}" in unfolded
    assert "SUMMARY:Budget\\, night\\; with a very long title " + "x" * 80 in unfolded
    assert f"/spaces/{space['id']}" in unfolded
    missing = await app_client.get("/spaces/abcdefgh2345/event.ics")
    assert missing.status_code == 404
