"""The cap holds: a capped space's media needs a listener token (query ?t=
or the cookie join sets), on the fast path and on the app path alike; 401
problem+json otherwise. Uncapped spaces keep working without tokens."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from townhall.policy.media_gate import MISSING

pytestmark = [pytest.mark.slow]


async def live_space(http: httpx.AsyncClient) -> str:
    creds = {"username": "gatehost", "password": "correct horse 1"}
    await http.post("/api/accounts", json=creds)
    token = (await http.post("/api/sessions", json=creds)).json()["token"]
    space = await http.post(
        "/api/spaces", json={"title": "Gated"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert space.status_code == 201, space.text
    return str(space.json()["id"])


async def playlist(http: httpx.AsyncClient, path: str, **kw: object) -> httpx.Response:
    for _ in range(100):
        answer = await http.get(path, **kw)  # type: ignore[arg-type]
        if answer.status_code != 200 or "#EXT-X-PART:" in answer.text:
            return answer
        await asyncio.sleep(0.1)
    return answer


@pytest.mark.parametrize("fast_path", ["true", "false"])
async def test_capped_media_needs_a_token(tmp_path: Path, fast_path: str) -> None:
    server = LiveServer(
        tmp_path / "data",
        # the probes below send refused requests back to back on one connection,
        # as a flood does; the Retry-After pause (tests/origin/test_retry_penalty.py)
        # would hold each next one for seconds, so it is off for this test of the gate
        extra_env={
            "TOWNHALL_MAX_LISTENERS": "5",
            "TOWNHALL_FAST_PATH": fast_path,
            "TOWNHALL_HTTP_REFUSED_PAUSE_MAX_S": "0",
        },
    ).start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            sid = await live_space(http)
            base = f"/spaces/{sid}/"
            for name in ("live.m3u8", "plain.m3u8", "init.mp4", "part/0.0.m4s", "live.aac"):
                refused = await http.get(base + name)
                assert refused.status_code == 401, (name, refused.text)
                assert refused.headers["content-type"] == "application/problem+json"
                assert refused.json()["detail"] == MISSING.format(space_id=sid)
            forged = await http.get(base + "live.m3u8", params={"t": "a.b.c"})
            assert forged.status_code == 401
            assert forged.json()["detail"].startswith("The token")
            # join: the cookie carries the token to the media by itself
            joined = await http.post(f"/api/spaces/{sid}/join", json={})
            assert joined.status_code == 200
            token = joined.json()["token"]
            listed = await playlist(http, base + "live.m3u8")
            assert listed.status_code == 200, listed.text
            part = re.search(r'URI="(part/[^"]+)"', listed.text)
            assert part
            assert (await http.get(base + part.group(1))).status_code == 200
            # players without cookies: ?t=
            async with httpx.AsyncClient(base_url=server.url, timeout=20) as bare:
                assert (await bare.get(base + "live.m3u8")).status_code == 401
                with_query = await bare.get(base + "live.m3u8", params={"t": token})
                assert with_query.status_code == 200, with_query.text
                other = await bare.post(f"/api/spaces/{sid}/join", json={})
                wrong = await bare.get(
                    f"/spaces/{await live_space_other(bare)}/live.m3u8",
                    params={"t": other.json()["token"]},
                )
                assert wrong.status_code == 401
    finally:
        server.stop()


async def live_space_other(http: httpx.AsyncClient) -> str:
    creds = {"username": "gatehost2", "password": "correct horse 1"}
    await http.post("/api/accounts", json=creds)
    token = (await http.post("/api/sessions", json=creds)).json()["token"]
    space = await http.post(
        "/api/spaces", json={"title": "Other"}, headers={"Authorization": f"Bearer {token}"}
    )
    return str(space.json()["id"])
