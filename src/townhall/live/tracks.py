"""The media ends of a speaker's WebRTC peer, apart from the stage that owns
them: the check of an SDP offer, the rechunker that cuts decoded audio into
mixer frames, the outgoing mix-minus track and the Opus-only codec choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from aiortc import (
    MediaStreamTrack,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpSender,
)
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamError

from townhall import metrics
from townhall.errors import BadRequest

log = logging.getLogger("townhall.media")

Frame = npt.NDArray[np.int16]

MAX_SDP_BYTES = 32 * 1024
_SDP_LINE = re.compile(r"^[a-z]=.*$")
_M_LINE = re.compile(r"^m=(\w+) (\d+)(?:/\d+)? (\S+)(?: .*)?$")


@dataclass(frozen=True, slots=True)
class SpeakerStatus:
    connected: bool
    muted: bool
    speaking: bool  # level above threshold, with a short hang time
    level: float  # 0..1, RMS of the last ~200 ms, for live meters


def check_offer_sdp(sdp: str) -> None:
    """Refuse an SDP offer that is not one, or that sends no audio.

    Raises BadRequest with a sentence naming what is wrong. Pure; aiortc's own
    parser is lenient, so the structure is checked here first.
    """
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadRequest("The SDP offer is empty; send the offer your WebRTC stack created.")
    if len(sdp.encode("utf-8", "replace")) > MAX_SDP_BYTES:
        raise BadRequest(f"The SDP offer is larger than {MAX_SDP_BYTES} bytes.")
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line.strip()]
    if lines[0].strip() != "v=0":
        raise BadRequest("Malformed SDP: an SDP offer starts with the line 'v=0'.")
    audio_ports: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not _SDP_LINE.match(line):
            raise BadRequest(f"Malformed SDP: line {number} is not of the form 'x=value'.")
        if line.startswith("m="):
            m = _M_LINE.match(line.strip())
            if m is None:
                raise BadRequest(f"Malformed SDP: media line {number} ({line[:60]!r}) is invalid.")
            if m.group(1) == "audio":
                audio_ports.append(int(m.group(2)))
    if not any(port != 0 for port in audio_ports):
        raise BadRequest(
            "The SDP offer has no audio track; add a microphone track (an 'm=audio' line) and try again."
        )
    try:
        parsed = aiortc_sdp.SessionDescription.parse(sdp)
    except (ValueError, AssertionError, IndexError, KeyError, TypeError) as exc:
        raise BadRequest(f"Malformed SDP: {exc or 'unparseable attribute'}.") from None
    if not any(media.kind == "audio" for media in parsed.media):
        raise BadRequest("The SDP offer has no audio track; add a microphone track.")


class Rechunker:
    """Cuts a stream of int16 sample blocks of any size into fixed frames."""

    def __init__(self, samples_per_frame: int) -> None:
        self.samples_per_frame = samples_per_frame
        self._pending: list[Frame] = []
        self._count = 0

    def push(self, pcm: Frame) -> None:
        if len(pcm):
            self._pending.append(pcm)
            self._count += len(pcm)

    def frames(self) -> list[Frame]:
        n = self.samples_per_frame
        if self._count < n:
            return []
        if len(self._pending) == 1 and self._count == n:
            out = [self._pending[0]]
            self._pending, self._count = [], 0
            return out
        data = np.concatenate(self._pending)
        whole = len(data) // n * n
        out = [data[i : i + n] for i in range(0, whole, n)]
        rest = data[whole:]
        self._pending = [rest] if len(rest) else []
        self._count = len(rest)
        return out


def downmix(frame: av.AudioFrame) -> Frame:
    """Packed s16 mono or stereo to mono int16 (the channels averaged)."""
    data = frame.to_ndarray().reshape(-1)
    if frame.layout.name == "stereo":
        wide = data.astype(np.int32)
        mono: Frame = ((wide[0::2] + wide[1::2]) >> 1).astype(np.int16)
        return mono
    out: Frame = data.astype(np.int16, copy=False)
    return out


def set_receive_prefetch(pc: RTCPeerConnection, frames: int) -> bool:
    """Make aiortc hold ``frames`` audio frames (not its fixed 4) before decoding.

    aiortc has no option for it, so this sets its receiver's jitter buffer
    attribute; returns False (and changes nothing) if aiortc's insides differ.
    """
    done = False
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "audio":
            continue
        buffer = getattr(transceiver.receiver, "_RTCRtpReceiver__jitter_buffer", None)
        if buffer is not None and hasattr(buffer, "_prefetch"):
            buffer._prefetch = frames
            done = True
    return done


class MixMinusTrack(MediaStreamTrack):
    """What one speaker hears: frames queued by the stage clock, bounded.

    ``recv()`` encodes the next queued frame, or silence if none arrives by
    the time the next frame is due, so the speaker's stream never stalls.
    Frames leave as Opus packets encoded here (mono, low-delay mode,
    ``bitrate_bps``, ``complexity``; pts count samples at 1/sample_rate_hz):
    cheaper than aiortc's stereo encoder in a thread pool and its per-frame
    level meter, which dominated the server's CPU with 13 speakers.
    """

    kind = "audio"

    def __init__(
        self,
        *,
        sample_rate_hz: int,
        samples_per_frame: int,
        max_frames: int,
        bitrate_bps: int = 32000,
        complexity: int = 5,
    ) -> None:
        super().__init__()
        self.sample_rate_hz = sample_rate_hz
        self.samples_per_frame = samples_per_frame
        self._period_s = samples_per_frame / sample_rate_hz
        self._queue: deque[Frame] = deque(maxlen=max(1, max_frames))
        self._wakeup = asyncio.Event()
        self._time_base = fractions.Fraction(1, sample_rate_hz)
        self._silence = np.zeros(samples_per_frame, dtype=np.int16)
        self._frames = 0
        self._start_s: float | None = None
        self._encoder = opus_encoder(sample_rate_hz, bitrate_bps, complexity)
        self.dropped = 0
        self.underruns = 0

    def put(self, pcm: Frame) -> None:
        """Queue one frame; never blocks; drops the oldest when full."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            metrics.RETURN_DROPPED_FRAMES.inc()
        self._queue.append(pcm)
        self._wakeup.set()

    async def _next_pcm(self) -> Frame:
        now = time.monotonic()
        if self._start_s is None:
            self._start_s = now
        if not self._queue:
            # wait for the clock, but no later than one frame after this frame is due
            due = self._start_s + (self._frames + 1) * self._period_s
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due + self._period_s - now)):
                    await self._wakeup.wait()
        self._frames += 1
        if self._queue:
            return self._queue.popleft()
        self.underruns += 1
        return self._silence

    async def recv(self) -> av.Packet[Any]:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            pcm = await self._next_pcm()
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = self.sample_rate_hz
            frame.pts = (self._frames - 1) * self.samples_per_frame
            frame.time_base = self._time_base
            packets = self._encoder.encode(frame)
            if packets:  # the encoder holds back its very first frame (look-ahead)
                packet = packets[-1]
                packet.pts = (self._frames - 1) * self.samples_per_frame
                packet.time_base = self._time_base
                return packet


def opus_encoder(sample_rate_hz: int, bitrate_bps: int, complexity: int) -> av.AudioCodecContext:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = sample_rate_hz
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = bitrate_bps
    codec.time_base = fractions.Fraction(1, sample_rate_hz)
    # "lowdelay" is Opus's CELT-only mode: 5 ms look-ahead instead of 26.5 ms, and
    # the cheapest to encode; at 32 kbit/s and more it carries speech well
    codec.options = {"application": "lowdelay", "compression_level": str(complexity)}
    return codec


def opus_only() -> list[RTCRtpCodecCapability]:
    return [
        c
        for c in RTCRtpSender.getCapabilities("audio").codecs
        if c.mimeType.lower() == "audio/opus"
    ]
