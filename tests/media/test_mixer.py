"""Mixer: mix-minus, muting, stalls and limiting, checked by FFT."""

from __future__ import annotations

import numpy as np
import pytest

from townhall.media import signals
from townhall.media.levels import LevelMeter
from townhall.media.mixer import Mixer, soft_limit

N = 960
FREQS = {"a": 440.0, "b": 880.0, "c": 1320.0}


def feed(
    mixer: Mixer, sources: dict[str, np.ndarray], frames: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Push ``frames`` frames per source and tick once per frame; returns the
    program and each speaker's mix-minus, concatenated."""
    program = []
    minus: dict[str, list[np.ndarray]] = {sid: [] for sid in mixer.speakers()}
    for i in range(frames):
        for sid, pcm in sources.items():
            mixer.push(sid, pcm[i * N : (i + 1) * N])
        result = mixer.tick()
        program.append(result.program)
        for sid, out in result.mix_minus.items():
            minus[sid].append(out)
    return np.concatenate(program), {k: np.concatenate(v) for k, v in minus.items() if v}


def amplitudes(pcm: np.ndarray) -> dict[str, float]:
    tail = pcm[len(pcm) // 4 :]  # after prefill
    return {sid: signals.goertzel_amplitude(tail, f) for sid, f in FREQS.items()}


@pytest.mark.parametrize(
    ("speakers", "muted"),
    [
        (("a", "b"), ()),
        (("a", "b", "c"), ()),
        (("a", "b", "c"), ("b",)),
        (("a",), ()),
        (("a", "b"), ("a", "b")),
    ],
)
def test_program_has_unmuted_voices_and_each_return_lacks_its_own(
    speakers: tuple[str, ...], muted: tuple[str, ...]
) -> None:
    mixer = Mixer()
    for sid in speakers:
        mixer.add_speaker(sid, muted=sid in muted)
    sources = {sid: signals.tone(FREQS[sid], 0.5, amplitude=0.2) for sid in speakers}
    program, minus = feed(mixer, sources, 25)
    heard = {sid for sid in speakers if sid not in muted}

    amp = amplitudes(program)
    for sid in FREQS:
        if sid in heard:
            assert amp[sid] == pytest.approx(0.2, rel=0.05), sid
        else:
            assert amp[sid] < 0.002, sid
    for listener in speakers:
        amp = amplitudes(minus[listener])
        for sid in FREQS:
            if sid in heard and sid != listener:
                assert amp[sid] == pytest.approx(0.2, rel=0.05), (listener, sid)
            else:
                assert amp[sid] < 0.002, (listener, sid)


def test_two_speakers_440_880_return_has_only_the_other_by_dominant_frequency() -> None:
    mixer = Mixer()
    mixer.add_speaker("a")
    mixer.add_speaker("b")
    sources = {"a": signals.tone(440.0, 1.0), "b": signals.tone(880.0, 1.0)}
    program, minus = feed(mixer, sources, 50)
    assert signals.dominant_frequency(minus["a"][N * 5 :]) == pytest.approx(880.0, abs=2)
    assert signals.dominant_frequency(minus["b"][N * 5 :]) == pytest.approx(440.0, abs=2)
    spectrum_peaks = {f: signals.goertzel_amplitude(program[N * 5 :], f) for f in (440.0, 880.0)}
    assert min(spectrum_peaks.values()) > 0.25


def test_stalled_speaker_is_silence_and_does_not_stall_the_mix() -> None:
    mixer = Mixer()
    mixer.add_speaker("a")
    mixer.add_speaker("b")
    a = signals.tone(440.0, 1.0, amplitude=0.2)
    b = signals.tone(880.0, 1.0, amplitude=0.2)
    out = []
    for i in range(50):
        mixer.push("a", a[i * N : (i + 1) * N])
        if i < 10:  # b stops sending after 200 ms
            mixer.push("b", b[i * N : (i + 1) * N])
        out.append(mixer.tick().program)
    program = np.concatenate(out)
    assert len(program) == 50 * N  # one frame per tick, always
    late = program[20 * N :]
    assert signals.goertzel_amplitude(late, 440.0) == pytest.approx(0.2, rel=0.05)
    assert signals.goertzel_amplitude(late, 880.0) < 0.002
    stats = mixer.statistics("b")
    assert stats is not None and stats.underruns == 1


def test_removed_speaker_leaves_the_mix_and_late_frames_are_dropped() -> None:
    mixer = Mixer()
    mixer.add_speaker("a")
    assert mixer.push("zz", np.zeros(N, dtype=np.int16)) is False
    mixer.remove_speaker("a")
    assert mixer.push("a", np.zeros(N, dtype=np.int16)) is False
    result = mixer.tick()
    assert result.mix_minus == {}
    assert not result.program.any()


def test_no_speakers_gives_a_silent_frame_every_tick() -> None:
    mixer = Mixer()
    for _ in range(3):
        result = mixer.tick()
        assert result.program.shape == (N,) and result.program.dtype == np.int16
        assert not result.program.any()


def test_loud_sum_is_soft_limited_not_wrapped() -> None:
    mixer = Mixer()
    for sid in ("a", "b", "c"):
        mixer.add_speaker(sid)
    loud = np.full(3 * N, 30000, dtype=np.int16)
    program, minus = feed(mixer, dict.fromkeys(("a", "b", "c"), loud), 3)
    played = program[N:]  # the first tick is the jitter buffer's prefill
    assert played.min() > 30000  # never wraps around to negative: held near full scale
    assert (minus["a"][N:] > 30000).all()


def test_soft_limit_is_identity_below_the_knee_and_monotonic_above() -> None:
    x = np.linspace(-0.7, 0.7, 101, dtype=np.float32)
    assert np.array_equal(soft_limit(x), x)
    y = soft_limit(np.linspace(0, 5, 1001, dtype=np.float32))
    assert (np.diff(y) >= 0).all()
    assert y.max() <= 1.0
    assert soft_limit(np.array([0.9], dtype=np.float32))[0] < 0.9


def test_levels_and_speaking_with_hang_time() -> None:
    mixer = Mixer(speaking_hang_frames=5, level_window_frames=10)
    mixer.add_speaker("a")
    mixer.add_speaker("quiet")
    tone = signals.tone(440.0, 0.4, amplitude=0.5)
    for i in range(20):
        mixer.push("a", tone[i * N : (i + 1) * N])
        mixer.tick()
    assert mixer.level("a") == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
    assert mixer.speaking("a")
    assert mixer.level("quiet") == 0.0
    assert not mixer.speaking("quiet")
    while (stats := mixer.statistics("a")) is not None and stats.buffered:
        mixer.tick()  # play out what the jitter buffer still holds
    for _ in range(5):  # silence within the hang time: still speaking
        mixer.tick()
    assert mixer.speaking("a")
    mixer.tick()
    assert not mixer.speaking("a")
    mixer.set_muted("a", True)
    assert mixer.is_muted("a")


def test_muted_speaker_meter_reads_zero() -> None:
    meter = LevelMeter(window_frames=2, threshold=0.01, hang_frames=0)
    meter.feed(signals.tone(440.0, 0.02, amplitude=0.5))
    assert meter.speaking and meter.level > 0.2
    meter.feed(None)
    meter.feed(None)
    assert meter.level == 0.0 and not meter.speaking
