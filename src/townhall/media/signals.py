"""Test signals and their analysis, for tests and benchmarks of every part.

Generators return int16 mono PCM (numpy arrays); analysers take int16 or float
PCM. Nothing here downloads anything or touches an event loop: a tone goes in,
and these helpers say whether the same tone came out, and when.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float64]

FULL_SCALE = 32767.0


def _to_int16(signal: FloatArray) -> Pcm:
    """Float in [-1, 1] to int16, clipped."""
    return np.clip(np.round(signal * FULL_SCALE), -32768, 32767).astype(np.int16)


def _as_float(pcm: npt.ArrayLike) -> FloatArray:
    """int16 (or float) PCM to float64 in full-scale units (1.0 = int16 full scale)."""
    arr = np.asarray(pcm)
    if arr.dtype == np.int16:
        return arr.astype(np.float64) / FULL_SCALE
    return arr.astype(np.float64)


def tone(
    freq_hz: float,
    duration_s: float,
    *,
    sample_rate_hz: int = 48000,
    amplitude: float = 0.3,
    phase_rad: float = 0.0,
) -> Pcm:
    """A sine tone, ``amplitude`` in full-scale units (0..1)."""
    n = round(duration_s * sample_rate_hz)
    t = np.arange(n, dtype=np.float64) / sample_rate_hz
    return _to_int16(amplitude * np.sin(2 * np.pi * freq_hz * t + phase_rad))


@dataclass(frozen=True, slots=True)
class Bursts:
    """A tone-burst signal and where each burst starts (sample indices)."""

    pcm: Pcm
    onsets: tuple[int, ...]
    sample_rate_hz: int

    @property
    def onsets_s(self) -> tuple[float, ...]:
        return tuple(i / self.sample_rate_hz for i in self.onsets)


def tone_bursts(
    freq_hz: float,
    *,
    count: int,
    burst_ms: int = 100,
    period_ms: int = 1000,
    lead_ms: int = 0,
    sample_rate_hz: int = 48000,
    amplitude: float = 0.5,
    ramp_ms: float = 2.0,
) -> Bursts:
    """``count`` bursts of a tone, one every ``period_ms``, silence between.

    Each burst has a short raised-cosine ramp (``ramp_ms``) so that codecs do
    not smear a click across the silence; the onset is the ramp's start.
    """
    if burst_ms >= period_ms:
        raise ValueError("burst_ms must be shorter than period_ms")
    period = sample_rate_hz * period_ms // 1000
    burst = sample_rate_hz * burst_ms // 1000
    lead = sample_rate_hz * lead_ms // 1000
    out = np.zeros(lead + period * count, dtype=np.float64)
    t = np.arange(burst, dtype=np.float64) / sample_rate_hz
    shape = np.ones(burst)
    ramp = max(1, int(sample_rate_hz * ramp_ms / 1000))
    if 2 * ramp < burst:
        edge = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
        shape[:ramp] = edge
        shape[-ramp:] = edge[::-1]
    one = amplitude * shape * np.sin(2 * np.pi * freq_hz * t)
    onsets = []
    for k in range(count):
        start = lead + k * period
        out[start : start + burst] = one
        onsets.append(start)
    return Bursts(_to_int16(out), tuple(onsets), sample_rate_hz)


def speech_like(
    duration_s: float,
    *,
    sample_rate_hz: int = 48000,
    seed: int = 0,
    amplitude: float = 0.5,
    base_pitch_hz: float = 140.0,
) -> Pcm:
    """A voice-like signal: a harmonic buzz with a wandering pitch, shaped into
    syllables (~4 per second) and phrases separated by pauses. Deterministic
    for a given ``seed``; good enough to exercise codecs, meters and
    voice-activity logic, not to fool a listener.
    """
    rng = np.random.default_rng(seed)
    n = round(duration_s * sample_rate_hz)
    t = np.arange(n, dtype=np.float64) / sample_rate_hz
    # pitch contour: slow random walk around the base pitch
    knots = max(2, int(duration_s * 3) + 2)
    contour = base_pitch_hz * (1 + 0.15 * rng.standard_normal(knots))
    pitch = np.interp(t, np.linspace(0, duration_s, knots), contour)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate_hz
    voice = np.zeros(n)
    for h in range(1, 16):
        # a crude formant envelope: energy around 500 Hz and 1500 Hz
        f = h * base_pitch_hz
        gain = np.exp(-(((f - 500) / 400) ** 2)) + 0.5 * np.exp(-(((f - 1500) / 500) ** 2)) + 0.05
        voice += gain * np.sin(h * phase)
    voice /= np.max(np.abs(voice)) or 1.0
    # syllables: raised-sine bumps at ~4 Hz, phrases of ~2 s with ~0.5 s pauses
    syllable = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, np.pi)), 0, None) ** 0.7
    phrase_len_s = 2.5
    in_phrase = (t % phrase_len_s) < (phrase_len_s - 0.5)
    envelope = syllable * in_phrase
    noise = 0.02 * rng.standard_normal(n) * envelope
    return _to_int16(amplitude * (voice * envelope + noise))


def goertzel_amplitude(pcm: npt.ArrayLike, freq_hz: float, sample_rate_hz: int = 48000) -> float:
    """Amplitude (full-scale units) of the component at ``freq_hz``.

    A pure tone of amplitude A (over a whole number of periods, or a long
    enough window) gives about A. Uses a Hann window to keep a strong tone at
    another frequency from leaking in.
    """
    x = _as_float(pcm)
    n = len(x)
    if n == 0:
        return 0.0
    window = np.hanning(n)
    x = x * window
    # one DFT bin (what Goertzel's recurrence computes), vectorised
    basis = np.exp(-2j * np.pi * freq_hz * np.arange(n) / sample_rate_hz)
    power = float(abs(np.dot(x, basis)))
    return float(2.0 * power / window.sum())


def dominant_frequency(pcm: npt.ArrayLike, sample_rate_hz: int = 48000) -> float:
    """The frequency (Hz) of the strongest spectral peak, 0.0 for silence.

    FFT with a Hann window and parabolic interpolation between bins, so a
    pure tone is found within about a hertz from a second of audio.
    """
    x = _as_float(pcm)
    if len(x) < 2 or not np.any(x):
        return 0.0
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    if 0 < k < len(spectrum) - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom != 0 else 0.0
    else:
        offset = 0.0
    return float((k + offset) * sample_rate_hz / len(x))


def rms(pcm: npt.ArrayLike) -> float:
    """Root mean square in full-scale units (0..1)."""
    x = _as_float(pcm)
    return float(np.sqrt(np.mean(x * x))) if len(x) else 0.0


def detect_onsets(
    pcm: npt.ArrayLike,
    freq_hz: float,
    *,
    sample_rate_hz: int = 48000,
    window_ms: float = 5.0,
    threshold: float = 0.05,
    min_gap_ms: float = 300.0,
) -> list[int]:
    """Sample indices where a tone at ``freq_hz`` starts (rises above
    ``threshold`` amplitude), at most one per ``min_gap_ms``.

    Analyses consecutive windows of ``window_ms`` with a single-bin DFT, so the
    answer is accurate to about one window.
    """
    x = _as_float(pcm)
    win = max(8, int(sample_rate_hz * window_ms / 1000))
    frames = len(x) // win
    if frames == 0:
        return []
    blocks = x[: frames * win].reshape(frames, win)
    k = np.arange(win)
    basis = np.exp(-2j * np.pi * freq_hz * k / sample_rate_hz)
    amplitude = 2.0 * np.abs(blocks @ basis) / win
    gap = int(sample_rate_hz * min_gap_ms / 1000)
    onsets: list[int] = []
    above = amplitude >= threshold
    for i in np.flatnonzero(above & ~np.concatenate(([False], above[:-1]))):
        at = int(i) * win
        if not onsets or at - onsets[-1] >= gap:
            onsets.append(at)
    return onsets


def write_wav(path: str | Path, pcm: npt.ArrayLike, sample_rate_hz: int = 48000) -> None:
    """Write int16 mono PCM as a WAV file."""
    data = np.asarray(pcm, dtype=np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate_hz)
        out.writeframes(data.astype("<i2").tobytes())


def read_wav(path: str | Path) -> tuple[Pcm, int]:
    """Read a 16-bit WAV; multi-channel files are mixed down to mono."""
    with wave.open(str(path), "rb") as src:
        if src.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit WAV is supported here")
        channels = src.getnchannels()
        rate = src.getframerate()
        raw = np.frombuffer(src.readframes(src.getnframes()), dtype="<i2")
    if channels > 1:
        raw = raw.reshape(-1, channels).mean(axis=1).round().astype(np.int16)
    return raw.astype(np.int16), rate
