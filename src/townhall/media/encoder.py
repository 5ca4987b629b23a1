"""The program encoder: int16 mono PCM in, AAC-LC packets out, encoded once per
space with PyAV (FFmpeg's native AAC encoder).

Pure: no event loop, no sockets. Feed it frames of any length (the mixer gives
20 ms = 960 samples); it buffers to whole AAC frames of 1024 samples and returns
each packet with its exact presentation time in samples on the encoder's own
timeline. The encoder emits one priming frame first (``pts_samples`` =
-``priming_samples``); callers that lay packets on a media timeline place the
first packet at their start time and every following one 1024 samples later.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

log = logging.getLogger("townhall.media")

AAC_FRAME_SAMPLES = 1024
"""Samples per AAC-LC frame (one ADTS frame, one MP4 sample)."""


@dataclass(frozen=True, slots=True)
class AacPacket:
    """One AAC access unit: ``data`` decodes to ``duration_samples`` samples
    starting at ``pts_samples`` on the encoder timeline."""

    data: bytes
    pts_samples: int
    duration_samples: int = AAC_FRAME_SAMPLES


class AacEncoder:
    """AAC-LC mono encoder. Not thread-safe; one per program.

    ``encode`` may return zero, one or more packets (the encoder lags one frame).
    ``flush`` pads the last partial frame, drains the encoder and closes it:
    after it, ``encode`` raises.
    """

    def __init__(self, *, sample_rate_hz: int, bitrate_bps: int) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.bitrate_bps = bitrate_bps
        ctx = av.CodecContext.create("aac", "w")
        ctx.sample_rate = sample_rate_hz
        ctx.layout = "mono"
        ctx.format = "fltp"
        ctx.bit_rate = bitrate_bps
        ctx.time_base = Fraction(1, sample_rate_hz)
        ctx.open()
        if ctx.frame_size != AAC_FRAME_SAMPLES:  # pragma: no cover - FFmpeg invariant
            raise RuntimeError(f"unexpected AAC frame size {ctx.frame_size}")
        self._ctx = ctx
        self._pending = np.zeros(0, dtype=np.float32)
        self._samples_in = 0
        self._closed = False
        self.priming_samples = AAC_FRAME_SAMPLES

    @property
    def audio_specific_config(self) -> bytes:
        """The MPEG-4 AudioSpecificConfig (esds DecoderSpecificInfo)."""
        return bytes(self._ctx.extradata or b"")

    def encode(self, pcm: np.ndarray) -> list[AacPacket]:
        """Encode int16 mono samples (1-D). Returns the packets that became ready."""
        if self._closed:
            raise RuntimeError("encoder is closed")
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError(f"expected 1-D int16 PCM, got {pcm.dtype} with shape {pcm.shape}")
        samples = pcm.astype(np.float32) / 32768.0
        self._pending = np.concatenate((self._pending, samples)) if self._pending.size else samples
        out: list[AacPacket] = []
        while self._pending.size >= AAC_FRAME_SAMPLES:
            chunk = self._pending[:AAC_FRAME_SAMPLES]
            self._pending = self._pending[AAC_FRAME_SAMPLES:]
            out.extend(self._encode_chunk(chunk))
        return out

    def flush(self) -> list[AacPacket]:
        """Encode what is buffered (zero-padded to a whole frame) and drain."""
        if self._closed:
            return []
        out: list[AacPacket] = []
        if self._pending.size:
            chunk = np.zeros(AAC_FRAME_SAMPLES, dtype=np.float32)
            chunk[: self._pending.size] = self._pending
            self._pending = np.zeros(0, dtype=np.float32)
            out.extend(self._encode_chunk(chunk))
        out.extend(self._packets(self._ctx.encode(None)))
        self._closed = True
        return out

    def _encode_chunk(self, chunk: np.ndarray) -> list[AacPacket]:
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = self.sample_rate_hz
        frame.pts = self._samples_in
        frame.time_base = Fraction(1, self.sample_rate_hz)
        self._samples_in += AAC_FRAME_SAMPLES
        return self._packets(self._ctx.encode(frame))

    @staticmethod
    def _packets(packets: Iterable[Any]) -> list[AacPacket]:
        return [
            AacPacket(
                data=bytes(p),
                pts_samples=int(p.pts if p.pts is not None else 0),
                duration_samples=int(p.duration or AAC_FRAME_SAMPLES),
            )
            for p in packets
        ]
