"""Helpers for the browser tests: fake-microphone WAVs, Debian's Chromium under
Playwright, and an in-page spectrum of what an <audio> element plays."""

from __future__ import annotations

import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
SAMPLE_RATE_HZ = 48000
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

BASE_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    # WebRTC over loopback: the server offers 127.0.0.1 only (TOWNHALL_WEBRTC_HOST_ADDRESSES)
    "--allow-loopback-in-peer-connection",
]


def write_voice_wav(path: Path, freq_hz: float, seconds: float = 2.0) -> Path:
    """A "voice" at one pitch: a tone with a syllable-like 4 Hz envelope, so
    noise suppression does not learn it as steady background noise."""
    t = np.arange(int(SAMPLE_RATE_HZ * seconds)) / SAMPLE_RATE_HZ
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t)
    signal = 0.5 * envelope * np.sin(2 * np.pi * freq_hz * t)
    pcm = (signal * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE_HZ)
        out.writeframes(pcm.tobytes())
    return path


@contextmanager
def chromium(playwright: Any, profile_dir: Path, mic_wav: Path | None = None) -> Iterator[Any]:
    """One Chromium process with a fresh profile (a BrowserContext); with
    ``mic_wav`` its fake microphone plays that file in a loop."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh --test installs it)")
    args = list(BASE_ARGS)
    if mic_wav is not None:
        args += [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic_wav}",
        ]
    context = playwright.chromium.launch_persistent_context(
        str(profile_dir),
        executable_path=str(CHROMIUM),
        headless=True,
        args=args,
        ignore_default_args=["--mute-audio"],
        viewport={"width": 1100, "height": 900},
    )
    if mic_wav is not None:
        context.grant_permissions(["microphone"])
    try:
        yield context
    finally:
        context.close()


# Averaged power spectrum of what an <audio> element plays, via Web Audio.
_SPECTRUM_JS = """
async ({selector, ms, max_hz}) => {
  const el = document.querySelector(selector);
  if (!el) throw new Error("no element " + selector);
  window.__thTaps = window.__thTaps || {};
  let tap = window.__thTaps[selector];
  if (!tap) {
    const ctx = new AudioContext();
    const source = ctx.createMediaElementSource(el);
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 8192;
    analyser.smoothingTimeConstant = 0;
    source.connect(analyser);
    analyser.connect(ctx.destination);
    tap = window.__thTaps[selector] = {ctx, analyser};
  }
  await tap.ctx.resume();
  const n = tap.analyser.frequencyBinCount;
  const frame = new Float32Array(n);
  const sum = new Float64Array(n);
  let frames = 0;
  const end = performance.now() + ms;
  while (performance.now() < end) {
    tap.analyser.getFloatFrequencyData(frame);
    for (let i = 0; i < n; i++) sum[i] += Math.pow(10, frame[i] / 10);
    frames++;
    await new Promise((r) => setTimeout(r, 50));
  }
  const bin_hz = tap.ctx.sampleRate / tap.analyser.fftSize;
  const keep = Math.min(n, Math.ceil(max_hz / bin_hz));
  return {bin_hz, state: tap.ctx.state, power: Array.from(sum.slice(0, keep), (v) => v / Math.max(1, frames))};
}
"""


class Spectrum:
    def __init__(self, bin_hz: float, power: list[float]) -> None:
        self.bin_hz = bin_hz
        self.power_db = 10 * np.log10(np.asarray(power) + 1e-20)

    def band_db(self, low_hz: float, high_hz: float) -> float:
        lo, hi = int(low_hz / self.bin_hz), int(high_hz / self.bin_hz) + 1
        return float(self.power_db[lo:hi].max())

    def floor_db(self, low_hz: float = 150.0, high_hz: float = 3000.0) -> float:
        lo, hi = int(low_hz / self.bin_hz), int(high_hz / self.bin_hz)
        return float(np.median(self.power_db[lo:hi]))

    def peak_hz(self, low_hz: float = 150.0, high_hz: float = 3000.0) -> float:
        lo, hi = int(low_hz / self.bin_hz), int(high_hz / self.bin_hz)
        return (lo + int(np.argmax(self.power_db[lo:hi]))) * self.bin_hz

    def has_tone(self, freq_hz: float, above_floor_db: float = 20.0) -> bool:
        return self.band_db(freq_hz - 15, freq_hz + 15) - self.floor_db() >= above_floor_db

    def __repr__(self) -> str:
        return f"Spectrum(peak {self.peak_hz():.0f} Hz, floor {self.floor_db():.0f} dB, 440 Hz {self.band_db(425, 455):.0f} dB, 880 Hz {self.band_db(865, 895):.0f} dB)"


def spectrum(page: Any, selector: str, ms: int = 1500) -> Spectrum:
    result = page.evaluate(_SPECTRUM_JS, {"selector": selector, "ms": ms, "max_hz": 4000})
    return Spectrum(result["bin_hz"], result["power"])


async def spectrum_async(page: Any, selector: str, ms: int = 1500) -> Spectrum:
    """``spectrum`` for a page of Playwright's async API."""
    result = await page.evaluate(_SPECTRUM_JS, {"selector": selector, "ms": ms, "max_hz": 4000})
    return Spectrum(result["bin_hz"], result["power"])


def openapi_paths(base_url: str) -> set[str]:
    response = httpx.get(base_url + "/api/openapi.json", timeout=10)
    response.raise_for_status()
    return set(response.json().get("paths", {}))


def require_api(base_url: str, *paths: str) -> None:
    """Skip (with the precise reason) when an endpoint this test needs has not landed."""
    have = openapi_paths(base_url)
    missing = [p for p in paths if p not in have]
    if missing:
        pytest.skip(f"endpoint(s) not in /api/openapi.json yet: {', '.join(missing)}")


def require_route(base_url: str, path: str) -> None:
    """Skip when a non-API route is missing: the app's generic 404 means no route."""
    response = httpx.get(base_url + path, timeout=10)
    if response.status_code == 404 and "nothing at this address" in response.text:
        pytest.skip(f"route not served yet: {path}")
