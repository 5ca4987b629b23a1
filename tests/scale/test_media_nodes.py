"""Scaled out with the media process (the default): real `townhall serve`
nodes on one PostgreSQL and one Redis, each running its rooms in a media
process of its own. The owner's media process is killed (kill -9, the HTTP
process lives on): its room's lease is let go and the room runs again, on
this node or the other, in a new discontinuity, and both nodes answer
listeners with the new owner's bytes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, LiveServer
from tests.scale.conftest import Cluster
from tests.scale.test_bus_nodes import BUS, PART_URI, playlist, wait_for_parts

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

MEDIA = {**BUS, "TOWNHALL_MEDIA_PROCESS": "true"}


def media_pid(node: LiveServer) -> int:
    """The pid of the node's media process (its child running townhall.live.mediaproc)."""
    assert node.proc is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{node.proc.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                if b"townhall.live.mediaproc" in cmdline:
                    return int(child)
        time.sleep(0.1)
    raise AssertionError("the node has no media process")


async def test_the_owners_media_process_killed_the_room_runs_again(cluster: Cluster) -> None:
    node_a, node_b = cluster.nodes_at_once(("a", "b"), **MEDIA)
    async with (
        httpx.AsyncClient(base_url=node_a.url, timeout=20) as a,
        httpx.AsyncClient(base_url=node_b.url, timeout=20) as b,
    ):
        _, headers = await Api(a).account("host")
        space_id = (await Api(a).space(headers, title="Media"))["id"]
        await wait_for_parts(a, space_id, 20)
        await wait_for_parts(b, space_id, 20)  # B follows A's room on the bus
        metrics_a = (await a.get("/metrics")).text
        assert "townhall_spaces_live 1.0" in metrics_a  # A runs it (it started it)
        uri = PART_URI.findall(await playlist(b, space_id))[-1]

        os.kill(media_pid(node_a), signal.SIGKILL)
        killed_at = time.monotonic()
        text_a = text_b = ""
        while time.monotonic() < killed_at + 10:
            text_a = (await a.get(f"/spaces/{space_id}/live.m3u8")).text
            text_b = (await b.get(f"/spaces/{space_id}/live.m3u8")).text
            if all(
                "#EXT-X-DISCONTINUITY" in t and PART_URI.findall(t)[-1:] != [uri]
                for t in (text_a, text_b)
            ):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(
                f"the room did not run again in 10 s:\nA:\n{text_a[-800:]}\nB:\n{text_b[-800:]}\n"
                f"A's log:\n{node_a.log()[-3000:]}"
            )
        print(f"room running again after {time.monotonic() - killed_at:.2f} s")
        await asyncio.sleep(1.0)
        # one owner, the same bytes on both nodes
        uri = PART_URI.findall(await playlist(b, space_id))[-2]
        part_a = await a.get(f"/spaces/{space_id}/{uri}")
        part_b = await b.get(f"/spaces/{space_id}/{uri}")
        assert part_a.status_code == part_b.status_code == 200
        assert part_a.content == part_b.content
        health = (await a.get("/healthz")).json()
        assert "media process stopped" not in str(health), health
        response = await b.post(f"/api/spaces/{space_id}/end", headers=headers)
        assert response.status_code == 200, response.text
