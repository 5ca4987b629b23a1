"""live.aac on the fast path over real HTTP: ffmpeg decodes the tone fed in; a
reader that never reads is dropped (aborted, counted) while a fast one keeps
every frame; the end of the space ends the chunked stream cleanly."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import pytest

from tests.live.test_program import SPACE, feed, small_settings
from tests.media.hls_validator import decode_pcm
from tests.server.test_fastproto import BASE, Conn, request, serve
from townhall import metrics
from townhall.media.signals import dominant_frequency, read_wav, tone
from townhall.origin.http1 import COUNTS


def counter(metric: object, **labels: str) -> float:
    COUNTS.flush()
    target = metric.labels(**labels) if labels else metric  # type: ignore[attr-defined]
    return float(target._value.get())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
async def test_ffmpeg_decodes_the_tone_from_the_fast_live_aac(tmp_path: Path) -> None:
    origin, servers = await serve(small_settings(tmp_path))
    stop = asyncio.Event()

    async def keep_talking() -> None:
        while not stop.is_set():
            await feed(origin.program, tone(1000, 0.1))
            await asyncio.sleep(0.1)

    feeder = asyncio.create_task(keep_talking())
    out_wav = tmp_path / "heard.wav"
    started = counter(metrics.FASTPATH_RESPONSES, kind="progressive")
    try:
        url = f"http://127.0.0.1:{servers.fast_port}{BASE}/live.aac"
        proc = await asyncio.create_subprocess_exec(
            "ffmpeg", "-v", "error", "-y", "-f", "aac", "-i", url, "-t", "1.5",
            "-ac", "1", "-ar", "48000", str(out_wav),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode()
        assert counter(metrics.FASTPATH_RESPONSES, kind="progressive") == started + 1
        pcm, rate_hz = read_wav(out_wav)
        assert len(pcm) >= int(1.4 * rate_hz)
        assert dominant_frequency(pcm[rate_hz // 10 :], rate_hz) == pytest.approx(1000, abs=15)
    finally:
        stop.set()
        await asyncio.gather(feeder, return_exceptions=True)
        await servers.stop()
        await origin.program.suspend()
        await origin.client.aclose()


async def test_reader_that_never_reads_is_dropped_fast_one_keeps_everything(
    tmp_path: Path,
) -> None:
    origin, servers = await serve(
        small_settings(tmp_path, progressive_max_lag_ms=1000, progressive_burst_ms=0)
    )
    hub = origin.program.progressive
    dropped = counter(metrics.PROGRESSIVE_DROPPED)
    loop = asyncio.get_running_loop()
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    try:
        await loop.sock_connect(slow, ("127.0.0.1", servers.fast_port))
        await loop.sock_sendall(slow, request(f"{BASE}/live.aac"))
        fast = await Conn.open(servers.fast_port)
        fast.send(request(f"{BASE}/live.aac"))
        while hub.statistics().listeners < 2:
            await asyncio.sleep(0.01)
        reading = asyncio.create_task(fast.reply())  # reads the whole chunked body
        fed_s = 0.0
        while fed_s < 30 and hub.statistics().listeners == 2:
            await feed(origin.program, tone(1000, 0.5))
            fed_s += 0.5
            await asyncio.sleep(0.02)
        assert hub.statistics().listeners == 1, "the reader that never reads was not dropped"
        assert counter(metrics.PROGRESSIVE_DROPPED) == dropped + 1
        await feed(origin.program, tone(1000, 1.0))
        fed_s += 1.0
        await origin.program.finish()  # ends the stream: the last chunk
        reply = await asyncio.wait_for(reading, 10)
        assert reply.status == 200
        assert reply.headers[b"transfer-encoding"] == b"chunked"
        assert reply.headers[b"cache-control"] == b"no-store"
        samples, rate_hz = decode_pcm(reply.body, format="aac")
        assert rate_hz == 48000
        assert len(samples) >= (fed_s - 0.1) * rate_hz  # the fast one lost nothing
        assert dominant_frequency(samples[4800:-4800]) == pytest.approx(1000, abs=5)
        # the dropped one was cut off (reset), not left hanging with its buffer
        with pytest.raises(ConnectionError):
            while await asyncio.wait_for(loop.sock_recv(slow, 65536), 5):
                pass
            raise ConnectionResetError("closed")  # EOF is fine too
        await fast.close()
    finally:
        slow.close()
        await servers.stop()
        await origin.program.suspend()
        await origin.client.aclose()


async def test_stream_continues_on_the_same_connection_after_the_end(tmp_path: Path) -> None:
    origin, servers = await serve(small_settings(tmp_path))
    try:
        await feed(origin.program, tone(1000, 1.0))
        conn = await Conn.open(servers.fast_port)
        conn.send(request(f"{BASE}/live.aac"))
        while origin.program.progressive.statistics().listeners < 1:
            await asyncio.sleep(0.01)
        reading = asyncio.create_task(conn.reply())
        await feed(origin.program, tone(1000, 1.0))
        await origin.end()
        reply = await asyncio.wait_for(reading, 10)
        assert reply.status == 200 and len(reply.body) > 4000
        after = await conn.get(f"/spaces/{SPACE}/live.m3u8")  # keep-alive: VOD now
        assert after.status == 200 and b"#EXT-X-ENDLIST" in after.body
        await conn.close()
    finally:
        await servers.stop()
        await origin.program.suspend()
        await origin.client.aclose()
