"""Real `townhall serve` nodes with the segment bus and room leases, on one
PostgreSQL and one Redis: a node that does not run a room answers its
listeners with the owner's bytes (the tone decodes); kill -9 of the owner:
another node takes the room over within 5 s, in a new discontinuity, and
the recording goes on from the copy it kept while following."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from typing import Any

import httpx
import pytest

from tests.conftest import Api
from tests.scale.conftest import Cluster
from tests.test_end_to_end import TONE_HZ, decode
from townhall.client.speak import publish
from townhall.media.signals import dominant_frequency, tone

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

BUS = {
    "TOWNHALL_BUS_ENABLED": "true",
    "TOWNHALL_ROOM_LEASE_TTL_MS": "2000",
    "TOWNHALL_ROOM_LEASE_RENEW_MS": "400",
    "TOWNHALL_BUS_BLOCK_MS": "500",
}
PART_URI = re.compile(r'#EXT-X-PART:[^\n]*URI="([^"]+)"')


async def playlist(client: httpx.AsyncClient, space_id: str) -> str:
    response = await client.get(f"/spaces/{space_id}/live.m3u8")
    assert response.status_code == 200, response.text
    return response.text


async def wait_for_parts(client: httpx.AsyncClient, space_id: str, timeout_s: float) -> str:
    """The live playlist once it names parts (a follower's window is running)."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        response = await client.get(f"/spaces/{space_id}/live.m3u8")
        text = response.text
        if response.status_code == 200 and PART_URI.search(text):
            return text
        await asyncio.sleep(0.2)
    raise AssertionError(f"no parts in {timeout_s}s: {text[-500:]}")


def position(uri: str) -> tuple[int, int]:
    msn, index = re.findall(r"part/(\d+)\.(\d+)\.m4s", uri)[-1]
    return int(msn), int(index)


async def tone_in_parts(
    client: httpx.AsyncClient,
    space_id: str,
    count: int = 2,
    after: tuple[int, int] = (-1, -1),
) -> float:
    """The dominant frequency of the newest ``count`` parts (all past ``after``)."""
    text = await playlist(client, space_id)
    maps = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', text)
    base = f"/spaces/{space_id}/"
    uris = [u for u in PART_URI.findall(text) if position(u) > after]
    assert len(uris) >= count, text
    init = (await client.get(base + maps[-1])).content
    bodies = [(await client.get(base + uri)).content for uri in uris[-count:]]
    samples = decode(init + b"".join(bodies))
    return dominant_frequency(samples[-24000:], 48000) if samples.size else 0.0


async def live_edge(client: httpx.AsyncClient, space_id: str) -> tuple[int, int]:
    return position(PART_URI.findall(await playlist(client, space_id))[-1])


class Speaker:
    def __init__(self, url: str, space_id: str, token: str) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(
            publish(
                url, space_id, token, tone(TONE_HZ, 1.0, amplitude=0.3), loop=True, stop=self.stop
            )
        )

    async def close(self) -> None:
        self.stop.set()
        await asyncio.gather(self.task, return_exceptions=True)


async def speaker_token(client: httpx.AsyncClient, space_id: str, headers: dict[str, str]) -> str:
    response = await client.post(f"/api/spaces/{space_id}/speaker-token", headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


async def until_tone(
    client: httpx.AsyncClient,
    space_id: str,
    timeout_s: float,
    after: tuple[int, int] = (-1, -1),
) -> float:
    """When the tone is heard in parts past ``after`` (monotonic time)."""
    deadline = time.monotonic() + timeout_s
    hz = 0.0
    while time.monotonic() < deadline:
        try:
            hz = await tone_in_parts(client, space_id, after=after)
        except (AssertionError, httpx.HTTPError, IndexError, ValueError):
            hz = 0.0
        if abs(hz - TONE_HZ) < 30:
            return time.monotonic()
        await asyncio.sleep(0.2)
    raise AssertionError(f"no tone in {timeout_s}s (last {hz:.0f} Hz)")


async def test_follower_serves_the_owners_bytes_and_takes_over(cluster: Cluster) -> None:
    node_a, node_b = cluster.nodes_at_once(("a", "b"), **BUS)
    speaker: Speaker | None = None
    async with (
        httpx.AsyncClient(base_url=node_a.url, timeout=20) as a,
        httpx.AsyncClient(base_url=node_b.url, timeout=20) as b,
    ):
        _, headers = await Api(a).account("host")
        space_id = (await Api(a).space(headers, title="Bus"))["id"]
        try:
            speaker = Speaker(node_a.url, space_id, await speaker_token(a, space_id, headers))
            await until_tone(a, space_id, 30)
            # B does not run the room: it follows the bus and serves the same bytes
            await wait_for_parts(b, space_id, 15)
            await until_tone(b, space_id, 15)
            text_b = await playlist(b, space_id)
            uri = PART_URI.findall(text_b)[-2]
            part_a = await a.get(f"/spaces/{space_id}/{uri}")
            part_b = await b.get(f"/spaces/{space_id}/{uri}")
            assert part_a.status_code == part_b.status_code == 200
            assert part_a.content == part_b.content
            assert part_a.headers["cache-control"] == part_b.headers["cache-control"]
            # a blocking reload on the follower is answered when the part arrives
            msn, _index = position(uri)
            blocked = await b.get(
                f"/spaces/{space_id}/live.m3u8", params={"_HLS_msn": msn + 1, "_HLS_part": 0}
            )
            assert blocked.status_code == 200 and f"part/{msn + 1}.0.m4s" in blocked.text
            # live.aac is the owner's: a follower passes it on to the owner
            # (server/forward.py), which streams it; Via names the owner's node
            async with b.stream("GET", f"/spaces/{space_id}/live.aac") as aac:
                assert aac.status_code == 200, await aac.aread()
                assert aac.headers["via"].startswith("1.1 "), aac.headers
                assert await anext(aac.aiter_bytes())
            # with passing on turned off (or no owner known) it says so at once
            # (nginx's owner-only upstream tries the next): tests/scale/test_forward_owner.py

            # kill -9 the owner: B takes the room over within 5 s
            killed_at = time.monotonic()
            node_a.stop(signal.SIGKILL)
            await speaker.close()
            speaker = None
            deadline = killed_at + 5.0
            while time.monotonic() < deadline:
                text = (await b.get(f"/spaces/{space_id}/live.m3u8")).text
                if "#EXT-X-DISCONTINUITY" in text and PART_URI.findall(text)[-1:] != [uri]:
                    break
                await asyncio.sleep(0.1)
            took_s = time.monotonic() - killed_at
            assert "#EXT-X-DISCONTINUITY" in text, f"no takeover in 5 s:\n{node_b.log()[-3000:]}"
            print(f"takeover after {took_s:.2f} s")
            # the speaker reconnects (here: by hand, to B) and is heard
            edge = await live_edge(b, space_id)
            speaker = Speaker(node_b.url, space_id, await speaker_token(b, space_id, headers))
            await until_tone(b, space_id, 20, after=edge)
            await speaker.close()
            speaker = None
            # the host ends the space; B's recording has the talk minus at most one segment
            response = await b.post(f"/api/spaces/{space_id}/end", headers=headers)
            assert response.status_code == 200, response.text
            recording = await b.get(f"/spaces/{space_id}/recording.m4a")
            assert recording.status_code == 200, recording.text
            samples = decode(recording.content)
            tone_s = sum(
                1
                for i in range(0, samples.size - 48000, 48000)
                if abs(dominant_frequency(samples[i : i + 48000], 48000) - TONE_HZ) < 30
            )
            assert tone_s >= 2, tone_s
            # B's copy of what A recorded: the same segments, byte for byte, but
            # at most the one A was building when it died
            rec_a = cluster.root / "a" / "data" / "recordings" / space_id
            rec_b = cluster.root / "b" / "data" / "recordings" / space_id
            seg_a = json.loads((rec_a / "manifest.json").read_bytes())["segments"]
            seg_b = json.loads((rec_b / "manifest.json").read_bytes())["segments"]
            by_msn = {s["msn"]: s for s in seg_b}
            missing = [s["msn"] for s in seg_a if by_msn.get(s["msn"]) != s]
            assert len(missing) <= 1, (missing, seg_a, seg_b)
            for s in seg_a:
                if s["msn"] not in missing:
                    name = f"seg-{s['msn']:08d}.m4s"
                    assert (rec_a / name).read_bytes() == (rec_b / name).read_bytes()
            assert [s["msn"] for s in seg_b] == list(range(len(seg_b)))
            assert (
                seg_b[-1]["epoch"] == 1
                and json.loads((rec_b / "manifest.json").read_bytes())["ended"]
            )
        finally:
            if speaker is not None:
                await speaker.close()


async def test_a_paused_owner_is_fenced_and_follows(cluster: Cluster) -> None:
    """Two nodes that both believe they own the room: the owner is paused
    (SIGSTOP) past its lease, the other takes the room; when the first wakes
    up its bus writes are refused, it stops its room and follows."""
    node_a, node_b = cluster.nodes_at_once(("a", "b"), **BUS)
    async with (
        httpx.AsyncClient(base_url=node_a.url, timeout=20) as a,
        httpx.AsyncClient(base_url=node_b.url, timeout=20) as b,
    ):
        _, headers = await Api(a).account("host")
        space_id = (await Api(a).space(headers, title="Fenced"))["id"]
        await wait_for_parts(b, space_id, 20)
        deadline = time.monotonic() + 15  # a whole segment first: B resumes after it
        while "#EXTINF" not in await playlist(b, space_id):
            assert time.monotonic() < deadline, "no segment finished"
            await asyncio.sleep(0.2)
        assert node_a.proc is not None
        node_a.proc.send_signal(signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 10
            text = ""
            while time.monotonic() < deadline and "#EXT-X-DISCONTINUITY" not in text:
                text = (await b.get(f"/spaces/{space_id}/live.m3u8")).text
                await asyncio.sleep(0.2)
            assert "#EXT-X-DISCONTINUITY" in text, "B did not take the room over"
        finally:
            node_a.proc.send_signal(signal.SIGCONT)
        # A wakes up believing it owns the room: it must stop and follow B
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            metrics = (await a.get("/metrics")).text
            if re.search(r"^townhall_followed_rooms 1\.0$", metrics, re.M) and re.search(
                r"^townhall_spaces_live 0\.0$", metrics, re.M
            ):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"A did not give the room up:\n{node_a.log()[-3000:]}")
        # both answer with B's program, the same part bytes
        uri = PART_URI.findall(await playlist(b, space_id))[-1]
        await asyncio.sleep(0.5)
        part_a, part_b = (
            (await a.get(f"/spaces/{space_id}/{uri}")),
            (await b.get(f"/spaces/{space_id}/{uri}")),
        )
        assert part_a.status_code == 200 and part_a.content == part_b.content


async def test_a_node_joining_mid_room_answers_at_once_with_the_owners_bytes(
    cluster: Cluster,
) -> None:
    """A node started while a room runs on another: before it serves, it
    follows the room and replays what the bus holds (init and the live
    window's segments), so its very first playlist lists the owner's
    segments and every segment, part and init it names has the owner's bytes.
    Its /healthz lists the room it follows; with the owner paused (SIGSTOP,
    shorter than the lease) it says the copy is behind, and in step again
    afterwards."""
    slow = {**BUS, "TOWNHALL_ROOM_LEASE_TTL_MS": "8000"}  # no takeover while paused
    node_a = cluster.node("a", **slow)
    speaker: Speaker | None = None
    async with httpx.AsyncClient(base_url=node_a.url, timeout=20) as a:
        _, headers = await Api(a).account("host")
        space_id = (await Api(a).space(headers, title="Join mid-room"))["id"]
        try:
            speaker = Speaker(node_a.url, space_id, await speaker_token(a, space_id, headers))
            await until_tone(a, space_id, 30)
            deadline = time.monotonic() + 20  # two whole segments before B exists
            while (await playlist(a, space_id)).count("#EXTINF") < 2:
                assert time.monotonic() < deadline, "no segments on the owner"
                await asyncio.sleep(0.3)
            node_b = cluster.node("b", **slow, TOWNHALL_FOLLOWER_BEHIND_MS="1500")
            async with httpx.AsyncClient(base_url=node_b.url, timeout=20) as b:
                first = await b.get(f"/spaces/{space_id}/live.m3u8")  # B's first answer
                assert first.status_code == 200, first.text
                text_b = first.text
                segs_b = re.findall(r"^seg/(\d+)\.m4s$", text_b, re.M)
                assert len(segs_b) >= 2, text_b
                text_a = await playlist(a, space_id)
                segs_a = re.findall(r"^seg/(\d+)\.m4s$", text_a, re.M)
                assert segs_b == segs_a[: len(segs_b)], (text_a, text_b)
                uris = re.findall(r'URI="([^"]+)"', text_b)
                uris += [f"seg/{msn}.m4s" for msn in segs_b]
                for uri in uris:
                    if "PRELOAD-HINT" in uri:
                        continue
                    mine = await b.get(f"/spaces/{space_id}/{uri}")
                    theirs = await a.get(f"/spaces/{space_id}/{uri}")
                    assert mine.status_code == theirs.status_code == 200, (uri, mine.text)
                    assert mine.content == theirs.content, uri
                await until_tone(b, space_id, 10)

                async def followed() -> tuple[dict[str, Any], dict[str, Any]]:
                    health = (await b.get("/healthz")).json()
                    rooms = [r for r in health["followed"] if r["space_id"] == space_id]
                    assert len(rooms) == 1, health
                    return health, rooms[0]

                health, room = await followed()
                assert room["synced"] is True and room["behind"] is False, health
                assert isinstance(room["lag_ms"], int) and room["lag_ms"] < 1500, health
                assert room["resyncs"] == 0 and health["status"] == "ok", health
                assert node_a.proc is not None
                node_a.proc.send_signal(signal.SIGSTOP)
                try:
                    deadline = time.monotonic() + 5
                    while not (await followed())[1]["behind"]:
                        assert time.monotonic() < deadline, await followed()
                        await asyncio.sleep(0.2)
                    health, room = await followed()
                    assert health["status"] == "degraded", health
                    assert any("behind its owner" in p["problem"] for p in health["problems"])
                    metrics_b = (await b.get("/metrics")).text
                    assert re.search(r"^townhall_followed_rooms_behind 1\.0$", metrics_b, re.M)
                finally:
                    node_a.proc.send_signal(signal.SIGCONT)
                deadline = time.monotonic() + 10
                while (await followed())[1]["behind"]:
                    assert time.monotonic() < deadline, await followed()
                    await asyncio.sleep(0.2)
        finally:
            if speaker is not None:
                await speaker.close()
