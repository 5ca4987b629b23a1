"""Every node serves every room: a lease decides which node runs a room (its
owner), the owner publishes the program on the bus, the others follow it.

:class:`Scaleout` is one node's part, used by the room registry when
``bus_enabled`` is set:

- ``attach(room)`` before a room starts here: its program's calls on the
  live window go to a :class:`BusPublisher` (fenced by the room's lease);
- ``listener_source(space_id)`` for a listener request of a live space this
  node does not run: starts following its bus (the first request answers from
  disk as before; the next ones from the follower's window);
- ``claim(space_id)`` runs the room here only if this
  node gets the lease, and the supervisor task, once per
  ``room_lease_renew_ms``: renews the leases of the rooms it runs (a lost
  lease: the room stops at once and the node follows), takes over rooms
  whose lease lapsed (the room resumes here in a new discontinuity, from the
  recording this node kept while following), follows every other live room,
  and ends rooms whose space ended (on whichever node the host ended it); a
  followed room whose space ended is followed until the owner's end arrives
  (so this node's copy of the recording is final too), or for a lease's
  length and two rounds at most.

A follower writes each finished segment to this node's own recording, in a
worker thread, through a bounded queue; segments it missed (it fell behind,
or the queue was full: counted) are listed as missing, as the recorder does
for a failing disk, so the copy can still resume the room.

The seats of the rooms a node runs (connected, muted, speaking, level) go to
Redis too (``live/seat_publisher.py``), so every node's state.json shows the
owner's seats (``seat_view``); a node that takes a room over mutes again the
speakers the last owner had muted (``claim``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from townhall import metrics
from townhall.config import Settings
from townhall.live.seat_publisher import SeatPublisher
from townhall.live.seats import SeatView, follower_view, muted_ids
from townhall.origin.bus import EpochStart, Message, SegmentEnded
from townhall.origin.fanout import ProgressiveHub
from townhall.origin.follower import BusReader, Follower, FollowerState
from townhall.store.bus_mux import BusMux, MuxReader
from townhall.store.bus_redis import BusPublisher, BusWriter, connect_blocking
from townhall.store.lease import Lease, Leases
from townhall.store.recordings import Manifest, RecordingStore, SegmentRecord
from townhall.store.seat_board import SeatBoard

if TYPE_CHECKING:
    from townhall.live.mediarooms import RemoteRoom
    from townhall.live.registry import RoomRegistry
    from townhall.live.room import Room

log = logging.getLogger("townhall.media")

_RECORDING_QUEUE = 16  # segments (about a minute) a slow disk may fall behind
_TAKEOVER_MARGIN_S = 0.005  # after the lease's own expiry (Redis expires keys on access)


def node_name(settings: Settings) -> str:
    return settings.node_id or f"{socket.gethostname()}:{settings.port}:{os.getpid()}"


class FollowedRoom:
    """A room this node follows: the follower, its recording copy, and what
    the fast path needs (``window``, ``progressive``, ``ended``)."""

    def __init__(self, space_id: str, settings: Settings, reader: BusReader) -> None:
        self.space_id = space_id
        self.recording = RecordingStore(settings.recordings_dir, space_id)
        self.sample_rate_hz = settings.sample_rate_hz
        self._writes: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(_RECORDING_QUEUE)
        self.recording_intact = True
        state = FollowerState(
            window_segments=settings.window_segments,
            on_epoch=self._on_epoch,
            on_segment=self._on_segment,
            on_close=self._on_close,
        )
        self.reader = reader
        self.follower = Follower(
            space_id,
            state,
            reader,
            block_ms=settings.bus_block_ms,
            retry_s=max(0.1, settings.redis_backoff_ms / 1000),
        )
        # live.aac is not carried by the bus (yet): a closed hub sends it to the app
        self.progressive = ProgressiveHub(max_lag_ms=1000, burst_ms=0, frame_ms=21.333)
        self.progressive.close()
        self._writer: asyncio.Task[None] | None = None

    @property
    def window(self) -> Any:
        return self.follower.window

    @property
    def ended(self) -> bool:
        window = self.follower.window
        return window is not None and window.ended

    def start(self) -> None:
        self.follower.start()
        self._writer = asyncio.create_task(self._write_loop(), name=f"follower-rec-{self.space_id}")
        metrics.FOLLOWED_ROOMS.inc()

    async def stop(self, *, drain_s: float = 5.0, seal: bool = False) -> SegmentEnded | None:
        """Stop following; wait (bounded) until the recording copy is durable.
        ``seal`` (this node takes the room over): end the open segment with
        the parts the bus carried first (``FollowerState.seal``), and return
        that end for the new owner to publish."""
        await self.follower.stop()
        sealed = self.follower.state.seal() if seal else None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._writes.join(), drain_s)
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
            metrics.FOLLOWED_ROOMS.dec()
        await asyncio.to_thread(self.recording.close)
        return sealed

    def health(self, now_s: float, part_s: float, behind_s: float) -> dict[str, Any]:
        """This node's copy of the room, for /healthz: how far behind the owner
        it is (``lag_ms``: since the newest part arrived, a part length at
        most when in step; ``parts_behind``: the whole parts the owner made
        meanwhile, from the part length), and how often it had to resync.
        ``now_s`` is time.monotonic()."""
        stats = self.follower.state.statistics()
        status = self.follower.status
        lag_s = status.lag_s(now_s)
        behind = status.behind_since_s is not None or (lag_s is not None and lag_s > behind_s)
        return {
            "space_id": self.space_id,
            "synced": stats.synced,
            "behind": behind,
            "lag_ms": None if lag_s is None else round(lag_s * 1000),
            "parts_behind": None if lag_s is None else max(0, int(lag_s // part_s) - 1),
            "resyncs": stats.resyncs,
            "gaps": stats.gaps,
            "last_error": status.last_error if status.behind_since_s is not None else "",
            "recording_intact": self.recording_intact,
        }

    # -- the recording copy -----------------------------------------------------------

    def _queue(self, op: str, arg: Any) -> None:
        try:
            self._writes.put_nowait((op, arg))
        except asyncio.QueueFull:
            self.recording_intact = False
            metrics.BUS_FAILURES.labels(op="follower-record").inc()

    def _on_epoch(self, start: EpochStart) -> None:
        self._queue("epoch", start)

    def _on_segment(self, record: SegmentRecord, data: bytes) -> None:
        self._queue("segment", (record, data))

    def _on_close(self, ended: bool) -> None:
        if ended:
            self._queue("ended", None)

    async def _write_loop(self) -> None:
        manifest: Manifest | None = None
        while True:
            op, arg = await self._writes.get()
            try:
                if manifest is None:
                    manifest = await asyncio.to_thread(self.recording.create, self.sample_rate_hz)
                manifest = await asyncio.to_thread(self._write, manifest, op, arg)
            except Exception:
                self.recording_intact = False
                metrics.BUS_FAILURES.labels(op="follower-record").inc()
                log.exception("follower %s could not record; its copy stops", self.space_id)
            finally:
                self._writes.task_done()

    def _write(self, manifest: Manifest, op: str, arg: Any) -> Manifest:
        if op == "epoch":
            start: EpochStart = arg
            if manifest.sample_rate_hz != start.sample_rate_hz and not manifest.epochs:
                manifest = Manifest(manifest.space_id, start.sample_rate_hz, False, (), ())
            if start.epoch not in manifest.epochs:
                return self.recording.begin_epoch(manifest, start.epoch, start.init_segment)
            return manifest
        if op == "segment":
            record, data = arg
            last = manifest.segments[-1].msn if manifest.segments else None
            if last is not None and record.msn < manifest.next_msn:
                return manifest  # had it already
            if last is not None:
                # segments the bus carried but this node missed (it fell behind):
                # listed as missing, as the recorder does for a failing disk
                for msn in range(manifest.next_msn, record.msn):
                    missed = self.follower.state.record(msn)
                    if missed is None:
                        self.recording_intact = False
                        return manifest
                    manifest = manifest.with_missing(missed)
                    metrics.RECORDING_SEGMENTS_MISSING.inc()
            return self.recording.append_segment(manifest, record, data)
        if op == "ended" and not manifest.ended:
            return self.recording.mark_ended(manifest)
        return manifest


@dataclass
class OwnedRoom:
    publisher: BusPublisher
    lease: Lease | None = None
    lost: bool = False
    history_set: bool = field(default=False)


class Scaleout:
    """One node's side of the bus and the leases (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        redis: Any,
        *,
        is_live: Callable[[str], bool],
        live_ids: Callable[[], Awaitable[list[str]]],
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.blocking = connect_blocking(settings)
        self.is_live = is_live
        self.live_ids = live_ids
        self.node_id = node_name(settings)
        self.mux = BusMux(
            self.blocking,
            redis,
            prefix=settings.redis_prefix,
            node_id=self.node_id,
            block_ms=settings.bus_block_ms,
            max_entries=settings.bus_max_entries,
            retry_s=max(0.1, settings.redis_backoff_ms / 1000),
        )
        self.leases = Leases(
            redis,
            prefix=settings.redis_prefix,
            node_id=self.node_id,
            ttl_ms=settings.room_lease_ttl_ms,
        )
        self.rooms: RoomRegistry | None = None
        self.followed: dict[str, FollowedRoom] = {}
        self.owned: dict[str, OwnedRoom] = {}
        self._pending_leases: dict[str, Lease] = {}
        self._pending_mutes: dict[str, list[str]] = {}
        self._ended_at: dict[str, float] = {}  # followed rooms whose space ended: since
        self._supervisor: asyncio.Task[None] | None = None
        self._claiming: set[str] = set()
        self._takeovers: dict[str, asyncio.Task[None]] = {}
        self._sealed: dict[str, SegmentEnded] = {}
        self.seats = SeatPublisher(
            SeatBoard(redis, prefix=settings.redis_prefix, ttl_s=settings.bus_ttl_s),
            self._owned_rooms,
            interval_s=settings.seat_status_interval_ms / 1000,
        )
        self._seats_down_until = 0.0

    # -- owner side --------------------------------------------------------------------

    def attach(self, room: Room | RemoteRoom) -> None:
        """Before ``room.start``: publish its program on the bus (a room in
        the media process: the calls its copy applies, ``live/mediarooms.py``)."""
        space_id = room.space_id
        lease = self._pending_leases.pop(space_id, None)
        muted = self._pending_mutes.pop(space_id, [])
        if muted:
            room.stage.preset_muted(muted)
        writer = BusWriter(
            self.redis,
            prefix=self.settings.redis_prefix,
            space_id=space_id,
            max_entries=self.settings.bus_max_entries,
            ttl_s=self.settings.bus_ttl_s,
        )
        owned = OwnedRoom(
            BusPublisher(
                writer,
                max_queue=self.settings.bus_queue_entries,
                token=lambda: owned.lease.token if owned.lease is not None else "",
                on_fenced=lambda: self._lost(space_id),
            ),
            lease=lease,
        )
        self.owned[space_id] = owned
        sealed = self._sealed.pop(space_id, None)
        if sealed is not None:
            # the segment the dead owner was building, ended by this node with
            # the parts the bus carried: other followers end theirs the same way
            owned.publisher.offer(sealed)
        program = room.program

        def tap(message: Message) -> None:
            if not owned.history_set and isinstance(message, EpochStart):
                window = program.window
                if window is not None:
                    owned.publisher.set_history(
                        [r for r in window.history if r.msn < message.first_msn]
                    )
                owned.history_set = True
            owned.publisher.offer(message)

        program.tap = tap
        owned.publisher.start()

    async def detach(self, space_id: str, *, release: bool) -> None:
        """After the room stopped here: flush what is queued, let the lease go."""
        owned = self.owned.pop(space_id, None)
        if owned is None:
            return
        if not owned.publisher.fenced:
            await owned.publisher.flush(2.0)
        await owned.publisher.stop()
        if release and owned.lease is not None and not owned.lost:
            with contextlib.suppress(Exception):
                await self.leases.release(owned.lease)

    def _lost(self, space_id: str) -> None:
        owned = self.owned.get(space_id)
        if owned is not None:
            owned.lost = True
        log.warning("room %s: another node holds its lease; stopping it here", space_id)

    def _owned_rooms(self) -> list[tuple[str, str, Any]]:
        """(space id, lease token, room) of the rooms running here, for the seats."""
        out = []
        for space_id, owned in list(self.owned.items()):
            room = self.rooms.get(space_id) if self.rooms is not None else None
            if room is not None and owned.lease is not None and not owned.lost:
                out.append((space_id, owned.lease.token, room))
        return out

    def seats_changed(self) -> None:
        """A seat of a room running here changed (mute, unmute, demote,
        block): publish the seats now."""
        self.seats.changed()

    async def _last_mutes(self, space_id: str) -> list[str]:
        """Whom the room's last owner had muted (its published seats outlive
        it, ``bus_ttl_s``): a room starting here mutes them from the start
        (``attach``), so a takeover unmutes nobody. Redis away: none (logged)."""
        try:
            return muted_ids((await self.seats.board.read(space_id)).raw)
        except Exception as exc:  # the client's errors: Redis away or slow
            metrics.BUS_FAILURES.labels(op="seats-restore").inc()
            log.warning("room %s: cannot read who was muted (%s); nobody is", space_id, exc)
            return []

    # -- follower side --------------------------------------------------------------------

    async def seat_view(self, space_id: str) -> SeatView:
        """What state.json shows of the seats of a live room run elsewhere
        (``live/seats.py``); after a failed read, Redis is not asked again for
        ``redis_backoff_ms`` (the view says it cannot tell meanwhile)."""
        now = time.monotonic()
        read = None
        if now >= self._seats_down_until:
            try:
                read = await self.seats.board.read(space_id)
            except Exception:  # the client's errors: Redis away or slow
                metrics.BUS_FAILURES.labels(op="seats-read").inc()
                self._seats_down_until = now + self.settings.redis_backoff_ms / 1000
        view = follower_view(read, self.settings.seat_status_stale_ms)
        metrics.SEATS_SHOWN.labels(status=view.status).inc()
        return view

    def listener_source(self, space_id: str) -> FollowedRoom | None:
        """The followed room for a listener request (started on first ask)."""
        followed = self.followed.get(space_id)
        if followed is not None:
            return followed if followed.window is not None else None
        if space_id in self.owned or space_id in self._claiming or not self.is_live(space_id):
            return None
        self.follow(space_id)
        return None

    def follow(self, space_id: str) -> FollowedRoom:
        followed = self.followed.get(space_id)
        if followed is None:
            followed = FollowedRoom(space_id, self.settings, self.mux.reader(space_id))
            self.followed[space_id] = followed
            followed.start()
            log.info("following room %s on the bus", space_id)
        return followed

    async def unfollow(self, space_id: str, *, seal: bool = False) -> FollowedRoom | None:
        followed = self.followed.pop(space_id, None)
        if followed is not None:
            sealed = await followed.stop(seal=seal)
            if isinstance(followed.reader, MuxReader):
                self.mux.remove(followed.reader)
            if sealed is not None:
                self._sealed[space_id] = sealed
        return followed

    def followed_health(self, now_s: float | None = None) -> list[dict[str, Any]]:
        """Every room this node follows, as ``FollowedRoom.health`` (also sets
        the followers' gauges)."""
        now_s = time.monotonic() if now_s is None else now_s
        part_s = self.settings.part_ms / 1000
        behind_s = self.settings.follower_behind_ms / 1000
        rooms = [f.health(now_s, part_s, behind_s) for f in list(self.followed.values())]
        metrics.FOLLOWED_ROOMS_BEHIND.set(sum(1 for r in rooms if r["behind"]))
        lags = [r["lag_ms"] for r in rooms if r["lag_ms"] is not None]
        metrics.FOLLOWER_LAG_MAX.set(max(lags) / 1000 if lags else 0.0)
        return rooms

    # -- leases ----------------------------------------------------------------------------

    async def claim(self, space_id: str) -> Room | None:
        """Run the room here if this node gets its lease; else follow it."""
        assert self.rooms is not None
        if self.rooms.get(space_id) is not None:
            return self.rooms.get(space_id)
        if space_id in self._claiming:
            return None
        self._claiming.add(space_id)
        try:
            try:
                lease = await self.leases.acquire(space_id)
            except Exception as exc:
                metrics.BUS_FAILURES.labels(op="lease").inc()
                log.warning("room %s: cannot reach Redis for its lease (%s)", space_id, exc)
                return None
            if lease is None:
                self.follow(space_id)
                return None
            followed = await self.unfollow(space_id, seal=True)
            if followed is not None and not followed.recording_intact:
                log.warning(
                    "room %s: this node's copy of the recording has a hole; resuming anyway",
                    space_id,
                )
            self._pending_leases[space_id] = lease
            self._pending_mutes[space_id] = await self._last_mutes(space_id)
            try:
                room = await self.rooms.start_local(space_id)
            except Exception:
                self._pending_leases.pop(space_id, None)
                self._pending_mutes.pop(space_id, None)
                self._sealed.pop(space_id, None)
                with contextlib.suppress(Exception):
                    await self.leases.release(lease)
                raise
            self.seats.changed()
            if followed is not None:
                metrics.ROOM_TAKEOVERS.inc()
                log.warning(
                    "room %s taken over by %s (lease %s)", space_id, self.node_id, lease.token
                )
            return room
        finally:
            self._claiming.discard(space_id)

    async def wait_synced(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until every followed room has a window:
        a node joining in the middle of a room answers its first listener
        requests with the owner's window, not from its (empty) disk."""
        waits = [f.follower.synced.wait() for f in self.followed.values()]
        if not waits:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout_s)
        except TimeoutError:
            log.warning("not every followed room was in step within %.1f s", timeout_s)
            return False
        return True

    def start_supervisor(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name="townhall-room-leases")
        self.seats.start()

    async def _supervise(self) -> None:
        period_s = self.settings.room_lease_renew_ms / 1000
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.BUS_FAILURES.labels(op="supervise").inc()
                log.exception("room lease round failed; next round in %.1f s", period_s)
            await asyncio.sleep(period_s)

    async def _tick(self) -> None:
        assert self.rooms is not None
        self.followed_health()  # the gauges, between two scrapes
        live = set(await self.live_ids())
        for space_id, owned in list(self.owned.items()):
            if space_id not in live:
                log.info("room %s: the space ended elsewhere; ending it here", space_id)
                await self.rooms.end(space_id)
                continue
            if owned.lost or owned.lease is None or not await self._renew(owned):
                await self.rooms.suspend(space_id)
                self.follow(space_id)
        for space_id, followed in list(self.followed.items()):
            if space_id in live:
                self._ended_at.pop(space_id, None)
            elif followed.ended or self._end_waited(space_id):
                # the copy has the owner's end (its recording copy is final), or
                # the owner never sent it: it ended the room where it ran, or died
                self._ended_at.pop(space_id, None)
                await self.unfollow(space_id)
        period_ms = self.settings.room_lease_renew_ms
        for space_id in live:
            if space_id in self.owned or space_id in self._claiming:
                continue
            holder, ttl_ms = await self._holder(space_id)
            if holder is None:
                await self.claim(space_id)
                continue
            self.follow(space_id)
            if ttl_ms < period_ms and space_id not in self._takeovers:
                # the owner stopped renewing: claim the room the moment the
                # lease lapses, not up to a round later
                task = asyncio.create_task(
                    self._claim_at(space_id, ttl_ms), name=f"townhall-takeover-{space_id}"
                )
                self._takeovers[space_id] = task
                task.add_done_callback(functools.partial(self._takeover_done, space_id))

    def _end_waited(self, space_id: str) -> bool:
        """Whether a followed room whose space ended (on any node) waited long
        enough for its owner's end: the owner ends it at its next lease round."""
        now = time.monotonic()
        since = self._ended_at.setdefault(space_id, now)
        wait_s = (self.settings.room_lease_ttl_ms + 2 * self.settings.room_lease_renew_ms) / 1000
        return now - since >= wait_s

    def _takeover_done(self, space_id: str, _task: asyncio.Task[None]) -> None:
        self._takeovers.pop(space_id, None)

    async def _claim_at(self, space_id: str, ttl_ms: int) -> None:
        await asyncio.sleep(ttl_ms / 1000 + _TAKEOVER_MARGIN_S)
        try:
            if space_id not in self.owned and space_id not in self._claiming:
                await self.claim(space_id)
        except Exception:
            metrics.BUS_FAILURES.labels(op="takeover").inc()
            log.exception("room %s: taking it over failed; next round retries", space_id)

    async def _renew(self, owned: OwnedRoom) -> bool:
        assert owned.lease is not None
        try:
            if await self.leases.renew(owned.lease):
                return True
            again = await self.leases.acquire(owned.lease.space_id)  # lapsed, nobody took it
        except Exception as exc:
            metrics.BUS_FAILURES.labels(op="lease").inc()
            log.warning("room %s: lease renewal failed (%s)", owned.lease.space_id, exc)
            return True  # Redis away: the bus refuses our writes if someone took it meanwhile
        if again is None:
            return False
        owned.lease = again
        return True

    async def _holder(self, space_id: str) -> tuple[str | None, int]:
        try:
            return await self.leases.holder_ttl(space_id)
        except Exception:
            metrics.BUS_FAILURES.labels(op="lease").inc()
            return "unknown", self.settings.room_lease_ttl_ms

    async def close(self) -> None:
        for task in list(self._takeovers.values()):
            task.cancel()
        await self.seats.stop()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        for space_id in list(self.followed):
            await self.unfollow(space_id)
        await self.mux.close()
        await self.blocking.aclose()
