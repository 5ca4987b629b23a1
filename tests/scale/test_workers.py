"""`townhall serve --workers 2` on the machine's PostgreSQL and Redis: two
worker processes on one port (SO_REUSEPORT), each a node of the scaled-out
deployment. A speaker bot joins through the port whichever worker takes its
offer (a worker that does not run the room passes the offer on to the one
that does); listeners on the port, and on each worker, decode the tone;
live.aac through the port is answered by the owner or passed on to it; kill
-9 of the owner worker: the supervisor restarts it, a worker takes the room
(a new lease), the bot reconnects by itself and the tone is back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Api, LiveServer
from tests.scale.conftest import REDIS_URL, Cluster
from tests.scale.test_bus_nodes import BUS, live_edge, speaker_token, until_tone
from tests.scale.test_three_nodes_nginx import SpeakBot, holder, player_hears_tone
from tests.test_end_to_end import TONE_HZ, decode
from townhall.media import adts
from townhall.media.adts import AdtsError
from townhall.media.signals import dominant_frequency, tone, write_wav

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


async def worker_nodes(prefix: str, count: int, timeout_s: float = 20) -> dict[str, Any]:
    """The workers' published addresses, once ``count`` are there: node id ->
    {"url", "pid"}."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            found = {}
            async for key in client.scan_iter(match=f"{prefix}node:*"):
                raw = await client.get(key)
                if raw is not None:
                    found[key.decode()[len(prefix) + 5 :]] = json.loads(raw)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


async def restarted_node(
    prefix: str, node_id: str, old_pid: int, timeout_s: float
) -> dict[str, Any]:
    """The address a restarted worker published (its pid no longer ``old_pid``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = (await worker_nodes(prefix, 2, 1)).get(node_id)
        if found is not None and int(found["pid"]) != int(old_pid):
            return dict(found)
        assert time.monotonic() < deadline, f"{node_id} did not come back"
        await asyncio.sleep(0.3)


async def ended_recording(client: httpx.AsyncClient, space_id: str, timeout_s: float) -> Any:
    """state.json's ``recording`` once the space is ended there."""
    deadline = time.monotonic() + timeout_s
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = (await client.get(f"/spaces/{space_id}/state.json")).json()
        if doc.get("state") == "ended" and "recording" in doc:
            return doc["recording"]
        await asyncio.sleep(0.3)
    raise AssertionError(f"not ended in {timeout_s} s: {doc}")


async def progressive_via(url: str, space_id: str) -> str | None:
    """live.aac on a new connection: it decodes to the tone; the node it was
    passed on to (its Via), None when the worker that answered runs the room."""
    received = bytearray()
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        client.stream("GET", f"/spaces/{space_id}/live.aac") as response,
    ):
        assert response.status_code == 200, await response.aread()
        via = response.headers.get("via")
        async for chunk in response.aiter_bytes():
            received += chunk
            if len(received) > 12 * 1024:  # ~1.5 s at 64 kbit/s
                break
    whole = 0
    with contextlib.suppress(AdtsError):
        while True:
            _, whole = adts.parse(received, whole)
    pcm = decode(bytes(received[:whole]), "aac")
    assert abs(dominant_frequency(pcm[4800:], 48000) - TONE_HZ) < 30
    return via.split(" ", 1)[1] if via else None


async def test_two_workers_share_the_port_and_survive_the_owner(
    cluster: Cluster, redis_prefix: str, tmp_path: Path
) -> None:
    # three processes import the server (about 6 s of CPU in all): at load 15-20
    # on 2 cores that took 30-60 s here
    server = LiveServer(
        cluster.root / "w" / "data", extra_env={**cluster.env, **BUS, "TOWNHALL_HTTP_WORKERS": "2"}
    )
    cluster.nodes.append(server)
    started_at = time.monotonic()
    server.start(timeout_s=120)
    print(f"serve --workers 2 answered /healthz after {time.monotonic() - started_at:.1f} s")
    nodes = await worker_nodes(redis_prefix, 2)
    assert len(nodes) == 2, (nodes, server.log()[-3000:])
    assert all(node_id.endswith(("-w1", "-w2")) for node_id in nodes)
    wav = tmp_path / "tone.wav"
    write_wav(wav, tone(TONE_HZ, 1.0, amplitude=0.3))
    bot: SpeakBot | None = None
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        _, headers = await Api(http).account("host")
        space_id = (await Api(http).space(headers, title="Two workers"))["id"]
        try:
            bot = SpeakBot(server.url, space_id, await speaker_token(http, space_id, headers), wav)
            try:
                await until_tone(http, space_id, 60)  # the bot starts too (aiortc)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; bot:\n{bot.log()}\n{server.log()[-3000:]}") from None
            owner = (await holder(redis_prefix, space_id)).split(":", 1)[1]
            assert owner in nodes
            # each worker serves the room's listeners: the owner and its follower
            for node in nodes.values():
                async with httpx.AsyncClient(base_url=node["url"], timeout=20) as direct:
                    await until_tone(direct, space_id, 15)
            # live.aac through the port: the kernel picks the worker; the
            # follower passes it on to the owner (Via), the owner streams it
            vias: set[str | None] = set()
            for _ in range(16):
                vias.add(await progressive_via(server.url, space_id))
                if len(vias) == 2:
                    break
            # (on a starved machine the lease may move meanwhile: any worker is fine)
            assert None in vias and vias - {None} <= set(nodes), vias
            # kill -9 the owner worker
            lease = await holder(redis_prefix, space_id)
            owner = lease.split(":", 1)[1]
            async with httpx.AsyncClient(base_url=nodes[owner]["url"], timeout=5) as direct:
                edge = await live_edge(direct, space_id)
            killed_at = time.monotonic()
            os.kill(int(nodes[owner]["pid"]), signal.SIGKILL)
            # (connections to the killed worker are cut: a player reconnects)
            async with httpx.AsyncClient(base_url=server.url, timeout=20) as again:
                back_at = await player_hears_tone(again, space_id, 25, after=edge)
            print(
                f"after kill -9 of the owner worker: tone back on the port {back_at - killed_at:.2f} s"
            )
            new_lease = await holder(redis_prefix, space_id)
            assert int(new_lease.split(":")[0]) > int(lease.split(":")[0]), (lease, new_lease)
            assert bot.first("connected to the server again", killed_at) is not None, bot.log()
            assert bot.proc.poll() is None, bot.log()
            # the supervisor restarted the killed worker: a new process under its
            # name (it rejoins once started; at load 15+ that takes a minute)
            deadline = time.monotonic() + 20
            pid = nodes[owner]["pid"]
            pattern = re.compile(rf"HTTP worker {re.escape(owner)} started \(pid (\d+)\)")
            while len(pids := pattern.findall(server.log())) < 2:
                assert time.monotonic() < deadline, server.log()[-3000:]
                await asyncio.sleep(0.3)
            assert f"{owner} (pid {pid}) exited with -9" in server.log()
            assert int(pids[-1]) != pid
            # the talk ends; every worker, the restarted one (which missed what
            # came while it was down) included, serves the whole recording: its
            # own copy, or the most complete one on the machine
            urls = {k: v["url"] for k, v in nodes.items() if k != owner}
            urls[owner] = (await restarted_node(redis_prefix, owner, pid, 60))["url"]
            ended = await http.post(f"/api/spaces/{space_id}/end", headers=headers)
            assert ended.status_code == 200, ended.text
            lengths = {}
            for node_id, url in urls.items():
                async with httpx.AsyncClient(base_url=url, timeout=30) as direct:
                    summary = await ended_recording(direct, space_id, 30)
                    assert summary["missing_s"] <= 4.1, (node_id, summary)
                    # ready at once on every worker: one whose copy is a moment
                    # behind the end waits for it (recording_final_wait_s)
                    audio = await direct.get(f"/spaces/{space_id}/recording.m4a")
                    assert audio.status_code == 200, (node_id, audio.text[:300])
                    pcm = decode(audio.content)
                    lengths[node_id] = len(pcm) / 48000
                    assert abs(dominant_frequency(pcm[-96000:], 48000) - TONE_HZ) < 30, node_id
            print(f"recording length per worker: {lengths}")
            assert max(lengths.values()) - min(lengths.values()) <= 4.1, lengths
        finally:
            if bot is not None:
                bot.stop()
