"""docs/DEPLOYMENT.md's scaled-out deployment, run for real: three `townhall
serve` nodes with the segment bus and room leases on the machine's
PostgreSQL and Redis (a prefix of their own), one nginx in front
(deploy/nginx-nodes.conf). A speaker publishes a tone through nginx (which
finds the node that runs the room); a listener reading through nginx hears
it whichever node answers; kill -9 of the room's node: the room is taken
over, the speaker bot (`townhall speak --reconnect-for-s`) finds the new
owner through nginx by itself, and the tone is back for listeners through
nginx within 5 s; the new owner's recording misses at most the segment the
dead node was building. Prints where the time went."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, LiveServer, free_port
from tests.scale.conftest import REDIS_URL, Cluster
from tests.scale.test_bus_nodes import (
    BUS,
    PART_URI,
    live_edge,
    playlist,
    position,
    speaker_token,
    until_tone,
)
from tests.test_end_to_end import TONE_HZ, decode
from townhall.media import adts
from townhall.media.adts import AdtsError
from townhall.media.signals import dominant_frequency, tone, write_wav

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
    nodes = cluster.nodes_at_once(("a", "b", "c"), **BUS)
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


class SpeakBot:
    """`townhall speak --loop --reconnect-for-s` through nginx, as a process of
    its own (the bot finds the room's node by itself, also after a takeover);
    its log lines are kept with the monotonic time they arrived."""

    def __init__(self, url: str, space_id: str, token: str, wav: Path, *flags: str) -> None:
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "townhall",
                "speak",
                str(wav),
                "--server",
                url,
                "--space",
                space_id,
                "--token",
                token,
                "--loop",
                "--reconnect-for-s",
                "20",
                *flags,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    def first(self, text: str, after: float) -> float | None:
        return next((t for t, line in self.lines if t >= after and text in line), None)

    def log(self) -> str:
        return "\n".join(line for _, line in self.lines[-30:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


async def newest_tone(
    client: httpx.AsyncClient, space_id: str, text: str, after: tuple[int, int]
) -> float:
    """The dominant frequency of the newest two parts of ``text`` past ``after``."""
    base = f"/spaces/{space_id}/"
    uris = [u for u in PART_URI.findall(text) if position(u) > after]
    maps = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', text)
    if len(uris) < 2 or not maps:
        return 0.0
    init = (await client.get(base + maps[-1])).content
    bodies = [(await client.get(base + uri)).content for uri in uris[-2:]]
    samples = decode(init + b"".join(bodies))
    return dominant_frequency(samples[-24000:], 48000) if samples.size else 0.0


def next_part(text: str) -> tuple[int, int]:
    """The part a player asks for next: after the newest part, or the first
    of the next segment once the newest segment is complete."""
    msn, index = position(PART_URI.findall(text)[-1])
    complete = [int(m) for m in re.findall(r"^seg/(\d+)\.m4s$", text, re.M)]
    if complete and max(complete) >= msn:
        return max(complete) + 1, 0
    return msn, index + 1


async def player_hears_tone(
    client: httpx.AsyncClient, space_id: str, timeout_s: float, after: tuple[int, int]
) -> float:
    """When a low-latency HLS player reading through nginx hears the tone in
    parts past ``after`` (monotonic time). Like hls.js, it asks for the part
    after the newest it knows with a blocking playlist reload (a URL of its
    own, so no cached playlist delays it) and plays the newest parts."""
    deadline = time.monotonic() + timeout_s
    text = ""
    hz = 0.0
    while time.monotonic() < deadline:
        if not text:
            # right after a kill -9 the kernel may still put a new connection
            # in the dying process's accept queue and reset it: a player
            # asks again, within the same deadline
            try:
                text = await playlist(client, space_id)
            except (httpx.HTTPError, AssertionError):
                await asyncio.sleep(0.1)
                continue
        with contextlib.suppress(httpx.HTTPError, ValueError, IndexError):
            hz = await newest_tone(client, space_id, text, after)
            if abs(hz - TONE_HZ) < 30:
                return time.monotonic()
        try:
            msn, index = next_part(text)
            r = await client.get(
                f"/spaces/{space_id}/live.m3u8",
                params={"_HLS_msn": msn, "_HLS_part": index},
                timeout=10,
            )
            text = r.text if r.status_code == 200 else await playlist(client, space_id)
        except (httpx.HTTPError, IndexError, AssertionError):
            await asyncio.sleep(0.1)
            with contextlib.suppress(httpx.HTTPError, AssertionError):
                text = await playlist(client, space_id)
    raise AssertionError(f"no tone in {timeout_s}s (last {hz:.0f} Hz)")


async def progressive_tone(client: httpx.AsyncClient, space_id: str) -> None:
    """live.aac answers 200 with ADTS audio that decodes to the tone."""
    received = bytearray()
    async with client.stream("GET", f"/spaces/{space_id}/live.aac", timeout=10) as response:
        assert response.status_code == 200, await response.aread()
        async for chunk in response.aiter_bytes():
            received += chunk
            if len(received) > 8 * 1024 * 1.5:  # ~1.5 s at 64 kbit/s
                break
    whole = 0  # the stream was cut mid-frame: keep the whole ADTS frames
    with contextlib.suppress(AdtsError):
        while True:
            _, whole = adts.parse(received, whole)
    assert whole > 0, bytes(received[:64])
    pcm = decode(bytes(received[:whole]), "aac")
    assert len(pcm) / 48000 > 1.0
    assert abs(dominant_frequency(pcm[4800:], 48000) - TONE_HZ) < 30


async def lease_changes(prefix: str, space_id: str, old: str, poll_s: float = 0.05) -> float:
    """When the room's lease is held by a new token (monotonic time)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        while True:
            value = await client.get(f"{prefix}lease:{space_id}")
            if value is not None and value.decode() != old:
                return time.monotonic()
            await asyncio.sleep(poll_s)
    finally:
        await client.aclose()


async def epoch_visible(client: httpx.AsyncClient, space_id: str, count: int) -> float:
    """When the playlist through nginx shows ``count`` discontinuities."""
    while True:
        with contextlib.suppress(httpx.HTTPError):
            r = await client.get(f"/spaces/{space_id}/live.m3u8")
            if r.text.count("#EXT-X-DISCONTINUITY\n") >= count:
                return time.monotonic()
        await asyncio.sleep(0.05)


def manifest_segments(node: LiveServer, space_id: str) -> list[dict[str, object]]:
    path = node.data_dir / "recordings" / space_id / "manifest.json"
    segments: list[dict[str, object]] = json.loads(path.read_bytes())["segments"]
    return segments


async def test_three_nodes_behind_nginx_survive_the_owner(
    three_nodes: tuple[list[LiveServer], str], redis_prefix: str, tmp_path: Path
) -> None:
    nodes, url = three_nodes
    wav = tmp_path / "tone.wav"
    write_wav(wav, tone(TONE_HZ, 1.0, amplitude=0.3))
    bot: SpeakBot | None = None
    async with httpx.AsyncClient(base_url=url, timeout=20) as http:
        _, headers = await Api(http).account("host")
        space_id = (await Api(http).space(headers, title="Three nodes"))["id"]
        try:
            token = await speaker_token(http, space_id, headers)
            bot = SpeakBot(url, space_id, token, wav)
            try:
                await until_tone(http, space_id, 30)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the bot said:\n{bot.log()}") from None
            # every node answers with the tone (the owner and two followers)
            for node in nodes:
                async with httpx.AsyncClient(base_url=node.url, timeout=20) as direct:
                    await until_tone(direct, space_id, 15)
            # live.aac (progressive) through nginx: the followers answer 503 at
            # once and nginx passes it on until the owner streams it (3 times:
            # nginx starts each at another node)
            for _ in range(3):
                await progressive_tone(http, space_id)
            port = await owner_port(redis_prefix, space_id)
            owner = next(n for n in nodes if n.port == port)
            lease = await holder(redis_prefix, space_id)
            async with httpx.AsyncClient(base_url=owner.url, timeout=5) as direct:
                edge = await live_edge(direct, space_id)  # no part past this is heard yet
                seen = (await playlist(direct, space_id)).count("#EXT-X-DISCONTINUITY\n")
            # kill -9 the room's node; the bot reconnects by itself through nginx
            killed_at = time.monotonic()
            owner.stop(signal.SIGKILL)
            taken = asyncio.create_task(lease_changes(redis_prefix, space_id, lease))
            epoch = asyncio.create_task(epoch_visible(http, space_id, seen + 1))
            try:
                back_at = await player_hears_tone(http, space_id, 20, after=edge)
                taken_at = await asyncio.wait_for(taken, 1)
                epoch_at = await asyncio.wait_for(epoch, 1)
            finally:
                taken.cancel()
                epoch.cancel()
            lost_at = bot.first("lost the server", killed_at)
            joined_at = bot.first("connected to the server again", killed_at)
            print(
                f"after kill -9: lease taken {taken_at - killed_at:.2f} s, bot saw the loss "
                f"{(lost_at or back_at) - killed_at:.2f} s, new epoch through nginx "
                f"{epoch_at - killed_at:.2f} s, tone back for a player through nginx "
                f"{back_at - killed_at:.2f} s"
            )
            for at, line in bot.lines:
                if at >= killed_at:
                    print(f"  bot +{at - killed_at:.2f} s: {line}")
            assert lost_at is not None and joined_at is not None, bot.log()
            assert bot.proc.poll() is None, f"the bot gave up:\n{bot.log()}"
            new_port = await owner_port(redis_prefix, space_id)
            assert new_port != port and new_port in {n.port for n in nodes}
            assert back_at - killed_at <= 5.0, bot.log()
            # every part and segment the new owner lists has, through nginx
            # (which cached what the dead node served), the new owner's bytes:
            # the new epoch does not reuse a URI the dead node published
            new_owner = next(n for n in nodes if n.port == new_port)
            async with httpx.AsyncClient(base_url=new_owner.url, timeout=5) as direct:
                text = await playlist(direct, space_id)
                uris = re.findall(r'URI="([^"]+)"', text) + re.findall(r"^(seg/\S+)$", text, re.M)
                for uri in uris:
                    mine = await direct.get(f"/spaces/{space_id}/{uri}")
                    theirs = await http.get(f"/spaces/{space_id}/{uri}")
                    if mine.status_code == 200:
                        assert theirs.content == mine.content, uri
            # the end: the new owner's recording misses at most the segment
            # the old owner was building (4 s)
            bot.stop()
            response = await http.post(f"/api/spaces/{space_id}/end", headers=headers)
            assert response.status_code == 200, response.text
            deadline = time.monotonic() + 15  # the owner sees the end at its next round
            while (
                recording := await http.get(f"/spaces/{space_id}/recording.m4a")
            ).status_code != 200:
                assert time.monotonic() < deadline, recording.text
                await asyncio.sleep(0.3)
            samples = decode(recording.content)
            tone_s = sum(
                1
                for i in range(0, samples.size - 48000, 48000)
                if abs(dominant_frequency(samples[i : i + 48000], 48000) - TONE_HZ) < 30
            )
            assert tone_s >= 3, tone_s
            # the new owner's recording misses at most the segment the dead node
            # was building: every segment the dead node finished is in it
            old = manifest_segments(owner, space_id)
            by_msn = {s["msn"]: s for s in manifest_segments(new_owner, space_id)}
            missing = [s["msn"] for s in old if by_msn.get(s["msn"]) != s]
            assert len(missing) <= 1, (missing, old, list(by_msn.values()))
        finally:
            if bot is not None:
                bot.stop()


async def holder(prefix: str, space_id: str) -> str:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        value = await client.get(f"{prefix}lease:{space_id}")
        assert value is not None
        return str(value.decode())
    finally:
        await client.aclose()
