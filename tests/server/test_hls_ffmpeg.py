"""Real players over real HTTP: ffprobe and ffmpeg read the live LL-HLS
playlist while the program runs, and the VOD playlist after the end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import uvicorn

from tests.conftest import free_port
from tests.live.test_program import SPACE, feed, small_settings
from tests.server.test_hls import Origin
from townhall.media.signals import dominant_frequency, read_wav, tone

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg and ffprobe"),
]


async def run(*args: str, timeout_s: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def served_origin(
    tmp_path: Path, chunk_s: float
) -> AsyncIterator[tuple[Origin, int, Callable[[], Awaitable[None]]]]:
    """An Origin behind a real uvicorn server, fed the 1 kHz tone at about twice
    real time (``chunk_s`` every 0.1 s, so live readers always find new parts)
    until the block ends or the yielded ``stop_talking`` is awaited."""
    origin = Origin(small_settings(tmp_path))
    await origin.start()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(origin.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    serving = asyncio.create_task(server.serve())
    stop_feeding = asyncio.Event()

    async def keep_talking() -> None:
        chunk = tone(1000, chunk_s)
        while not stop_feeding.is_set():
            await feed(origin.program, chunk)
            await asyncio.sleep(0.1)

    feeder = asyncio.create_task(keep_talking())

    async def stop_talking() -> None:
        stop_feeding.set()
        await asyncio.gather(feeder, return_exceptions=True)

    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield origin, port, stop_talking
    finally:
        await stop_talking()
        server.should_exit = True
        await serving
        await origin.program.suspend()
        await origin.client.aclose()


async def test_ffmpeg_reads_live_and_vod_playlists(tmp_path: Path) -> None:
    async with served_origin(tmp_path, 0.2) as (origin, port, stop_talking):
        await feed(origin.program, tone(1000, 3.0))
        url = f"http://127.0.0.1:{port}/spaces/{SPACE}/live.m3u8"
        code, out, err = await run(
            "ffprobe", "-v", "error", "-show_entries", "stream=codec_name,sample_rate,channels",
            "-of", "json", url,
        )  # fmt: skip
        assert code == 0, err
        stream = json.loads(out)["streams"][0]
        assert (stream["codec_name"], stream["sample_rate"], stream["channels"]) == (
            "aac",
            "48000",
            1,
        )
        code, _, err = await run("ffmpeg", "-v", "error", "-i", url, "-t", "2", "-f", "null", "-")
        assert code == 0 and err.strip() == "", err
        await stop_talking()
        await origin.end()
        code, out, err = await run(
            "ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", url
        )
        assert code == 0, err
        duration_s = float(json.loads(out)["format"]["duration"])
        manifest = origin.program.recording.load()
        assert manifest is not None and manifest.ended
        recorded_s = sum(s.duration_samples for s in manifest.segments) / 48000
        assert duration_s == pytest.approx(recorded_s, abs=0.1)
        code, _, err = await run("ffmpeg", "-v", "error", "-i", url, "-f", "null", "-")
        assert code == 0 and err.strip() == "", err


async def test_progressive_stream_over_real_http_decodes_to_the_tone(tmp_path: Path) -> None:
    """live.aac through uvicorn (not only ASGI): ffmpeg reads ADTS from the
    chunked response and the decoded audio is the 1 kHz tone."""
    out_wav = tmp_path / "heard.wav"
    async with served_origin(tmp_path, 0.1) as (_, port, _stop):
        url = f"http://127.0.0.1:{port}/spaces/{SPACE}/live.aac"
        code, _, err = await run(
            "ffmpeg", "-v", "error", "-y", "-f", "aac", "-i", url, "-t", "1.5",
            "-ac", "1", "-ar", "48000", str(out_wav),
        )  # fmt: skip
        assert code == 0, err
    pcm, rate_hz = read_wav(out_wav)
    assert len(pcm) >= int(1.4 * rate_hz)
    assert dominant_frequency(pcm[rate_hz // 10 :], rate_hz) == pytest.approx(1000, abs=15)
