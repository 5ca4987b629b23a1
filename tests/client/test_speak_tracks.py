"""The speak bot's sources: PCM and files decoded by PyAV, in 20 ms frames."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from townhall.client.speak import FRAME_SAMPLES, FileTrack, PcmTrack, decode_file
from townhall.media import signals


def encode_flac(path: Path, pcm: np.ndarray, rate: int = 44100) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_decode_file_resamples_any_format_to_48k_mono_frames(tmp_path: Path) -> None:
    path = tmp_path / "tone.flac"
    encode_flac(path, signals.tone(600.0, 1.0, sample_rate_hz=44100), 44100)
    frames = list(decode_file(path))
    assert all(f.shape == (FRAME_SAMPLES,) and f.dtype == np.int16 for f in frames)
    assert abs(len(frames) - 50) <= 1
    pcm = np.concatenate(frames)
    assert signals.dominant_frequency(pcm[4800:-4800]) == pytest.approx(600.0, abs=2)


async def test_pcm_track_sends_every_frame_then_ends() -> None:
    pcm = signals.tone(440.0, 0.1)  # 5 frames
    track = PcmTrack(pcm)
    got = []
    for _ in range(5):
        frame = await track.recv()
        assert frame.sample_rate == 48000 and frame.samples == FRAME_SAMPLES
        got.append(frame.to_ndarray().reshape(-1)[::2])  # stereo, equal channels
    assert np.array_equal(np.concatenate(got), pcm)
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert track.frames_sent == 5


async def test_pcm_track_loops_and_keeps_time_stamps_rising() -> None:
    track = PcmTrack(signals.tone(440.0, 0.04), loop=True)  # 2 frames
    pts = [(await track.recv()).pts for _ in range(5)]
    assert pts == [0, 960, 1920, 2880, 3840]
    track.stop()


async def test_file_track_loops_a_file(tmp_path: Path) -> None:
    path = tmp_path / "t.wav"
    signals.write_wav(path, signals.tone(440.0, 0.04))
    track = FileTrack(path, loop=True)
    frames = [await track.recv() for _ in range(5)]
    assert len(frames) == 5
    track.stop()
    once = FileTrack(path)
    await once.recv()
    await once.recv()
    with pytest.raises(MediaStreamError):
        await once.recv()
