"""The speaker plane of one live space: WebRTC peers in, the 20 ms clock, the
mixer, the program out.

- Each speaker holds a seat (at most 1 host + max_cohosts + max_speakers) and
  one aiortc ``RTCPeerConnection`` at a time. Negotiation is non-trickle: the
  answer is returned once ICE gathering is complete, within
  ``webrtc_offer_timeout_s``.
- A reader task per peer decodes the speaker's Opus track, resamples it to
  48 kHz mono int16 and cuts it into ``frame_ms`` frames for the mixer's
  jitter buffer.
- One clock task ticks every ``frame_ms`` on a monotonic schedule: it calls
  ``mixer.tick()``, hands the program frame to ``sink`` and queues each
  speaker's mix-minus on that speaker's outgoing track.
- A reconnect (a new offer with the same account id) replaces the old peer and
  keeps the seat; a peer that fails or closes keeps its seat for
  ``speaker_reconnect_grace_s``, then leaves the mix.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError
from prometheus_client import Counter, Gauge

from townhall import metrics
from townhall.config import Settings
from townhall.errors import BadRequest, Conflict, ServiceUnavailable
from townhall.live.ice import loopback_for, parse_addresses, restrict_host_addresses
from townhall.media.mixer import Mixer

log = logging.getLogger("townhall.media")

TASK_FAILURES = Counter(
    "townhall_stage_task_failures_total",
    "Unexpected failures of a stage task (logged with a traceback).",
    ["task"],
)
OFFERS = Counter("townhall_webrtc_offers_total", "WebRTC offers by outcome.", ["outcome"])
SPEAKERS_CONNECTED = Gauge(
    "townhall_speakers_connected", "Speaker peers connected on this node (all spaces)."
)
_CLOCK_LATE = metrics.MIXER_CLOCK_LATE
CLOCK_SKIPPED_FRAMES = Counter(
    "townhall_mixer_skipped_frames_total",
    "Mixer frames skipped because the clock fell behind by more than clock_max_catchup_ms.",
)
JITTER_DROPPED_FRAMES = Counter(
    "townhall_jitter_dropped_frames_total",
    "Speaker frames dropped because their jitter buffer was full.",
)
JITTER_UNDERRUNS = Counter(
    "townhall_jitter_underruns_total",
    "Mixer ticks that found a speaker's jitter buffer empty (silence played).",
)
RETURN_DROPPED_FRAMES = Counter(
    "townhall_mix_minus_dropped_frames_total",
    "Mix-minus frames dropped because a speaker's outgoing queue was full.",
)

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


def _downmix(frame: av.AudioFrame) -> Frame:
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
        self._encoder = _opus_encoder(sample_rate_hz, bitrate_bps, complexity)
        self.dropped = 0
        self.underruns = 0

    def put(self, pcm: Frame) -> None:
        """Queue one frame; never blocks; drops the oldest when full."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            RETURN_DROPPED_FRAMES.inc()
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


def _opus_encoder(sample_rate_hz: int, bitrate_bps: int, complexity: int) -> av.AudioCodecContext:
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


def _opus_only() -> list[RTCRtpCodecCapability]:
    return [
        c
        for c in RTCRtpSender.getCapabilities("audio").codecs
        if c.mimeType.lower() == "audio/opus"
    ]


@dataclass(eq=False, slots=True)
class _Peer:
    pc: RTCPeerConnection
    outgoing: MixMinusTrack
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    connected: bool = False


@dataclass(eq=False, slots=True)
class _Seat:
    account_id: str
    role: str
    peer: _Peer | None = None
    grace: asyncio.Task[None] | None = None


class Stage:
    """Speakers, mixer and clock of one live space. See the module docstring."""

    def __init__(
        self, space_id: str, settings: Settings, sink: Callable[[np.ndarray], None]
    ) -> None:
        self.space_id = space_id
        self.settings = settings
        self.sink = sink
        self.samples_per_frame = settings.sample_rate_hz * settings.frame_ms // 1000
        self.max_seats = 1 + settings.max_cohosts + settings.max_speakers
        frames = max(1, settings.level_window_ms // settings.frame_ms)
        self.mixer = Mixer(
            samples_per_frame=self.samples_per_frame,
            frame_ms=settings.frame_ms,
            jitter_ms=settings.jitter_ms,
            level_window_frames=frames,
            speaking_threshold=settings.speaking_threshold,
            speaking_hang_frames=settings.speaking_hang_ms // settings.frame_ms,
        )
        self._seats: dict[str, _Seat] = {}
        self._muted: set[str] = set()
        self._clock: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False
        self._jitter_seen: dict[str, tuple[int, int]] = {}
        self.ticks = 0

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._clock = asyncio.create_task(self._clock_main(), name=f"stage-clock-{self.space_id}")

    async def stop(self) -> None:
        """Close every peer and stop the clock. Idempotent."""
        self._running = False
        seats = list(self._seats.values())
        self._seats.clear()
        for seat in seats:
            if seat.grace is not None:
                seat.grace.cancel()
            if seat.peer is not None:
                await self._close_peer(seat.peer)
            self.mixer.remove_speaker(seat.account_id)
        if self._clock is not None:
            self._clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock
            self._clock = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- speakers -------------------------------------------------------------------

    async def accept_offer(
        self, account_id: str, role: str, sdp: str, type_: str
    ) -> tuple[str, str]:
        """Connect a speaker from their SDP offer; returns the answer (sdp, type).

        Raises BadRequest for an offer that is not one or has no audio,
        Conflict when every seat is taken, ServiceUnavailable when the stage
        is not running or negotiation takes longer than webrtc_offer_timeout_s.
        """
        if not self._running:
            raise ServiceUnavailable("This space is not live; speakers can connect once it starts.")
        if type_ != "offer":
            raise BadRequest(f"Expected an SDP of type 'offer', got {type_!r}.")
        check_offer_sdp(sdp)
        seat = self._seats.get(account_id)
        new_seat = seat is None
        if seat is None:
            if len(self._seats) >= self.max_seats:
                OFFERS.labels(outcome="full").inc()
                raise Conflict(
                    f"The stage is full: {self.max_seats} speakers are already connected. "
                    "Ask the host to free a seat, then try again."
                )
            seat = _Seat(account_id=account_id, role=role)
            self._seats[account_id] = seat  # reserved before the first await
        seat.role = role

        peer = self._new_peer()
        try:
            async with asyncio.timeout(self.settings.webrtc_offer_timeout_s):
                answer = await self._negotiate(account_id, peer, sdp)
        except BaseException as exc:
            await self._close_peer(peer)
            if new_seat and self._seats.get(account_id) is seat and seat.peer is None:
                del self._seats[account_id]
            if isinstance(exc, TimeoutError):
                OFFERS.labels(outcome="timeout").inc()
                raise ServiceUnavailable(
                    "Connecting took too long (no ICE candidates gathered in time); try again.",
                    retry_after_s=1.0,
                ) from None
            if isinstance(exc, (ValueError, InvalidStateError, OperationError, InvalidAccessError)):
                OFFERS.labels(outcome="refused").inc()
                raise BadRequest(f"The SDP offer cannot be used: {exc}.") from None
            raise

        if not self._running or self._seats.get(account_id) is not seat:
            # the stage stopped or the speaker was removed while we negotiated
            await self._close_peer(peer)
            raise Conflict("This speaker was removed from the stage while connecting.")
        old = seat.peer
        seat.peer = peer
        if seat.grace is not None:
            seat.grace.cancel()
            seat.grace = None
        if old is not None:
            self.mixer.reset_stream(account_id)
            self._spawn(self._close_peer(old), f"close-{account_id}")
        self.mixer.add_speaker(account_id, muted=account_id in self._muted)
        OFFERS.labels(outcome="reconnected" if old is not None else "accepted").inc()
        log.info(
            "speaker %s (%s) %s on %s",
            account_id,
            role,
            "reconnected" if old is not None else "joined",
            self.space_id,
        )
        return answer.sdp, answer.type

    def speaker_status(self) -> dict[str, SpeakerStatus]:
        out = {}
        for account_id, seat in self._seats.items():
            muted = account_id in self._muted
            connected = seat.peer is not None and seat.peer.connected
            out[account_id] = SpeakerStatus(
                connected=connected,
                muted=muted,
                speaking=connected and not muted and self.mixer.speaking(account_id),
                level=0.0 if muted else round(self.mixer.level(account_id), 4),
            )
        return out

    async def set_muted(self, account_id: str, muted: bool) -> None:
        """Mute or unmute; remembered for a speaker who connects later."""
        if muted:
            self._muted.add(account_id)
        else:
            self._muted.discard(account_id)
        self.mixer.set_muted(account_id, muted)

    async def disconnect(self, account_id: str) -> None:
        """Take a speaker off the stage now (moved to the audience or removed)."""
        seat = self._seats.pop(account_id, None)
        self._muted.discard(account_id)
        self.mixer.remove_speaker(account_id)
        if seat is None:
            return
        if seat.grace is not None:
            seat.grace.cancel()
        if seat.peer is not None:
            await self._close_peer(seat.peer)
        log.info("speaker %s left the stage of %s", account_id, self.space_id)

    # -- peers ------------------------------------------------------------------------

    def _new_peer(self) -> _Peer:
        # named addresses; else a server bound to loopback is reached over loopback
        restrict_host_addresses(
            parse_addresses(self.settings.webrtc_host_addresses) or loopback_for(self.settings.host)
        )
        urls = [u.strip() for u in self.settings.webrtc_ice_servers.split(",") if u.strip()]
        # an empty list, not None: aiortc would otherwise contact a public STUN server
        config = RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in urls])
        outgoing = MixMinusTrack(
            sample_rate_hz=self.settings.sample_rate_hz,
            samples_per_frame=self.samples_per_frame,
            max_frames=max(1, self.settings.mix_minus_queue_ms // self.settings.frame_ms),
            bitrate_bps=self.settings.return_opus_bitrate_bps,
            complexity=self.settings.return_opus_complexity,
        )
        return _Peer(pc=RTCPeerConnection(configuration=config), outgoing=outgoing)

    async def _negotiate(self, account_id: str, peer: _Peer, sdp: str) -> RTCSessionDescription:
        pc = peer.pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and not peer.tasks:  # one voice per speaker
                task = asyncio.create_task(
                    self._reader_main(account_id, peer, track), name=f"stage-read-{account_id}"
                )
                peer.tasks.add(task)
                task.add_done_callback(peer.tasks.discard)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            self._on_connection_state(account_id, peer)

        # the return track is sent pre-encoded as Opus: negotiate nothing else
        transceiver = pc.addTransceiver(peer.outgoing, direction="sendrecv")
        transceiver.setCodecPreferences(_opus_only())
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if not set_receive_prefetch(pc, self.settings.webrtc_receive_prefetch_frames):
            log.debug("aiortc's receive jitter buffer could not be tuned; using its default")
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # returns once ICE gathering is complete
        local = pc.localDescription
        if local is None:  # pragma: no cover - aiortc always sets it
            raise InvalidStateError("no local description after negotiation")
        return local

    def _on_connection_state(self, account_id: str, peer: _Peer) -> None:
        state = peer.pc.connectionState
        was = peer.connected
        peer.connected = state == "connected"
        if peer.connected != was:
            SPEAKERS_CONNECTED.inc(1 if peer.connected else -1)
        seat = self._seats.get(account_id)
        if seat is None or seat.peer is not peer:
            return  # an old peer of a reconnected speaker
        if state in ("failed", "closed") and seat.grace is None and self._running:
            log.info(
                "speaker %s connection %s; seat kept for %.0f s",
                account_id,
                state,
                self.settings.speaker_reconnect_grace_s,
            )
            seat.grace = self._spawn(self._grace_main(seat, peer), f"grace-{account_id}")

    async def _grace_main(self, seat: _Seat, peer: _Peer) -> None:
        try:
            await asyncio.sleep(self.settings.speaker_reconnect_grace_s)
            if self._seats.get(seat.account_id) is seat and seat.peer is peer:
                del self._seats[seat.account_id]
                self.mixer.remove_speaker(seat.account_id)
                await self._close_peer(peer)
                log.info("speaker %s did not come back; seat freed", seat.account_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("grace timer of speaker %s failed", seat.account_id)
            TASK_FAILURES.labels(task="grace").inc()

    async def _reader_main(self, account_id: str, peer: _Peer, track: MediaStreamTrack) -> None:
        """Decode the speaker's track into the mixer until it ends."""
        resampler = av.AudioResampler(
            format="s16",
            layout="mono",
            rate=self.settings.sample_rate_hz,
            frame_size=self.samples_per_frame,
        )
        rechunk = Rechunker(self.samples_per_frame)
        try:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                seat = self._seats.get(account_id)
                if seat is None or seat.peer is not peer:
                    return  # replaced by a reconnect, or removed
                if not isinstance(frame, av.AudioFrame):
                    continue
                if (
                    frame.sample_rate == self.settings.sample_rate_hz
                    and frame.format.name == "s16"
                    and frame.layout.name in ("stereo", "mono")
                ):
                    # what aiortc's Opus decoder gives: average the channels in numpy,
                    # much cheaper than a resampler per frame
                    rechunk.push(_downmix(frame))
                else:
                    for out in resampler.resample(frame):
                        rechunk.push(_downmix(out))
                for pcm in rechunk.frames():
                    self.mixer.push(account_id, pcm)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading audio of speaker %s failed", account_id)
            TASK_FAILURES.labels(task="reader").inc()

    async def _close_peer(self, peer: _Peer) -> None:
        peer.outgoing.stop()
        for task in list(peer.tasks):
            task.cancel()
        try:
            await peer.pc.close()
        finally:
            if peer.connected:
                peer.connected = False
                SPEAKERS_CONNECTED.dec()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the clock --------------------------------------------------------------------

    async def _clock_main(self) -> None:
        """Tick until stopped; an unexpected error is logged, counted, and the
        clock restarts on a fresh schedule one frame later."""
        while self._running:
            try:
                await self._clock_loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mixer clock of %s failed; restarting it", self.space_id)
                TASK_FAILURES.labels(task="clock").inc()
                await asyncio.sleep(self.settings.frame_ms / 1000)

    async def _clock_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period_s = self.settings.frame_ms / 1000
        max_behind_s = self.settings.clock_max_catchup_ms / 1000
        start_s = loop.time()
        n = 0
        while self._running:
            n += 1
            delay_s = start_s + n * period_s - loop.time()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            elif -delay_s > max_behind_s:
                # stalled for long: skip ahead rather than burst a second of frames
                skipped = int(-delay_s / period_s)
                CLOCK_SKIPPED_FRAMES.inc(skipped)
                log.warning("mixer clock of %s skipped %d frames", self.space_id, skipped)
                n += skipped
            else:
                await asyncio.sleep(0)  # catching up: still let the network in
            _CLOCK_LATE.observe(max(0.0, loop.time() - (start_s + n * period_s)))
            self._tick()

    def _tick(self) -> None:
        result = self.mixer.tick()
        self.ticks += 1
        self.sink(result.program)
        for account_id, pcm in result.mix_minus.items():
            seat = self._seats.get(account_id)
            if seat is not None and seat.peer is not None:
                seat.peer.outgoing.put(pcm)
        if self.ticks % 50 == 0:
            self._count_jitter()

    def _count_jitter(self) -> None:
        for account_id in self.mixer.speakers():
            stats = self.mixer.statistics(account_id)
            if stats is None:
                continue
            dropped, underruns = self._jitter_seen.get(account_id, (0, 0))
            JITTER_DROPPED_FRAMES.inc(max(0, stats.dropped - dropped))
            JITTER_UNDERRUNS.inc(max(0, stats.underruns - underruns))
            self._jitter_seen[account_id] = (stats.dropped, stats.underruns)
