"""Level meter with voice-activity hang time, one per speaker.

Fed one frame per mixer tick; reports the RMS of the last ``window_frames``
frames (0..1 of int16 full scale) and whether the speaker is speaking: the
level crossed ``threshold`` within the last ``hang_frames`` frames, so the
"speaking" light does not flicker between syllables.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import numpy.typing as npt

FULL_SCALE = 32768.0


class LevelMeter:
    """Sliding RMS over a few frames plus a speaking flag with hang time."""

    def __init__(self, *, window_frames: int = 10, threshold: float = 0.02, hang_frames: int = 25):
        if window_frames < 1 or hang_frames < 0:
            raise ValueError("window_frames must be >= 1 and hang_frames >= 0")
        self.threshold = threshold
        self.hang_frames = hang_frames
        self._squares: deque[float] = deque(maxlen=window_frames)
        self._since_loud = hang_frames + 1

    def feed(self, frame: npt.NDArray[np.int16] | None) -> None:
        """One frame of what the speaker contributes (None or muted: silence)."""
        if frame is None:
            mean_square = 0.0
        else:
            x = frame.astype(np.float32) / FULL_SCALE
            mean_square = float(np.dot(x, x)) / max(1, len(x))
        self._squares.append(mean_square)
        if math.sqrt(mean_square) >= self.threshold:
            self._since_loud = 0
        else:
            self._since_loud += 1

    @property
    def level(self) -> float:
        if not self._squares:
            return 0.0
        return min(1.0, math.sqrt(sum(self._squares) / len(self._squares)))

    @property
    def speaking(self) -> bool:
        return self._since_loud <= self.hang_frames

    def reset(self) -> None:
        self._squares.clear()
        self._since_loud = self.hang_frames + 1
