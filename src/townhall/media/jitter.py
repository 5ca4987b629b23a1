"""Per-speaker playout buffer of fixed-size PCM frames, bounded in milliseconds.

The network side pushes decoded frames whenever they arrive; the mixer's clock
pops exactly one per tick. A missing frame is an underrun (the mixer plays
silence for that speaker); a full buffer drops its oldest frame, so a speaker
whose clock runs fast never builds up delay beyond ``depth_ms``.

After an underrun the buffer waits until it holds ``prefill_frames`` again
before it plays, so a jittery sender does not alternate frame/silence/frame.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Frame = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class JitterStatistics:
    frames_in: int
    frames_out: int
    dropped: int  # frames thrown away because the buffer was full
    underruns: int  # pops that found nothing to play while the speaker was active
    buffered: int  # frames held now
    capacity: int


class JitterBuffer:
    """Bounded FIFO of ``samples_per_frame`` int16 frames.

    ``depth_ms`` bounds the delay this buffer can add; it holds at most
    ``max(1, depth_ms // frame_ms)`` frames. ``prefill_frames`` (default: half
    the capacity, at least one) is how many frames must be waiting before
    playout starts or resumes after an underrun.
    """

    def __init__(
        self,
        *,
        depth_ms: int,
        frame_ms: int = 20,
        samples_per_frame: int = 960,
        prefill_frames: int | None = None,
    ) -> None:
        if frame_ms <= 0 or samples_per_frame <= 0:
            raise ValueError("frame_ms and samples_per_frame must be positive")
        self.samples_per_frame = samples_per_frame
        self.capacity = max(1, depth_ms // frame_ms)
        default_prefill = max(1, (self.capacity + 1) // 2)
        self.prefill_frames = min(
            self.capacity, default_prefill if prefill_frames is None else max(1, prefill_frames)
        )
        self._frames: deque[Frame] = deque()
        self._playing = False
        self._frames_in = 0
        self._frames_out = 0
        self._dropped = 0
        self._underruns = 0

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: npt.ArrayLike) -> None:
        """Add one frame (exactly ``samples_per_frame`` samples). Never blocks;
        drops the oldest frame when full."""
        pcm = np.asarray(frame, dtype=np.int16)
        if pcm.shape != (self.samples_per_frame,):
            raise ValueError(
                f"a frame has {self.samples_per_frame} mono samples, got shape {pcm.shape}"
            )
        if len(self._frames) >= self.capacity:
            self._frames.popleft()
            self._dropped += 1
        self._frames.append(pcm)
        self._frames_in += 1

    def pop(self) -> Frame | None:
        """The next frame to play, or None (play silence)."""
        if not self._playing:
            if len(self._frames) < self.prefill_frames:
                return None
            self._playing = True
        if not self._frames:
            self._playing = False
            self._underruns += 1
            return None
        self._frames_out += 1
        return self._frames.popleft()

    def clear(self) -> None:
        """Forget buffered audio (a reconnect starts a new stream)."""
        self._frames.clear()
        self._playing = False

    def statistics(self) -> JitterStatistics:
        return JitterStatistics(
            frames_in=self._frames_in,
            frames_out=self._frames_out,
            dropped=self._dropped,
            underruns=self._underruns,
            buffered=len(self._frames),
            capacity=self.capacity,
        )
