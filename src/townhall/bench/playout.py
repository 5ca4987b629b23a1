"""A simulated player's buffer, pure (no sockets, no event loop): ``Playout``
puts media on a timeline (startup buffer, stalls counted and summed);
``AdtsCounter`` turns a progressive ADTS byte stream into media seconds.
"""

from __future__ import annotations

# -- playout accounting (pure) --------------------------------------------------


class Playout:
    """A player's buffer on a timeline (seconds, any monotonic origin).

    ``add(duration_s, now_s)`` when a piece of media has fully arrived. Playback
    starts when ``startup_s`` of media is buffered; from then the buffer drains
    in real time. A piece arriving after the buffer ran dry is one stall event,
    and the gap is stalled time; playback resumes with that piece.
    ``finish(now_s)`` closes the books (a buffer dry at the end counts too).
    """

    __slots__ = (
        "_finished",
        "buffered_s",
        "dry_at_s",
        "media_s",
        "play_start_s",
        "stall_events",
        "stalled_s",
        "startup_s",
    )

    def __init__(self, startup_s: float) -> None:
        self.startup_s = max(0.0, startup_s)
        self.play_start_s: float | None = None
        self.dry_at_s = 0.0
        self.buffered_s = 0.0
        self.media_s = 0.0
        self.stalled_s = 0.0
        self.stall_events = 0
        self._finished = False

    def add(self, duration_s: float, now_s: float) -> None:
        self.media_s += duration_s
        if self.play_start_s is None:
            self.buffered_s += duration_s
            if self.buffered_s >= self.startup_s - 1e-9:
                self.play_start_s = now_s
                self.dry_at_s = now_s + self.buffered_s
            return
        if now_s > self.dry_at_s:
            self.stall_events += 1
            self.stalled_s += now_s - self.dry_at_s
            self.dry_at_s = now_s + duration_s
        else:
            self.dry_at_s += duration_s

    def start_now(self, now_s: float) -> None:
        """Start playing with what is buffered (the source has no more to give yet)."""
        if self.play_start_s is None and self.buffered_s > 0:
            self.play_start_s = now_s
            self.dry_at_s = now_s + self.buffered_s

    def stalled_at(self, now_s: float) -> bool:
        return self.play_start_s is not None and now_s > self.dry_at_s

    def finish(self, now_s: float) -> None:
        if self._finished or self.play_start_s is None:
            self._finished = True
            return
        self._finished = True
        if now_s > self.dry_at_s:
            self.stall_events += 1
            self.stalled_s += now_s - self.dry_at_s
            self.dry_at_s = now_s

    def played_s(self, now_s: float) -> float:
        """Seconds of audio heard up to ``now_s``."""
        if self.play_start_s is None:
            return 0.0
        # closed stalls all lie between play_start_s and dry_at_s
        return max(0.0, min(now_s, self.dry_at_s) - self.play_start_s - self.stalled_s)


_ADTS_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


class AdtsCounter:
    """Counts ADTS frames in a byte stream fed in arbitrary chunks (header walk,
    resync on lost sync). ``media_s`` is the audio time received."""

    __slots__ = ("_carry", "_skip", "frames", "lost_sync_bytes", "sample_rate_hz")

    def __init__(self) -> None:
        self._carry = b""
        self._skip = 0
        self.frames = 0
        self.sample_rate_hz = 0
        self.lost_sync_bytes = 0

    @property
    def media_s(self) -> float:
        return self.frames * 1024 / self.sample_rate_hz if self.sample_rate_hz else 0.0

    def feed(self, data: bytes) -> int:
        """Feed bytes; returns the number of frames that started in them."""
        if self._skip >= len(data):
            self._skip -= len(data)
            return 0
        buf = self._carry + data[self._skip :] if self._carry else data[self._skip :]
        self._carry = b""
        self._skip = 0
        pos = 0
        found = 0
        end = len(buf)
        while pos < end:
            if end - pos < 7:
                self._carry = buf[pos:]
                break
            if buf[pos] != 0xFF or (buf[pos + 1] & 0xF6) != 0xF0:
                nxt = buf.find(b"\xff", pos + 1)
                if nxt < 0:
                    self.lost_sync_bytes += end - pos
                    pos = end
                    break
                self.lost_sync_bytes += nxt - pos
                pos = nxt
                continue
            length = ((buf[pos + 3] & 0x03) << 11) | (buf[pos + 4] << 3) | (buf[pos + 5] >> 5)
            if length < 7:
                self.lost_sync_bytes += 1
                pos += 1
                continue
            if not self.sample_rate_hz:
                rate_index = (buf[pos + 2] >> 2) & 0x0F
                self.sample_rate_hz = _ADTS_RATES[rate_index] if rate_index < 12 else 48000
            found += 1
            pos += length
        if pos > end:
            self._skip = pos - end
        self.frames += found
        return found
