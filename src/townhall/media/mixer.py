"""The speaker mixer: N speakers in, one program frame and N mix-minus frames
out, per tick. Pure (numpy only): the Stage's clock calls ``tick()`` every
frame and the network side calls ``push()`` whenever audio arrives.

Guarantees, per tick:

- the program is the sum of every unmuted speaker's next frame, soft-limited
  to int16 (linear below the knee, so a normal voice passes bit-exact);
- each speaker's mix-minus is the program without their own voice (the sum of
  the others, limited on its own, not the limited program minus the voice);
- a muted, stalled or silent speaker contributes silence and never holds up
  the mix: ``tick()`` always returns at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from townhall.media.jitter import JitterBuffer, JitterStatistics
from townhall.media.levels import LevelMeter

Frame = npt.NDArray[np.int16]
FULL_SCALE = 32767.0


def soft_limit(x: npt.NDArray[np.float32], knee: float = 0.75) -> npt.NDArray[np.float32]:
    """Soft-clip float samples in full-scale units to (-1, 1).

    Identity for ``|x| <= knee``; above it, a tanh curve that approaches full
    scale smoothly, so a loud sum never wraps or hard-clips.
    """
    mag = np.abs(x)
    if not np.any(mag > knee):
        return x
    room = 1.0 - knee
    over = knee + room * np.tanh((mag - knee) / room)
    return np.where(mag > knee, np.sign(x) * over, x).astype(np.float32)


def _to_int16(x: npt.NDArray[np.float32]) -> Frame:
    out: Frame = np.clip(np.rint(x * FULL_SCALE), -32768, 32767).astype(np.int16)
    return out


@dataclass(frozen=True, slots=True)
class MixResult:
    program: Frame  # samples_per_frame int16
    mix_minus: dict[str, Frame]  # speaker id -> what that speaker should hear


@dataclass(slots=True)
class _Channel:
    jitter: JitterBuffer
    meter: LevelMeter
    muted: bool


class Mixer:
    """Mix-minus mixer over per-speaker jitter buffers.

    ``jitter_ms`` bounds each speaker's buffer; ``level_window_frames``,
    ``speaking_threshold`` and ``speaking_hang_frames`` configure the meters.
    """

    def __init__(
        self,
        *,
        samples_per_frame: int = 960,
        frame_ms: int = 20,
        jitter_ms: int = 60,
        level_window_frames: int = 10,
        speaking_threshold: float = 0.02,
        speaking_hang_frames: int = 25,
        limiter_knee: float = 0.75,
    ) -> None:
        self.samples_per_frame = samples_per_frame
        self.frame_ms = frame_ms
        self.jitter_ms = jitter_ms
        self.level_window_frames = level_window_frames
        self.speaking_threshold = speaking_threshold
        self.speaking_hang_frames = speaking_hang_frames
        self.limiter_knee = limiter_knee
        self._channels: dict[str, _Channel] = {}
        self._silence = np.zeros(samples_per_frame, dtype=np.int16)
        self.ticks = 0

    # -- speakers ---------------------------------------------------------------

    def add_speaker(self, speaker_id: str, *, muted: bool = False) -> None:
        """Give a speaker a channel; adding one that exists keeps its channel."""
        if speaker_id in self._channels:
            return
        self._channels[speaker_id] = _Channel(
            jitter=JitterBuffer(
                depth_ms=self.jitter_ms,
                frame_ms=self.frame_ms,
                samples_per_frame=self.samples_per_frame,
            ),
            meter=LevelMeter(
                window_frames=self.level_window_frames,
                threshold=self.speaking_threshold,
                hang_frames=self.speaking_hang_frames,
            ),
            muted=muted,
        )

    def remove_speaker(self, speaker_id: str) -> None:
        self._channels.pop(speaker_id, None)

    def reset_stream(self, speaker_id: str) -> None:
        """Drop a speaker's buffered audio (their stream restarted)."""
        channel = self._channels.get(speaker_id)
        if channel is not None:
            channel.jitter.clear()

    def __contains__(self, speaker_id: object) -> bool:
        return speaker_id in self._channels

    def speakers(self) -> list[str]:
        return list(self._channels)

    def set_muted(self, speaker_id: str, muted: bool) -> None:
        channel = self._channels.get(speaker_id)
        if channel is not None:
            channel.muted = muted

    def is_muted(self, speaker_id: str) -> bool:
        channel = self._channels.get(speaker_id)
        return channel.muted if channel is not None else False

    def push(self, speaker_id: str, frame: npt.ArrayLike) -> bool:
        """Queue one frame of a speaker's audio; False if the speaker is unknown
        (a late frame after removal is dropped)."""
        channel = self._channels.get(speaker_id)
        if channel is None:
            return False
        channel.jitter.push(frame)
        return True

    # -- meters -----------------------------------------------------------------

    def level(self, speaker_id: str) -> float:
        channel = self._channels.get(speaker_id)
        return channel.meter.level if channel is not None else 0.0

    def speaking(self, speaker_id: str) -> bool:
        channel = self._channels.get(speaker_id)
        return channel.meter.speaking if channel is not None else False

    def statistics(self, speaker_id: str) -> JitterStatistics | None:
        channel = self._channels.get(speaker_id)
        return channel.jitter.statistics() if channel is not None else None

    # -- the clock's work ---------------------------------------------------------

    def tick(self) -> MixResult:
        """Take one frame from every speaker and mix. Never waits."""
        self.ticks += 1
        ids = list(self._channels)
        if not ids:
            return MixResult(program=self._silence.copy(), mix_minus={})
        inputs = np.zeros((len(ids), self.samples_per_frame), dtype=np.float32)
        for row, speaker_id in enumerate(ids):
            channel = self._channels[speaker_id]
            frame = channel.jitter.pop()  # always pop: muting must not build up delay
            if frame is None or channel.muted:
                channel.meter.feed(None)
                continue
            channel.meter.feed(frame)
            inputs[row] = frame
        inputs /= FULL_SCALE
        total = inputs.sum(axis=0)
        program = _to_int16(soft_limit(total, self.limiter_knee))
        minus = _to_int16(soft_limit(total[np.newaxis, :] - inputs, self.limiter_knee))
        return MixResult(
            program=program, mix_minus={sid: minus[row] for row, sid in enumerate(ids)}
        )
