"""The pure measurement of ``townhall bench latency``: which tone bursts a
speaker bot sends when, how each heard onset is matched to the burst that was
sent, when the part holding it would be played, and the summary rows. No
sockets, no event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from townhall.bench.report import percentile
from townhall.client.speak import FRAME_SAMPLES
from townhall.media import signals

SAMPLE_RATE_HZ = 48000
# bursts cycle through these tones so that a latency longer than the burst
# period (LL-HLS: seconds) is not mistaken for the next burst; 800 Hz apart is
# a whole number of cycles in the 5 ms detection window, so they do not leak
BURST_FREQS_HZ = (1000.0, 1800.0, 2600.0, 3400.0)
BURST_MS = 100
PERIOD_MS = 1000
LEAD_MS = 3000
DETECT_THRESHOLD = 0.1  # bursts go out at 0.5 full scale
BAR_SPEAKER_P50_S = 0.250
BAR_LISTENER_P50_S = 2.5
BAR_CPU_13_CORES = 0.5


# -- pure ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BurstPlan:
    """Tone bursts, one per period, cycling through ``BURST_FREQS_HZ``."""

    pcm: npt.NDArray[np.int16]
    onsets: dict[float, tuple[int, ...]]  # frequency -> sample indices of its bursts

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.onsets.values())


def plan_bursts(count: int, *, lead_ms: int = LEAD_MS, period_ms: int = PERIOD_MS) -> BurstPlan:
    """``count`` bursts: burst k is at ``lead_ms + k * period_ms`` with tone k mod 4."""
    cycle = len(BURST_FREQS_HZ)
    parts = []
    onsets = {}
    for j, freq in enumerate(BURST_FREQS_HZ):
        n = len(range(j, count, cycle))
        if n == 0:
            continue
        b = signals.tone_bursts(
            freq,
            count=n,
            burst_ms=BURST_MS,
            period_ms=period_ms * cycle,
            lead_ms=lead_ms + j * period_ms,
        )
        parts.append(b.pcm)
        onsets[freq] = b.onsets
    length = max(len(p) for p in parts)
    total = np.zeros(length, dtype=np.int32)
    for p in parts:
        total[: len(p)] += p
    return BurstPlan(np.clip(total, -32768, 32767).astype(np.int16), onsets)


def match_latencies(sent_s: list[float], heard_s: list[float], period_s: float) -> list[float]:
    """For each heard onset, the time since the latest sent onset before it,
    if that is within one period (otherwise it is not a burst we sent)."""
    out = []
    sent = sorted(sent_s)
    used: set[int] = set()
    for t in sorted(heard_s):
        i = int(np.searchsorted(sent, t, side="right")) - 1
        if i >= 0 and i not in used and 0 <= t - sent[i] < period_s:
            used.add(i)
            out.append(t - sent[i])
    return out


def onset_send_times(onsets: tuple[int, ...], frame_send_s: list[float]) -> list[float]:
    """Monotonic times the samples at ``onsets`` were handed to the sender."""
    out = []
    for sample in onsets:
        frame = sample // FRAME_SAMPLES
        if frame < len(frame_send_s):
            out.append(frame_send_s[frame] + (sample % FRAME_SAMPLES) / SAMPLE_RATE_HZ)
    return out


def onset_arrival_times(onsets: list[int], frame_arrival_s: list[float]) -> list[float]:
    """Monotonic times the frames holding ``onsets`` arrived (were decoded)."""
    return [
        frame_arrival_s[s // FRAME_SAMPLES]
        for s in onsets
        if s // FRAME_SAMPLES < len(frame_arrival_s)
    ]


@dataclass
class PartTimeline:
    """Where each fetched part sits in the player's timeline.

    Playback starts when the start-up parts have arrived and runs at real
    time; a part that arrives after its turn stalls playback until it does.
    """

    durations_s: list[float] = field(default_factory=list)
    arrivals_s: list[float] = field(default_factory=list)

    def add(self, duration_s: float, arrival_s: float) -> None:
        self.durations_s.append(duration_s)
        self.arrivals_s.append(arrival_s)

    def play_starts(self, startup_parts: int) -> list[float]:
        if not self.durations_s:
            return []
        first = self.arrivals_s[max(0, min(startup_parts, len(self.arrivals_s)) - 1)]
        starts = [first]
        for i in range(1, len(self.durations_s)):
            starts.append(max(starts[-1] + self.durations_s[i - 1], self.arrivals_s[i]))
        return starts

    def play_time(self, media_s: float, startup_parts: int) -> float | None:
        """When media position ``media_s`` (from the first fetched part) is played."""
        starts = self.play_starts(startup_parts)
        edge = 0.0
        for start, duration in zip(starts, self.durations_s, strict=True):
            if media_s < edge + duration:
                return start + (media_s - edge)
            edge += duration
        return None


def stats_row(name: str, values: list[float], expected: int, bar_s: float | None) -> dict[str, Any]:
    p50 = percentile(values, 50)
    return {
        "metric": name,
        "bursts_sent": expected,
        "bursts_matched": len(values),
        "p50_s": None if p50 is None else round(p50, 3),
        "p90_s": None if not values else round(percentile(values, 90) or 0.0, 3),
        "max_s": None if not values else round(max(values), 3),
        "bar_p50_s": bar_s,
        "pass": None if p50 is None or bar_s is None else p50 <= bar_s,
    }
