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
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError

from townhall import metrics
from townhall.config import Settings
from townhall.errors import BadRequest, Conflict, ServiceUnavailable
from townhall.live.ice import loopback_for, parse_addresses, restrict_host_addresses
from townhall.live.tracks import (
    MixMinusTrack,
    Rechunker,
    SpeakerStatus,
    check_offer_sdp,
    downmix,
    opus_only,
    set_receive_prefetch,
)
from townhall.media.mixer import Mixer

log = logging.getLogger("townhall.media")


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
                metrics.OFFERS.labels(outcome="full").inc()
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
                metrics.OFFERS.labels(outcome="timeout").inc()
                raise ServiceUnavailable(
                    "Connecting took too long (no ICE candidates gathered in time); try again.",
                    retry_after_s=1.0,
                ) from None
            if isinstance(exc, (ValueError, InvalidStateError, OperationError, InvalidAccessError)):
                metrics.OFFERS.labels(outcome="refused").inc()
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
        metrics.OFFERS.labels(outcome="reconnected" if old is not None else "accepted").inc()
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
        for account_id in self._muted.difference(out):  # muted before they connect
            out[account_id] = SpeakerStatus(connected=False, muted=True, speaking=False, level=0.0)
        return out

    def preset_muted(self, account_ids: Iterable[str]) -> None:
        """Before ``start``: these speakers are muted when they connect (a
        room taken over keeps its last owner's mutes, ``live/scaleout.py``)."""
        self._muted.update(account_ids)

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
        transceiver.setCodecPreferences(opus_only())
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
            metrics.SPEAKERS_CONNECTED.inc(1 if peer.connected else -1)
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
            metrics.TASK_FAILURES.labels(task="grace").inc()

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
                    rechunk.push(downmix(frame))
                else:
                    for out in resampler.resample(frame):
                        rechunk.push(downmix(out))
                for pcm in rechunk.frames():
                    self.mixer.push(account_id, pcm)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading audio of speaker %s failed", account_id)
            metrics.TASK_FAILURES.labels(task="reader").inc()

    async def _close_peer(self, peer: _Peer) -> None:
        peer.outgoing.stop()
        for task in list(peer.tasks):
            task.cancel()
        try:
            await peer.pc.close()
        finally:
            if peer.connected:
                peer.connected = False
                metrics.SPEAKERS_CONNECTED.dec()

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
                metrics.TASK_FAILURES.labels(task="clock").inc()
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
                metrics.CLOCK_SKIPPED_FRAMES.inc(skipped)
                log.warning("mixer clock of %s skipped %d frames", self.space_id, skipped)
                n += skipped
            else:
                await asyncio.sleep(0)  # catching up: still let the network in
            metrics.MIXER_CLOCK_LATE.observe(max(0.0, loop.time() - (start_s + n * period_s)))
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
            metrics.JITTER_DROPPED_FRAMES.inc(max(0, stats.dropped - dropped))
            metrics.JITTER_UNDERRUNS.inc(max(0, stats.underruns - underruns))
            self._jitter_seen[account_id] = (stats.dropped, stats.underruns)
