"""A speaker's WebRTC side, without HTTP: paced tracks that send PCM or a
file in real time, the recorder of what comes back, and ``SpeakerClient``,
one aiortc peer that also follows the server's RTCP receiver reports (what
the server says it heard). ``townhall.client.speak`` adds HTTP and the CLI.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import click
import numpy as np
import numpy.typing as npt
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from townhall.media import signals

log = logging.getLogger("townhall.client")

SAMPLE_RATE_HZ = 48000
FRAME_SAMPLES = 960
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE_HZ
REPORT_POLL_S = 0.25  # how often the sender's RTCP statistics are read

Pcm = npt.NDArray[np.int16]
PostOffer = Callable[[str, str], Awaitable[tuple[str, str]]]


class PacedTrack(MediaStreamTrack):
    """An audio track that hands out 20 ms frames on a monotonic schedule.

    ``sent`` records (frame index, monotonic time handed to the sender) for
    the first frames, so benchmarks can tell when a sample left.
    """

    kind = "audio"

    def __init__(self, *, keep_send_times: bool = False) -> None:
        super().__init__()
        self._index = 0
        self._start_s: float | None = None
        self._start_index = 0
        self._time_base = fractions.Fraction(1, SAMPLE_RATE_HZ)
        self.keep_send_times = keep_send_times
        self.send_times_s: list[float] = []  # monotonic time frame i was handed out

    def _next_pcm(self) -> Pcm | None:
        raise NotImplementedError

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start_s is None:
            self._start_s = now
            self._start_index = self._index
        due = self._start_s + (self._index - self._start_index) * FRAME_S
        if due > now:
            await asyncio.sleep(due - now)
        pcm = self._next_pcm()
        if pcm is None:
            self.stop()
            raise MediaStreamError
        if self.keep_send_times:
            self.send_times_s.append(time.monotonic())
        # stereo with both channels equal: aiortc's Opus encoder takes stereo, and
        # libswresample's mono->stereo upmix would cost 3 dB
        frame = av.AudioFrame.from_ndarray(
            np.repeat(pcm, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = SAMPLE_RATE_HZ
        frame.pts = self._index * FRAME_SAMPLES
        frame.time_base = self._time_base
        self._index += 1
        return frame

    @property
    def frames_sent(self) -> int:
        return self._index

    def resync(self) -> None:
        """Pace from the next frame on, after a pause (a reconnect): the frames
        not sent meanwhile are not rushed out at once."""
        self._start_s = None


class SourceLeg(MediaStreamTrack):
    """One peer connection's view of a longer-lived ``source``: aiortc stops
    the track of a sender whose connection closes, so each connection gets a
    leg, and stopping the leg leaves the source (and its place in the file)
    to the next connection."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source = source

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self.source.recv()
        assert isinstance(frame, av.AudioFrame)
        return frame


class PcmTrack(PacedTrack):
    """Send int16 mono 48 kHz PCM in real time; ends after the last frame
    unless ``loop``."""

    def __init__(self, pcm: npt.ArrayLike, *, loop: bool = False, keep_send_times: bool = False):
        super().__init__(keep_send_times=keep_send_times)
        data = np.asarray(pcm, dtype=np.int16).reshape(-1)
        pad = (-len(data)) % FRAME_SAMPLES
        self._pcm = np.concatenate([data, np.zeros(pad, dtype=np.int16)])
        self._frames = len(self._pcm) // FRAME_SAMPLES
        self.loop = loop

    def _next_pcm(self) -> Pcm | None:
        if self._frames == 0:
            return None
        i = self._index
        if i >= self._frames:
            if not self.loop:
                return None
            i %= self._frames
        return self._pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]


def _mono_s16(frame: av.AudioFrame) -> Pcm:
    """The samples of a packed s16 mono frame as a flat int16 array."""
    pcm: Pcm = frame.to_ndarray().astype(np.int16, copy=False).reshape(-1)
    return pcm


def decode_file(path: str | Path) -> Iterator[Pcm]:
    """Decode any audio file PyAV reads into 20 ms frames of 48 kHz mono int16."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise click.UsageError(f"{path} has no audio stream.")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(
            format="s16", layout="mono", rate=SAMPLE_RATE_HZ, frame_size=FRAME_SAMPLES
        )
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                yield _mono_s16(out)
        for out in resampler.resample(None):
            pcm = _mono_s16(out)
            if len(pcm) < FRAME_SAMPLES:
                pcm = np.concatenate([pcm, np.zeros(FRAME_SAMPLES - len(pcm), dtype=np.int16)])
            yield pcm


class FileTrack(PacedTrack):
    """Send an audio file (WAV or anything PyAV decodes) in real time,
    decoding as it goes; ``loop`` starts over at the end."""

    def __init__(self, path: str | Path, *, loop: bool = False, keep_send_times: bool = False):
        super().__init__(keep_send_times=keep_send_times)
        self.path = Path(path)
        self.loop = loop
        self._frames = decode_file(self.path)
        self._yielded_any = False

    def _next_pcm(self) -> Pcm | None:
        for _attempt in range(2):
            pcm = next(self._frames, None)
            if pcm is not None:
                self._yielded_any = True
                return pcm
            if not (self.loop and self._yielded_any):
                return None
            self._frames = decode_file(self.path)
        return None


@dataclass
class ReturnRecorder:
    """Audio received from the server: 48 kHz mono int16 frames and the
    monotonic time each arrived (decoded)."""

    frames: list[Pcm] = field(default_factory=list)
    arrival_s: list[float] = field(default_factory=list)
    max_frames: int = 50 * 3600  # an hour; older frames are dropped past it

    def add(self, pcm: Pcm, at_s: float) -> None:
        if len(self.frames) >= self.max_frames:
            del self.frames[0]
            del self.arrival_s[0]
        self.frames.append(pcm)
        self.arrival_s.append(at_s)

    def pcm(self) -> Pcm:
        if not self.frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self.frames)

    def write_wav(self, path: str | Path) -> None:
        signals.write_wav(path, self.pcm(), SAMPLE_RATE_HZ)


class SpeakerClient:
    """One speaker's WebRTC peer: sends ``source``, records what comes back.

    Use as ``async with SpeakerClient(track) as client: await client.connect(post_offer)``;
    leaving the block closes the peer.
    """

    def __init__(self, source: MediaStreamTrack, *, record: bool = True) -> None:
        self.source = source
        self.recorder = ReturnRecorder()
        self.record = record
        # no ICE servers: host candidates only (aiortc's default would contact a public STUN server)
        self.pc = RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()
        # what the server's RTCP receiver reports say it received, and when that last grew
        self.acked_packets = 0
        self.acked_at_s: float | None = None
        # when the last frame of the return audio (the server's mix-minus, sent
        # every frame, silence included) arrived: its silence means a dead server
        self.returned_at_s: float | None = None

    async def __aenter__(self) -> SpeakerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, post_offer: PostOffer) -> None:
        """Offer (non-trickle), hand the offer to ``post_offer``, apply the answer."""
        pc = self.pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                task = asyncio.create_task(self._record_main(track), name="speak-record")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                self.connected.set()
            elif pc.connectionState in ("failed", "closed"):
                self.failed.set()

        transceiver = pc.addTransceiver(self.source, direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        local = pc.localDescription
        answer_sdp, answer_type = await post_offer(local.sdp, local.type)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type=answer_type))
        task = asyncio.create_task(self._watch_reports(transceiver.sender), name="speak-reports")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_reports(self, sender: RTCRtpSender) -> None:
        """Follow the server's RTCP receiver reports (``remote-inbound-rtp``):
        one Opus packet per 20 ms frame, so packets received = frames heard."""
        while True:
            await asyncio.sleep(REPORT_POLL_S)
            for stats in (await sender.getStats()).values():
                if getattr(stats, "type", None) != "remote-inbound-rtp":
                    continue
                received = max(0, int(getattr(stats, "packetsReceived", 0)))
                if received > self.acked_packets:
                    self.acked_packets = received
                    self.acked_at_s = time.monotonic()

    def reports_stalled(self, stall_s: float, since_s: float) -> bool:
        """No receiver report has grown the count for ``stall_s`` (counted from
        ``since_s`` before the first): the server is not hearing us."""
        last = self.acked_at_s if self.acked_at_s is not None else since_s
        return time.monotonic() - last > stall_s

    def return_stalled(self, stall_s: float) -> bool:
        """The return audio flowed and then stopped for ``stall_s``: the server
        sends it every frame (silence included), so it is gone. Faster than
        receiver reports, which come about once a second."""
        last = self.returned_at_s
        return last is not None and time.monotonic() - last > stall_s

    async def _record_main(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(
            format="s16", layout="mono", rate=SAMPLE_RATE_HZ, frame_size=FRAME_SAMPLES
        )
        try:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                self.returned_at_s = time.monotonic()
                if not self.record or not isinstance(frame, av.AudioFrame):
                    continue
                now = time.monotonic()
                for out in resampler.resample(frame):
                    self.recorder.add(_mono_s16(out), now)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recording the return audio failed")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.source.stop()
        await self.pc.close()
