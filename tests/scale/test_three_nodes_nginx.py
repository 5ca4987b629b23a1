"""docs/DEPLOYMENT.md's scaled-out deployment, run for real: three `townhall
serve` nodes with the segment bus and room leases on the machine's
PostgreSQL and Redis (a prefix of their own), one nginx in front
(deploy/nginx-nodes.conf). A speaker publishes a tone through nginx (which
finds the node that runs the room); a listener reading through nginx hears
it whichever node answers; kill -9 of the room's node: the room is taken
over and, once the speaker connects again (through nginx, which finds the
new owner), the tone is back for listeners."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, LiveServer, free_port
from tests.scale.conftest import REDIS_URL, Cluster
from tests.scale.test_bus_nodes import BUS, Speaker, live_edge, speaker_token, until_tone

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


def start_nginx(nodes: list[LiveServer], prefix: Path) -> tuple[subprocess.Popen[bytes], str]:
    if shutil.which("nginx") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed (scripts/setup.sh --test installs nginx-light)")
        pytest.skip("NGINX NOT TESTED: nginx is not installed")
    port = free_port()
    (prefix / "cache").mkdir(parents=True)
    conf = (ROOT / "deploy" / "nginx-nodes.conf").read_text()
    for i, node in enumerate(nodes, 1):
        conf = conf.replace(f"@NODE{i}@", f"127.0.0.1:{node.port}")
    conf = conf.replace("@LISTEN@", f"127.0.0.1:{port}").replace(
        "@CACHE_DIR@", str(prefix / "cache")
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
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(url + "/healthz", timeout=1)
            return proc, url
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                proc.kill()
                raise AssertionError(f"nginx did not start: {err}") from None
            time.sleep(0.1)


@pytest.fixture
def three_nodes(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[list[LiveServer], str]]:
    nodes = [cluster.node(name, **BUS) for name in ("a", "b", "c")]
    proc, url = start_nginx(nodes, tmp_path / "nginx")
    try:
        yield nodes, url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def owner_port(prefix: str, space_id: str) -> int:
    """The port of the node holding the room's lease (``n:host:port:pid``)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        deadline = time.monotonic() + 10
        while (value := await client.get(f"{prefix}lease:{space_id}")) is None:
            assert time.monotonic() < deadline, "nobody holds the room's lease"
            await asyncio.sleep(0.1)
        return int(value.decode().split(":")[2])
    finally:
        await client.aclose()


async def connect_speaker(url: str, space_id: str, token: str, timeout_s: float) -> Speaker:
    """A speaker through nginx; connects again until a node accepts it (an
    offer nobody accepts fails at once; one accepted keeps publishing)."""
    deadline = time.monotonic() + timeout_s
    while True:
        speaker = Speaker(url, space_id, token)
        done, _ = await asyncio.wait({speaker.task}, timeout=2.0)
        if not done:
            return speaker
        exc = speaker.task.exception()
        assert time.monotonic() < deadline, f"the speaker could not connect: {exc}"
        await asyncio.sleep(0.2)


async def test_three_nodes_behind_nginx_survive_the_owner(
    three_nodes: tuple[list[LiveServer], str], redis_prefix: str
) -> None:
    nodes, url = three_nodes
    speaker: Speaker | None = None
    async with httpx.AsyncClient(base_url=url, timeout=20) as http:
        _, headers = await Api(http).account("host")
        space_id = (await Api(http).space(headers, title="Three nodes"))["id"]
        try:
            token = await speaker_token(http, space_id, headers)
            speaker = await connect_speaker(url, space_id, token, 20)
            await until_tone(http, space_id, 30)
            # every node answers with the tone (the owner and two followers)
            for node in nodes:
                async with httpx.AsyncClient(base_url=node.url, timeout=20) as direct:
                    await until_tone(direct, space_id, 15)
            port = await owner_port(redis_prefix, space_id)
            owner = next(n for n in nodes if n.port == port)
            # kill -9 the room's node; the speaker connects again through nginx
            async with httpx.AsyncClient(base_url=owner.url, timeout=5) as direct:
                edge = await live_edge(direct, space_id)  # no part past this is heard yet
            killed_at = time.monotonic()
            owner.stop(signal.SIGKILL)
            await speaker.close()
            speaker = await connect_speaker(url, space_id, token, 15)
            back_at = await until_tone(http, space_id, 20, after=edge)
            print(f"tone back through nginx {back_at - killed_at:.2f} s after kill -9")
            new_port = await owner_port(redis_prefix, space_id)
            assert new_port != port and new_port in {n.port for n in nodes}
            assert back_at - killed_at <= 10.0
        finally:
            if speaker is not None:
                await speaker.close()
