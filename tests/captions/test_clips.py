"""Clips through the real app: cut from the live window and from the replay,
decoding to the audio that was there; too long, outside the recording, a
flood, a delete by the host and by someone else."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np

from tests.conftest import FAST_ARGON2, Api
from townhall.config import Settings
from townhall.server.app import create_app

RATE = 48_000


def tone(freq_hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (np.sin(2 * np.pi * freq_hz * t) * 8000).astype(np.int16)


def decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
    return np.concatenate(chunks).astype(np.float32)


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / RATE)[int(np.argmax(spectrum))])


async def _feed(room: Any, audio: np.ndarray) -> None:
    room.stage.sink = lambda pcm: None
    for i in range(0, len(audio) - 959, 960):
        room.program.push_frame(audio[i : i + 960])
        if i % (960 * 25) == 0:
            await room.program.drained()
    await room.program.drained()


async def test_clips_live_and_replay(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        part_ms=100,
        segment_parts=10,
        clips_per_listener=4,
        media_process=False,  # the test feeds the in-process room's program itself
        **FAST_ARGON2,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            api = Api(client)
            _, host = await api.account("ada")
            sid = (await api.space(host))["id"]
            room = app.state.services.rooms.get(sid)
            await _feed(room, np.concatenate([tone(440, 6), tone(880, 6), tone(440, 21)]))
            url = f"/api/spaces/{sid}/clips"

            anonymous = await client.post(url, json={"start_s": 1, "duration_s": 2})
            assert anonymous.status_code == 401
            assert "listener token" in anonymous.json()["detail"]
            token = (await client.post(f"/api/spaces/{sid}/join")).json()["token"]
            listener = {"Authorization": f"Bearer {token}"}

            too_long = await client.post(
                url, json={"start_s": 0, "duration_s": 61}, headers=listener
            )
            assert too_long.status_code == 422 and "at most 60 s" in too_long.json()["detail"]
            outside = await client.post(
                url, json={"start_s": 100, "duration_s": 5}, headers=listener
            )
            assert outside.status_code == 422 and "within the" in outside.json()["detail"]

            t0 = time.monotonic()
            made = await client.post(url, json={"start_s": 6.5, "duration_s": 4}, headers=listener)
            took_s = time.monotonic() - t0
            assert made.status_code == 201, made.text
            assert took_s < 2.0
            clip = made.json()
            audio = await client.get(clip["m4a_url"])
            assert audio.status_code == 200 and audio.headers["content-type"] == "audio/mp4"
            samples = decode(audio.content)
            assert 3.8 * RATE <= len(samples) <= 4.2 * RATE
            assert abs(dominant_hz(samples[RATE // 2 : 3 * RATE]) - 880) < 10
            t0 = time.monotonic()
            long = await client.post(url, json={"start_s": 2, "duration_s": 30}, headers=listener)
            took_30_s = time.monotonic() - t0
            assert long.status_code == 201, long.text
            assert took_30_s < 2.0, took_30_s  # the bar: a 30 s clip within 2 s
            print(f"30 s clip cut in {took_30_s:.3f} s")
            assert abs(long.json()["duration_s"] - 30) < 0.1
            page = await client.get(clip["page_url"])
            assert page.status_code == 200 and "clip-audio" in page.text

            # a flood: 4 tries per period (the one outside the recording counted), then 429
            flood = [
                await client.post(url, json={"start_s": 0, "duration_s": 1}, headers=listener)
                for _ in range(3)
            ]
            assert [r.status_code for r in flood] == [201, 429, 429]
            assert "clips per 600 s" in flood[1].json()["detail"]
            assert float(flood[1].headers["retry-after"]) > 0

            _, other = await api.account("bob")
            denied = await client.delete(f"{url}/{clip['id']}", headers=other)
            assert denied.status_code == 403
            gone = await client.delete(f"{url}/{clip['id']}", headers=host)
            assert gone.status_code == 204
            assert (await client.get(clip["m4a_url"])).status_code == 404

            assert (await client.post(f"/api/spaces/{sid}/end", headers=host)).status_code == 200
            replay = await client.post(url, json={"start_s": 0.5, "duration_s": 5})
            assert replay.status_code == 201, replay.text
            replay_samples = decode((await client.get(replay.json()["m4a_url"])).content)
            assert abs(dominant_hz(replay_samples[RATE : 4 * RATE]) - 440) < 10
            # the same audio as the whole recording at that moment
            whole = decode((await client.get(f"/spaces/{sid}/recording.m4a")).content)
            start = int(0.5 * RATE)
            ref = whole[start : start + 2 * RATE]
            best = max(
                float(np.corrcoef(replay_samples[k : k + 2 * RATE], ref)[0, 1])
                for k in range(0, 2048, 64)
            )
            assert best > 0.99


async def test_a_clip_another_worker_made_is_found_in_its_folder(tmp_path: Path) -> None:
    """HTTP workers: the worker that made a clip keeps it in its own folder;
    another worker (whose ``recording_copies`` names that folder, as the
    supervisor sets it) serves it, and the host can delete it from there."""
    from townhall.store import clips as clip_store

    other = tmp_path / "w2" / "recordings"
    settings = Settings(
        data_dir=tmp_path / "w1",
        recording_copies=str(other),
        media_process=False,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            api = Api(client)
            _, host = await api.account("ada")
            sid = (await api.space(host))["id"]
            folder = clip_store.clips_dir(other / sid)
            folder.mkdir(parents=True)
            clip_id = clip_store.new_clip_id()
            clip_store.save_info(folder, clip_store.ClipInfo(clip_id, sid, 1.0, 2.0, time.time()))
            (folder / f"{clip_id}.m4a").write_bytes(b"made by the other worker")
            url = f"/api/spaces/{sid}/clips/{clip_id}"
            found = await client.get(url)
            assert found.status_code == 200, found.text
            assert found.json()["duration_s"] == 2.0
            audio = await client.get(f"/spaces/{sid}/clips/{clip_id}.m4a")
            assert audio.status_code == 200 and audio.content == b"made by the other worker"
            assert (await client.delete(url, headers=host)).status_code == 204
            assert not (folder / f"{clip_id}.json").exists()
            assert (await client.get(url)).status_code == 404
