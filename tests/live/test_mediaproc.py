"""The media process (``media_process``): rooms run in a process of their
own, the HTTP process serves listeners from its copy of the window, WebRTC
offers are proxied, and a blocked HTTP event loop no longer stalls the clock.

Everything here is real: a spawned media process, aiortc speakers, PyAV
decoding of the LL-HLS parts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import FAST_ARGON2, LiveServer
from tests.media.hls_validator import decode_pcm, validate
from townhall.bench.clock import clock_figures
from townhall.client.peer import PcmTrack, SpeakerClient
from townhall.client.speak import http_offer
from townhall.config import Settings
from townhall.live.mediaproc import merge_metrics, metric_families
from townhall.live.mediarooms import MediaRooms
from townhall.live.registry import RoomRegistry
from townhall.media.signals import dominant_frequency, tone
from townhall.origin.bus import Entry, Message
from townhall.origin.follower import FollowerState

SPACE = "mediaproc00001"


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", **FAST_ARGON2, **overrides)  # type: ignore[arg-type]


def _skipped(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("townhall_mixer_skipped_frames_total")
    )


async def test_a_blocked_http_loop_does_not_stall_the_media_process_clock(tmp_path: Path) -> None:
    # side by side: the same 1.5 s block of this (the HTTP) event loop, with the
    # room in this process (the clock skips) and in the media process (it does not)
    local = RoomRegistry(_settings(tmp_path / "a"))
    from prometheus_client import REGISTRY, generate_latest

    room = await local.start_local(SPACE)
    await asyncio.sleep(0.2)
    before = generate_latest(REGISTRY).decode()
    time.sleep(1.5)  # the HTTP loop is busy: no tick can run here
    await asyncio.sleep(0.2)
    after = generate_latest(REGISTRY).decode()
    assert room.stage.ticks > 0
    await local.close()
    assert _skipped(after) - _skipped(before) >= 10  # in-process: the stall reaches the clock

    rooms = MediaRooms(_settings(tmp_path / "b", media_process=True))
    await rooms.open()
    try:
        await rooms.start(SPACE)
        await asyncio.sleep(0.5)
        ticks0 = (await rooms.statistics(SPACE))["ticks"]
        before = await rooms.media_metrics()
        time.sleep(1.5)
        await asyncio.sleep(0.2)
        after = await rooms.media_metrics()
        ticks1 = (await rooms.statistics(SPACE))["ticks"]
        figures = clock_figures(before, after)
        assert figures.skipped_frames == 0, figures
        assert ticks1 - ticks0 >= 70  # the clock went on ticking the whole time
        assert figures.ticks >= 70  # and its lateness histogram counted those ticks
    finally:
        await rooms.close()


async def test_the_media_process_ending_is_said_and_calls_answer_503(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, media_process=True, part_ms=100, segment_parts=2, media_process_restarts=0
    )
    rooms = MediaRooms(settings)
    await rooms.open()
    try:
        await rooms.start(SPACE)
        assert rooms._proc is not None
        rooms._proc.kill()
        async with asyncio.timeout(10):
            while not rooms.problems():
                await asyncio.sleep(0.05)
        assert "media process stopped" in rooms.problems()[0]["problem"]
        from townhall.errors import ServiceUnavailable

        with pytest.raises(ServiceUnavailable, match="not running"):
            await rooms.call("statistics", SPACE)
        await rooms.start(SPACE)  # a new media process, the room again
        assert (await rooms.statistics(SPACE))["ticks"] >= 0
        await asyncio.sleep(1.5)  # a few segments recorded
        rooms._proc.kill()  # gone again: ending the talk still makes the recording final
        async with asyncio.timeout(10):
            while not rooms.problems():
                await asyncio.sleep(0.05)
        await rooms.end(SPACE)
        from townhall.store.recordings import RecordingStore

        manifest = RecordingStore(settings.recordings_dir, SPACE).load()
        assert manifest is not None and manifest.ended
    finally:
        await rooms.close()


async def test_a_media_process_that_ended_is_restarted_and_its_rooms_resume(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, part_ms=100, segment_parts=2)
    rooms = MediaRooms(settings)
    await rooms.open()
    try:
        room = await rooms.start(SPACE)
        async with asyncio.timeout(10):
            while room.program.window is None or room.program.window.init_segment is None:
                await asyncio.sleep(0.05)
        first = room.program.window
        assert rooms._proc is not None
        pid = rooms._proc.pid
        rooms._proc.kill()
        async with asyncio.timeout(10):
            while not rooms.problems():
                await asyncio.sleep(0.02)
        assert "while it restarts" in rooms.problems()[0]["problem"]
        async with asyncio.timeout(20):  # a new media process, the room in a new epoch
            while rooms.problems() or (again := rooms.get(SPACE)) is room:
                await asyncio.sleep(0.05)
            assert again is not None
            while (window := again.program.window) is None:
                await asyncio.sleep(0.05)
            while window.position < (window.open_msn, 0):  # its first part reached the copy
                await asyncio.sleep(0.05)
        assert rooms._proc.pid != pid
        assert first is not None and first.closed and not first.ended
        assert window.epoch == first.epoch + 1
        assert (await rooms.statistics(SPACE))["ticks"] > 0
    finally:
        await rooms.close()


def test_media_metric_families_replace_the_http_process_ones() -> None:
    own = (
        "# HELP a_total A.\n# TYPE a_total counter\na_total 1.0\n"
        "# HELP townhall_mixer_skipped_frames_total S.\n# TYPE townhall_mixer_skipped_frames_total counter\n"
        "townhall_mixer_skipped_frames_total 0.0\n"
    )
    media_all = (
        "# HELP townhall_mixer_skipped_frames_total S.\n# TYPE townhall_mixer_skipped_frames_total counter\n"
        "townhall_mixer_skipped_frames_total 7.0\n# HELP b B.\n# TYPE b gauge\nb 2.0\n"
    )
    media = metric_families(media_all, {"townhall_mixer_skipped_frames"})
    assert "b 2.0" not in media
    merged = merge_metrics(own, media)
    assert "a_total 1.0" in merged
    assert "townhall_mixer_skipped_frames_total 7.0" in merged
    assert "townhall_mixer_skipped_frames_total 0.0" not in merged


async def test_serve_with_a_media_process_carries_a_speakers_tone_to_llhls(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", args=["--media-process"]).start()
    speaker: SpeakerClient | None = None
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            creds = {"username": "mediahost", "password": "correct horse battery"}
            assert (await http.post("/api/accounts", json=creds)).status_code == 201
            token = (await http.post("/api/sessions", json=creds)).json()["token"]
            host = {"Authorization": f"Bearer {token}"}
            space = await http.post(
                "/api/spaces", json={"title": "media", "visibility": "unlisted"}, headers=host
            )
            sid = space.json()["id"]
            speaker_token = (
                await http.post(f"/api/spaces/{sid}/speaker-token", headers=host)
            ).json()["token"]
            pcm = tone(660, 1.0)
            speaker = SpeakerClient(PcmTrack(pcm, loop=True), record=False)
            await speaker.connect(http_offer(http, sid, speaker_token))  # proxied SDP
            await asyncio.wait_for(speaker.connected.wait(), 15)
            await asyncio.sleep(4.0)
            live = await http.get(f"/spaces/{sid}/live.m3u8")
            assert live.status_code == 200, live.text
            playlist = validate(live.text, expect="ll")
            init = await http.get(f"/spaces/{sid}/{playlist.map_uris[-1]}")
            parts = [await http.get(f"/spaces/{sid}/{p.uri}") for p in playlist.all_parts[-4:]]
            assert all(r.status_code == 200 for r in parts)
            samples, _ = decode_pcm(init.content + b"".join(r.content for r in parts))
            assert dominant_frequency(samples) == pytest.approx(660, abs=5)
            state = (await http.get(f"/spaces/{sid}/state.json")).json()
            assert any(s.get("connected") for s in state["speakers"]), state
            text = (await http.get("/metrics")).text
            assert "townhall_mixer_clock_late_seconds_count" in text
            count = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("townhall_mixer_clock_late_seconds_count")
            ]
            assert count and count[0] > 100  # the media process's ticks, shown by the HTTP process
            assert (await http.post(f"/api/spaces/{sid}/end", headers=host)).status_code == 200
    finally:
        if speaker is not None:
            await speaker.close()
        server.stop()


async def test_a_copy_that_missed_entries_resyncs_from_the_media_process_log(
    tmp_path: Path,
) -> None:
    # the media process's side (a real Program telling its RoomLog every window
    # call) and the HTTP process's copy, with entries lost in between (what a
    # full channel queue does): the copy sees the gap, reads a snapshot, goes on
    from prometheus_client import REGISTRY

    from tests.live.test_program import feed, small_settings
    from townhall.live.mediaproc import RoomLog
    from townhall.live.mediarooms import RemoteRoom
    from townhall.live.mediawire import WindowStart
    from townhall.live.program import Program

    settings = small_settings(tmp_path)
    program = Program(SPACE, settings)
    room_log = RoomLog(max_entries=512)
    delivered: list[object] = []
    program.tap = lambda message: delivered.append(room_log.add(message))
    await program.start()
    assert program.window is not None

    class Rooms:
        async def call(self, method: str, *args: object) -> object:
            assert method == "snapshot"
            return room_log.snapshot()

        def resync(self, room: RemoteRoom) -> None:
            resyncs.append(asyncio.create_task(room.restore(rooms)))

    rooms, resyncs = Rooms(), []
    copy = RemoteRoom(rooms, SPACE, settings)  # type: ignore[arg-type]
    published: list[Message] = []  # what the bus publisher gets, scaled out
    copy.program.tap = published.append
    window = program.window
    copy.program.open(WindowStart(window.epoch, window.open_msn, tuple(window.history)))
    before = REGISTRY.get_sample_value("townhall_media_resyncs_total") or 0.0
    await feed(program, tone(500, 3.0))
    entries = list(delivered)
    assert len(entries) > 6
    for i, entry in enumerate(entries):
        if i not in (3, 4):  # two entries lost on the way
            copy.apply(entry, rooms.resync)  # type: ignore[arg-type]
    await asyncio.gather(*resyncs)
    assert resyncs, "the gap was not noticed"
    assert (REGISTRY.get_sample_value("townhall_media_resyncs_total") or 0.0) == before + 1
    copy_window = copy.program.window
    assert copy_window is not None
    assert copy_window.position == window.position  # caught up: the same last part
    assert copy_window.init_segment == window.init_segment
    # the bus got every window call once, in order, the lost ones included:
    # a follower node fed from it ends where the program is, with its records
    assert published == [e.message for e in entries]
    bus_follower = FollowerState(window_segments=settings.window_segments)
    for seq, message in enumerate(published, 1):
        bus_follower.apply(Entry(seq, message))
    assert bus_follower.window is not None
    assert bus_follower.window.position == window.position
    assert bus_follower.statistics().gaps == 0
    await program.suspend()


async def test_captions_run_in_the_media_process_and_reach_captions_json(tmp_path: Path) -> None:
    from townhall.bench.captions import espeak_clip, word_error_rate
    from townhall.captions.engine import to_float_16k

    text = "Good evening and welcome to the town hall. Tonight we talk about the new library."
    pcm16, rate = espeak_clip(text)
    speech = (to_float_16k(pcm16, rate) * 32767).astype(np.int16).repeat(3)  # 16 -> 48 kHz
    audio = np.concatenate([np.zeros(24_000, np.int16), speech, np.zeros(96_000, np.int16)])
    args = ["--media-process", "--captions", "--captions-chunk-s", "4"]
    server = LiveServer(tmp_path / "data", args=args).start()
    speaker: SpeakerClient | None = None
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            creds = {"username": "captionhost", "password": "correct horse battery"}
            assert (await http.post("/api/accounts", json=creds)).status_code == 201
            token = (await http.post("/api/sessions", json=creds)).json()["token"]
            host = {"Authorization": f"Bearer {token}"}
            space = await http.post(
                "/api/spaces", json={"title": "captions", "visibility": "unlisted"}, headers=host
            )
            sid = space.json()["id"]
            speaker_token = (
                await http.post(f"/api/spaces/{sid}/speaker-token", headers=host)
            ).json()["token"]
            speaker = SpeakerClient(PcmTrack(audio, loop=True), record=False)
            await speaker.connect(http_offer(http, sid, speaker_token))
            await asyncio.wait_for(speaker.connected.wait(), 15)
            doc: dict[str, object] = {}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                doc = (await http.get(f"/spaces/{sid}/captions.json")).json()
                if len(doc["lines"]) >= 2:  # type: ignore[arg-type]
                    break
                await asyncio.sleep(1.0)
            assert doc.get("status") == "running", doc
            heard = " ".join(line["text"] for line in doc["lines"])  # type: ignore[attr-defined]
            assert word_error_rate(text, heard) <= 0.5, heard
            off = await http.put(
                f"/api/spaces/{sid}/captions", json={"enabled": False}, headers=host
            )
            assert off.status_code == 200 and off.json()["status"] == "off", off.text
            assert (await http.post(f"/api/spaces/{sid}/end", headers=host)).status_code == 200
        assert (tmp_path / "data" / "recordings" / sid / "captions.jsonl").is_file()
    finally:
        if speaker is not None:
            await speaker.close()
        server.stop()
