"""`townhall serve` runs the fast protocol by default (uvloop, the real app):
a live space's playlist, parts and init come from the fast path, while the API,
pages, health and metrics still go through the app on the same server; with
--no-fast-path everything goes through the app."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.slow


def fast_answers(metrics_text: str) -> float:
    return sum(
        float(m.group(1))
        for m in re.finditer(
            r"^townhall_fastpath_responses_total\{[^}]*\} (\S+)$", metrics_text, re.M
        )
    )


def live_space(client: httpx.Client) -> str:
    user = {"username": "host1", "password": "correct horse 1"}
    assert client.post("/api/accounts", json=user).status_code == 201
    token = client.post("/api/sessions", json=user).json()["token"]
    space = client.post(
        "/api/spaces",
        json={"title": "fast", "visibility": "public"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert space.status_code == 201, space.text
    return str(space.json()["id"])


def listen(client: httpx.Client, space_id: str) -> None:
    """A player's first requests: playlist (held until the first part), init, a part."""
    playlist = client.get(f"/spaces/{space_id}/live.m3u8")
    assert playlist.status_code == 200, playlist.text
    assert playlist.headers["content-type"] == "application/vnd.apple.mpegurl"
    init = client.get(f"/spaces/{space_id}/init.mp4")
    assert init.status_code == 200 and init.content[4:8] == b"ftyp"
    uri = re.findall(r'URI="(part/[^"]+)"', playlist.text)[0]
    part = client.get(f"/spaces/{space_id}/{uri}")
    assert part.status_code == 200 and part.content[4:8] == b"moof"
    assert part.headers["cache-control"] == "public, max-age=31536000, immutable"


@pytest.mark.parametrize("fast", [True, False])
def test_serve_answers_hot_paths_fast_and_the_rest_through_the_app(
    tmp_path: Path, fast: bool
) -> None:
    server = LiveServer(tmp_path / "data", args=[] if fast else ["--no-fast-path"]).start()
    try:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            space_id = live_space(client)
            listen(client, space_id)
            assert client.get("/healthz").json()["status"] == "ok"
            spaces = client.get("/api/spaces", params={"state": "live"}).json()["spaces"]
            assert [s["id"] for s in spaces] == [space_id]
            assert client.get("/api/openapi.json").json()["info"]["title"] == "townhall"
            assert client.get(f"/spaces/{space_id}").status_code == 200
            missing = client.get(f"/spaces/{space_id}/part/0.99.m4s")
            assert missing.status_code == 404
            assert missing.headers["content-type"] == "application/problem+json"
            assert client.get(f"/spaces/{space_id}/state.json").status_code == 200
            time.sleep(1.2)  # the fast path adds its counts to Prometheus within a second
            metrics_text = client.get("/metrics").text
        answered = fast_answers(metrics_text)
        assert answered >= 3 if fast else answered == 0
    finally:
        server.stop()
