"""The deployment guide's cache in front (deploy/nginx-cache.conf), run for
real: nginx in front of a live `townhall serve`. Listeners waiting for the
same next part (a blocking playlist reload) are collapsed into ONE request to
the origin, and immutable parts are answered from the cache."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow]


@pytest.fixture
def nginx_in_front(live_server: LiveServer, tmp_path: Path) -> Iterator[str]:
    yield from run_nginx(live_server, tmp_path)


def run_nginx(
    live_server: LiveServer,
    tmp_path: Path,
    *,
    gate: str = "off",
    secret: str = "unused",
    template: str = "nginx-cache.conf",
) -> Iterator[str]:
    """nginx with deploy/``template`` in front of ``live_server`` (as each of
    nginx-nodes.conf's three nodes)."""
    if shutil.which("nginx") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (scripts/setup.sh --test installs nginx-light)")
        pytest.skip("NGINX NOT TESTED: nginx is not installed")
    port = free_port()
    prefix = tmp_path / "nginx"
    (prefix / "cache").mkdir(parents=True)
    conf = (ROOT / "deploy" / template).read_text()
    for node in ("@ORIGIN@", "@NODE1@", "@NODE2@", "@NODE3@"):
        conf = conf.replace(node, f"127.0.0.1:{live_server.port}")
    conf = (
        conf.replace("@LISTEN@", f"127.0.0.1:{port}")
        .replace("@CACHE_DIR@", str(prefix / "cache"))
        .replace("@MEDIA_GATE@", gate)
        .replace("@LINK_SECRET@", secret)
    )
    (prefix / "nginx.conf").write_text(conf)
    directives = f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/error.log;"
    if os.geteuid() == 0:
        directives += " user root;"  # workers must reach the test's private temp dir
    proc = subprocess.Popen(
        ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", directives],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise AssertionError(f"nginx did not start: {err}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def live_space(http: httpx.AsyncClient) -> str:
    password = "correct horse 1"
    await http.post("/api/accounts", json={"username": "cachehost", "password": password})
    token = (
        await http.post("/api/sessions", json={"username": "cachehost", "password": password})
    ).json()["token"]
    response = await http.post(
        "/api/spaces", json={"title": "Cached"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_waiters_for_the_next_part_reach_the_origin_once(
    nginx_in_front: str, live_server: LiveServer
) -> None:
    async with httpx.AsyncClient(base_url=nginx_in_front, timeout=20) as http:
        space_id = await live_space(http)
        base = f"/spaces/{space_id}/"
        # wait for the live edge, then ask everyone for the part after it
        for _ in range(100):
            playlist = (await http.get(base + "live.m3u8")).text
            if "#EXT-X-PRELOAD-HINT" in playlist:
                break
            await asyncio.sleep(0.1)
        hint = re.search(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part/(\d+)\.(\d+)\.m4s"', playlist)
        assert hint, playlist
        msn, part = hint.groups()
        blocking = f"{base}live.m3u8?_HLS_msn={msn}&_HLS_part={part}"

        answers = await asyncio.gather(*(http.get(blocking) for _ in range(40)))
        assert {a.status_code for a in answers} == {200}
        assert len({a.content for a in answers}) == 1  # the same playlist for all
        assert f"part/{msn}.{part}.m4s" in answers[0].text
        cache = [a.headers.get("x-cache") for a in answers]
        assert cache.count("MISS") == 1, cache  # one request reached the origin

        # an immutable part: the second listener is served by the cache
        first = await http.get(f"{base}part/{msn}.{part}.m4s")
        second = await http.get(f"{base}part/{msn}.{part}.m4s")
        assert first.status_code == second.status_code == 200
        assert second.headers["x-cache"] == "HIT"
        assert first.content == second.content

        # the init segment the playlist names (init/EPOCH.mp4) is cached too:
        # without it every listener's start reaches the origin
        init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', playlist)
        assert init, playlist
        first = await http.get(base + init.group(1))
        second = await http.get(base + init.group(1))
        assert first.status_code == second.status_code == 200
        assert second.headers.get("x-cache") == "HIT", (init.group(1), second.headers)
        assert first.content == second.content

        # the API is passed through, never cached
        join = await http.post(f"/api/spaces/{space_id}/join", json={})
        assert join.status_code == 200 and "x-cache" not in join.headers


async def _get(port: int, target: str) -> tuple[int, str | None, bytes]:
    """One GET on a connection of its own: (status, X-Cache, body). Raw asyncio
    streams, so that 1,200 of them start within a second on a busy machine."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split(" ")[1]), fields.get("X-Cache"), body


@pytest.mark.parametrize("template", ["nginx-cache.conf", "nginx-nodes.conf"])
async def test_more_than_1024_waiters_for_a_part_reach_the_origin_once(
    template: str, live_server: LiveServer, tmp_path: Path
) -> None:
    """Every LL-HLS listener asks for the preload-hinted part before it exists,
    so with N listeners on a cache N requests wait on its lock. nginx counts an
    entry's requests in 10 bits: with the default proxy_cache_min_uses 1 the
    1,024th waiter passed the lock to the origin, uncached (one more origin
    request per part per 1,024 listeners: the origin's load grew with
    listeners). 1,200 waiters for a part one segment ahead must make ONE."""
    with contextmanager(run_nginx)(live_server, tmp_path, template=template) as url:
        port = int(url.rsplit(":", 1)[1])
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            space_id = await live_space(http)
            base = f"/spaces/{space_id}/"
            for _ in range(100):
                playlist = (await http.get(base + "live.m3u8")).text
                if "#EXT-X-PRELOAD-HINT" in playlist:
                    break
                await asyncio.sleep(0.1)
        hint = re.search(r'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part/(\d+)\.(\d+)\.m4s"', playlist)
        assert hint, playlist
        msn, index = (int(x) for x in hint.groups())
        # the same part of the next segment: ~4 s away (8 parts of 0.5 s),
        # which the origin holds (it waits for parts up to the next segment)
        target = f"{base}part/{msn + 1}.{index}.m4s"
        started = time.monotonic()
        answers = await asyncio.gather(*(_get(port, target) for _ in range(1200)))
        assert time.monotonic() - started > 1.0  # they waited for the part to be made
        assert {status for status, _, _ in answers} == {200}, answers[:3]
        assert len({body for _, _, body in answers}) == 1
        cache = [x for _, x, _ in answers]
        assert cache.count("MISS") == 1, {x: cache.count(x) for x in set(cache)}
