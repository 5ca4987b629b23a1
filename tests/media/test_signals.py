"""The test-signal helpers must themselves be right, or every audio test lies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from townhall.media import signals


@pytest.mark.parametrize("freq_hz", [220.0, 440.0, 997.0, 3000.0])
def test_tone_has_its_frequency_and_amplitude(freq_hz: float) -> None:
    pcm = signals.tone(freq_hz, 0.5, amplitude=0.25)
    assert pcm.dtype == np.int16
    assert len(pcm) == 24000
    assert signals.dominant_frequency(pcm) == pytest.approx(freq_hz, abs=1.0)
    assert signals.goertzel_amplitude(pcm, freq_hz) == pytest.approx(0.25, rel=0.02)
    assert signals.goertzel_amplitude(pcm, freq_hz * 1.5) < 0.005
    assert signals.rms(pcm) == pytest.approx(0.25 / np.sqrt(2), rel=0.01)


def test_silence_has_no_dominant_frequency() -> None:
    assert signals.dominant_frequency(np.zeros(4800, dtype=np.int16)) == 0.0
    assert signals.goertzel_amplitude(np.zeros(0, dtype=np.int16), 440.0) == 0.0


def test_tone_bursts_onsets_are_found_where_they_were_put() -> None:
    bursts = signals.tone_bursts(1000.0, count=4, burst_ms=80, period_ms=500, lead_ms=120)
    assert bursts.onsets == (5760, 29760, 53760, 77760)
    assert bursts.onsets_s[0] == pytest.approx(0.12)
    found = signals.detect_onsets(bursts.pcm, 1000.0, threshold=0.1)
    assert len(found) == 4
    for want, got in zip(bursts.onsets, found, strict=True):
        assert abs(got - want) <= 48 * 5  # within one 5 ms window
    # another frequency is not mistaken for the burst
    assert signals.detect_onsets(bursts.pcm, 2500.0, threshold=0.1) == []


def test_tone_bursts_reject_a_burst_longer_than_its_period() -> None:
    with pytest.raises(ValueError, match="shorter than period_ms"):
        signals.tone_bursts(440.0, count=1, burst_ms=500, period_ms=500)


def test_speech_like_is_deterministic_voiced_and_has_pauses() -> None:
    a = signals.speech_like(5.0, seed=3)
    b = signals.speech_like(5.0, seed=3)
    c = signals.speech_like(5.0, seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 60 < signals.dominant_frequency(a) < 2000
    frames = a[: len(a) // 960 * 960].reshape(-1, 960)
    levels = np.sqrt(((frames.astype(np.float64) / 32767) ** 2).mean(axis=1))
    assert (levels < 0.001).sum() >= 20  # pauses between phrases
    assert (levels > 0.05).sum() >= 80  # and speech


def test_wav_round_trip(tmp_path: Path) -> None:
    pcm = signals.tone(440.0, 0.1)
    path = tmp_path / "t.wav"
    signals.write_wav(path, pcm, 48000)
    back, rate = signals.read_wav(path)
    assert rate == 48000
    assert np.array_equal(back, pcm)
