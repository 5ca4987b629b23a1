"""Offers the stage must refuse, with a sentence a person can act on, and the
seat limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from tests.live.stage_helpers import running_stage, speaker, stage_settings
from townhall.config import Settings
from townhall.errors import BadRequest, Conflict, ServiceUnavailable
from townhall.live.stage import Stage, check_offer_sdp

AUDIO_OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=rtpmap:111 opus/48000/2\r\n"
)


async def real_offer(kind: str) -> str:
    """An offer from a real aiortc peer with one transceiver of ``kind``."""
    pc = RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver(kind, direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


@pytest.mark.parametrize(
    ("sdp", "message"),
    [
        ("", "empty"),
        ("   \r\n", "empty"),
        ("hello", "starts with the line 'v=0'"),
        ("v=0\r\nthis is not sdp\r\n", "line 2 is not of the form"),
        ("v=0\r\nm=audio nine RTP 111\r\n", "media line 2"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no audio track"),
        ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "no audio track"),
        ("v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 111\r\n", "no audio track"),
        ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF abc\r\n", "Malformed SDP"),
        ("v=0\r\n" + "a=x\r\n" * 20000, "larger than"),
    ],
)
def test_check_offer_sdp_refuses_with_a_reason(sdp: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as info:
        check_offer_sdp(sdp)
    assert info.value.status == 400


def test_check_offer_sdp_accepts_an_audio_offer() -> None:
    check_offer_sdp(AUDIO_OFFER)


async def test_malformed_and_audioless_offers_are_refused_and_take_no_seat(
    tmp_path: Path,
) -> None:
    video_only = await real_offer("video")
    audio = await real_offer("audio")
    async with running_stage(stage_settings(tmp_path)) as (stage, _sink):
        with pytest.raises(BadRequest, match="Malformed SDP"):
            await stage.accept_offer("a", "speaker", "not an sdp at all", "offer")
        with pytest.raises(BadRequest, match="no audio track"):
            await stage.accept_offer("a", "speaker", video_only, "offer")
        with pytest.raises(BadRequest, match="type 'offer'"):
            await stage.accept_offer("a", "speaker", audio, "answer")
        # structurally fine but unusable by WebRTC: no ICE credentials
        with pytest.raises(BadRequest, match="cannot be used: ICE"):
            await stage.accept_offer("a", "speaker", AUDIO_OFFER, "offer")
        assert stage.speaker_status() == {}


async def test_offer_to_a_stage_that_is_not_running_is_refused(tmp_path: Path) -> None:
    stage = Stage("idle", stage_settings(tmp_path), sink=lambda _pcm: None)
    with pytest.raises(ServiceUnavailable, match="not live"):
        await stage.accept_offer("a", "host", await real_offer("audio"), "offer")


def test_seat_count_is_host_cohosts_and_speakers(tmp_path: Path) -> None:
    assert Stage("s", stage_settings(tmp_path), sink=lambda _p: None).max_seats == 13
    small = stage_settings(tmp_path, max_cohosts=1, max_speakers=3)
    assert Stage("s", small, sink=lambda _p: None).max_seats == 5


@pytest.mark.slow
async def test_fourteenth_speaker_is_refused_and_a_reconnect_is_not(tmp_path: Path) -> None:
    settings: Settings = stage_settings(tmp_path)
    async with running_stage(settings) as (stage, sink):
        clients = []
        try:
            for i in range(13):
                cm = speaker(stage, f"s{i:02d}", wait_connected=False)
                clients.append(cm)
                await cm.__aenter__()
            assert len(stage.speaker_status()) == 13
            with pytest.raises(Conflict, match="stage is full: 13 speakers") as info:
                await stage.accept_offer("s13", "speaker", await real_offer("audio"), "offer")
            assert info.value.status == 409
            # a speaker who already holds a seat may reconnect
            async with speaker(stage, "s05"):
                assert len(stage.speaker_status()) == 13
            # a freed seat can be taken
            await stage.disconnect("s00")
            async with speaker(stage, "s13", wait_connected=False):
                assert "s13" in stage.speaker_status()
            ticks = len(sink.frames)
            await asyncio.sleep(0.2)
            assert len(sink.frames) > ticks  # the clock never stopped
        finally:
            for cm in reversed(clients):
                await cm.__aexit__(None, None, None)
