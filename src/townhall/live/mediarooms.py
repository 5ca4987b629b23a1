"""The HTTP process's side of the media process (``media_process`` on): it
stands where :class:`~townhall.live.registry.RoomRegistry` stands, with the
same calls, while the rooms run in ``live/mediaproc.py``.

Each live room here is a :class:`RemoteRoom`: a copy of its live window kept
by the follower's :class:`~townhall.origin.follower.FollowerState` from the
numbered window calls the media process sends (a gap, after the media
process had to drop frames, restores the copy from a snapshot), the last
speakers and health the media process told, and calls for the rest (a
speaker's WebRTC offer, mute, disconnect). The listener plane answers from
the copy exactly as from a program running here.

If the media process ends, every copy closes (not ended: the talk resumes in
a new discontinuity when the room starts again), /healthz says so, pending
calls answer 503, and the next ``start`` spawns a new media process.

Scaled out (``bus_enabled``), this process keeps the node's
:class:`~townhall.live.scaleout.Scaleout` as the in-process registry does:
the lease, the fencing token and the bus publisher stay here, and the
publisher is fed with the copy's window calls, in order (``program.tap``,
called for every entry the copy applied, and for the entries a snapshot
filled in after a gap). A media process therefore never writes to Redis: one
left behind by a killed server cannot publish past its lease, and takeover,
sealing and resuming are the registry's code path. If the media process
ends, its rooms let their leases go (this node, or another, claims them in
the next lease round and resumes them in a new discontinuity).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from townhall import metrics
from townhall.captions.live import HOST_OFF_FILE
from townhall.captions.track import CaptionTrack
from townhall.captions.worker import OFF, RUNNING, STARTING
from townhall.config import Settings
from townhall.errors import ServiceUnavailable
from townhall.live.mediaproc import LOCK_WAIT_S, SETTINGS_ENV, merge_metrics
from townhall.live.mediawire import ChannelError, RoomStatus, WindowStart, frame, read_frame
from townhall.live.program import FAILED, OK, Program, ProgramHealth
from townhall.live.seats import AWAY_MUTED, with_mute
from townhall.live.tracks import SpeakerStatus
from townhall.media.cmaf import part_frames
from townhall.media.encoder import AAC_FRAME_SAMPLES
from townhall.origin.bus import Entry, EpochStart, Message
from townhall.origin.entry_log import EntryLog, NoLog
from townhall.origin.fanout import ProgressiveHub, Spreader
from townhall.origin.follower import FollowerState, Gap, window_open_parts
from townhall.origin.window import LiveWindow
from townhall.store.recordings import RecordingStore

if TYPE_CHECKING:
    from townhall.live.scaleout import Scaleout

log = logging.getLogger("townhall.media")

RESTART_RESET_S = 60.0  # a media process that ran this long resets the restart count
RESTART_MAX_DELAY_S = 8.0
# what a call may wait on top of media_call_timeout_s while the media process
# starts: its imports (seconds on a busy machine) and its data-directory lock
STARTUP_ALLOWANCE_S = LOCK_WAIT_S + 30.0


class RemoteStage:
    """The stage of a room in the media process: speakers as last told, calls for the rest."""

    def __init__(self, rooms: MediaRooms, space_id: str) -> None:
        self._rooms = rooms
        self.space_id = space_id
        self.speakers: dict[str, SpeakerStatus] = {}
        self.preset: tuple[str, ...] = ()

    def speaker_status(self) -> dict[str, SpeakerStatus]:
        return dict(self.speakers)

    def preset_muted(self, account_ids: Iterable[str]) -> None:
        """Before the start call: these speakers are muted from the start (the
        media process applies them before it answers it), shown so at once."""
        self.preset = tuple(account_ids)
        for account_id in self.preset:
            self.speakers[account_id] = AWAY_MUTED

    async def accept_offer(
        self, account_id: str, role: str, sdp: str, type_: str
    ) -> tuple[str, str]:
        answer = await self._rooms.call("offer", self.space_id, account_id, role, sdp, type_)
        return str(answer[0]), str(answer[1])

    async def set_muted(self, account_id: str, muted: bool) -> None:
        await self._rooms.call("set_muted", self.space_id, account_id, muted)
        # as the media process's next status will say: the seats published
        # right after a mute show it without waiting for that status
        seat = with_mute(self.speakers.get(account_id), muted)
        if seat is not None:
            self.speakers[account_id] = seat

    async def disconnect(self, account_id: str) -> None:
        await self._rooms.call("disconnect", self.space_id, account_id)


class CopyState(FollowerState):
    """The follower's state, with the window opened at ``start`` (as the
    program opened its own: history included, listeners may wait on it before
    the first part): the epoch's start then fills in its init segment instead
    of opening another window."""

    def open(self, window: LiveWindow) -> None:
        self.window = window

    def _start_window(self, meta: EpochStart, first_msn: int) -> None:
        window = self.window
        if (
            window is not None
            and not window.closed
            and window.init_segment is None
            and window.epoch == meta.epoch
            and window.open_msn == first_msn
            and window_open_parts(window) == 0
        ):
            window.init_segment = meta.init_segment
            return
        super()._start_window(meta, first_msn)


class RemoteProgram:
    """What the listener plane and state.json read of a room's program."""

    def __init__(self, space_id: str, settings: Settings) -> None:
        self.space_id = space_id
        self.recording = RecordingStore(settings.recordings_dir, space_id)
        self.settings = settings
        self.spreader = Spreader(settings.listener_wake_batch)
        self.state = CopyState(
            window_segments=settings.window_segments,
            spreader=self.spreader,
            on_close=lambda ended: self.progressive.close(),
        )
        self.progressive = ProgressiveHub(
            max_lag_ms=settings.progressive_max_lag_ms,
            burst_ms=settings.progressive_burst_ms,
            frame_ms=AAC_FRAME_SAMPLES * 1000 / settings.sample_rate_hz,
            bitrate_bps=settings.program_bitrate_bps,
            batch_ms=settings.progressive_batch_ms,
            spreader=self.spreader,
        )
        self.status: RoomStatus | None = None
        self.failure = ""
        self.tap: Callable[[Message], None] | None = None
        """Scaled out: each window call the copy applied, in order (the bus publisher)."""

    @property
    def window(self) -> LiveWindow | None:
        return self.state.window

    def open(self, start: WindowStart) -> None:
        """Open the copy's window as the program opened its own."""
        s = self.settings
        self.state.open(
            LiveWindow(
                epoch=start.epoch,
                first_msn=start.first_msn,
                history=list(start.history),
                sample_rate_hz=s.sample_rate_hz,
                part_duration_samples=part_frames(s.part_ms, s.sample_rate_hz) * AAC_FRAME_SAMPLES,
                segment_parts=s.segment_parts,
                window_segments=s.window_segments,
                playlist_segments=s.live_playlist_window_segments,
                spreader=self.spreader,
            )
        )

    @property
    def ended(self) -> bool:
        window = self.state.window
        return window is not None and window.ended

    def health(self) -> ProgramHealth:
        if self.failure:
            return ProgramHealth(FAILED, self.failure, 0, 0, None)
        if self.status is None:
            return ProgramHealth(OK, "", 0, 0, None)
        return self.status.health


class RemoteCaptions:
    """The captions of a room in the media process: the lines and status it
    told (at most ``media_status_interval_ms`` old), the host's switch as a call."""

    def __init__(self, rooms: MediaRooms, space_id: str, directory: Path) -> None:
        self._rooms = rooms
        self.space_id = space_id
        self.track = CaptionTrack()
        self.host_enabled = not (directory / HOST_OFF_FILE).exists()
        self._status = (OFF, "Captions are not enabled on this server.")

    def status(self) -> tuple[str, str]:
        return self._status

    @property
    def active(self) -> bool:
        return self.host_enabled and self._status[0] in (STARTING, RUNNING)

    async def set_enabled(self, enabled: bool) -> None:
        status = await self._rooms.call("set_captions", self.space_id, enabled)
        self.host_enabled = enabled
        self._status = (str(status[0]), str(status[1]))

    def update(self, status: RoomStatus) -> None:
        self._status = status.captions
        for line in status.caption_lines:
            self.track.add(line)
        self.track.set_open(status.caption_open)
        self.track.advance(status.captions_done_s)


class RemoteRoom:
    """A room running in the media process, as the HTTP process sees it."""

    def __init__(self, rooms: MediaRooms, space_id: str, settings: Settings) -> None:
        self.space_id = space_id
        self.stage = RemoteStage(rooms, space_id)
        self.program = RemoteProgram(space_id, settings)
        self.captions = RemoteCaptions(rooms, space_id, self.program.recording.dir)
        self._pending: list[Entry] | None = None  # entries held while a snapshot is read

    def apply(self, entry: Entry, resync: Any) -> None:
        if self._pending is not None:
            self._pending.append(entry)
            return
        try:
            self.program.state.apply(entry)
        except Gap as exc:
            log.info("media copy of %s resyncs: %s", self.space_id, exc)
            self._pending = [entry]
            resync(self)
            return
        self._tap((entry,))

    def _tap(self, entries: Any) -> None:
        tap = self.program.tap
        if tap is not None:
            for entry in entries:
                tap(entry.message)

    async def restore(self, rooms: MediaRooms) -> None:
        try:
            snapshot = await rooms.call("snapshot", self.space_id)
            if snapshot is not None:
                last_seq = self.program.state.last_seq
                self.program.state.restore(snapshot)
                metrics.MEDIA_RESYNCS.inc()
                # the bus gets the calls the copy missed, as far as the log still has them
                self._tap(e for e in snapshot.entries if e.seq > last_seq)
            pending, self._pending = self._pending or [], None
            for entry in pending:
                if entry.seq > self.program.state.last_seq:
                    self.apply(entry, rooms.resync)
        except Exception:  # a resync task's top level: log, count, leave the copy as it is
            self._pending = None
            log.exception("media copy of %s could not resync", self.space_id)
            metrics.TASK_FAILURES.labels(task="media-resync").inc()


class MediaRooms:
    """Starts and ends rooms in the media process; ``get`` is a dict lookup."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.scaleout: Scaleout | None = None
        """Set when ``bus_enabled``: leases decide where a room runs (as in RoomRegistry)."""
        self._rooms: dict[str, RemoteRoom] = {}
        self._lock = asyncio.Lock()
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._restarts = 0  # restarts in a row (``media_process_restarts``)
        self._started_at = 0.0
        self._ready = asyncio.Event()  # the running media process said it is serving
        self.local_log: EntryLog = NoLog(1)  # HTTP workers without Redis (server/local_bus.py)

    # -- the registry's calls ------------------------------------------------------

    def get(self, space_id: str) -> RemoteRoom | None:
        return self._rooms.get(space_id)

    def listener_source(self, space_id: str) -> Any:
        """The copy of a room running here, else (scaled out) the followed room's copy, or None."""
        room = self._rooms.get(space_id)
        if room is not None:
            return room.program
        if self.scaleout is not None:
            return self.scaleout.listener_source(space_id)
        return None

    def __len__(self) -> int:
        return len(self._rooms)

    def followed(self) -> list[dict[str, Any]]:
        """Scaled out: the rooms this node follows on the bus (for /healthz)."""
        return self.scaleout.followed_health() if self.scaleout is not None else []

    def space_ids(self) -> list[str]:
        return list(self._rooms)

    def problems(self) -> list[dict[str, str]]:
        return [
            {"space_id": space_id, "problem": problem}
            for space_id, room in self._rooms.items()
            for problem in room.program.health().problems()
        ]

    async def start(self, space_id: str) -> Any:
        """Start the room (a second call returns the same room). Scaled out:
        only if this node gets the room's lease (else None: it follows)."""
        if self.scaleout is not None:
            return await self.scaleout.claim(space_id)
        return await self.start_local(space_id)

    async def start_local(self, space_id: str) -> RemoteRoom:
        async with self._lock:
            room = self._rooms.get(space_id)
            if room is not None and not room.program.failure:
                return room
            await self.open()
            self.local_log.drop(space_id)  # a new room numbers its calls from 1 again
            room = RemoteRoom(self, space_id, self.settings)
            if self.scaleout is not None:
                self.scaleout.attach(room)  # before the call: the bus gets every entry
            self._rooms[space_id] = room  # before the call: its first entries may come first
            try:
                room.program.open(await self.call("start", space_id, room.stage.preset))
            except BaseException:
                self._rooms.pop(space_id, None)
                if self.scaleout is not None:
                    await self.scaleout.detach(space_id, release=True)
                raise
            metrics.SPACES_LIVE.set(len(self._rooms))
            return room

    async def end(self, space_id: str) -> None:
        await self._stop("end", space_id)

    async def suspend(self, space_id: str) -> None:
        await self._stop("suspend", space_id)

    async def _stop(self, method: str, space_id: str) -> None:
        async with self._lock:
            room = self._rooms.get(space_id)
        if room is None:
            return
        if self._alive():
            await self.call(method, space_id)  # the Closed entry reaches the copy first
        elif method == "end":
            # the media process is gone: still make the recording final (ENDLIST)
            await Program(space_id, self.settings).finish()
        async with self._lock:
            self._rooms.pop(space_id, None)
            metrics.SPACES_LIVE.set(len(self._rooms))
        loop = asyncio.get_running_loop()  # the copies read the room's last calls first
        loop.call_later(3.0, self.local_log.drop_if_idle, space_id, self._rooms)
        if self.scaleout is not None:
            await self.scaleout.detach(space_id, release=method == "end")

    async def close(self) -> None:
        """Process shutdown: the media process suspends every room, then exits
        (scaled out: the bus gets their last calls, the leases are let go)."""
        self._closing = True
        if self._alive() and not self._rooms and not self._calls:
            # no room, no call under way: nothing to suspend; it need not
            # finish starting up (seconds on a busy machine) to be told so
            assert self._proc is not None
            self._proc.terminate()
        elif self._alive():
            with contextlib.suppress(Exception):
                await self.call("close")
        if self.scaleout is not None:
            for space_id in list(self._rooms):
                await self.scaleout.detach(space_id, release=True)
            await self.scaleout.close()
        if self._writer is not None:
            self._writer.close()
        if self._proc is not None:
            try:
                await asyncio.wait_for(self._proc.wait(), self.settings.shutdown_drain_s + 5)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        self._rooms.clear()
        metrics.SPACES_LIVE.set(0)

    async def media_metrics(self) -> str:
        """The media process's metric families as Prometheus text ('' if it is not running)."""
        if not self._alive():
            return ""
        with contextlib.suppress(Exception):
            return str(await self.call("metrics"))
        return ""

    async def statistics(self, space_id: str) -> dict[str, int]:
        """The room's program counters and clock ticks in the media process."""
        return dict(await self.call("statistics", space_id))

    def metrics_text(self, own: str, media: str) -> str:
        return merge_metrics(own, media) if media else own

    # -- the channel --------------------------------------------------------------------

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self._writer is not None

    async def open(self) -> None:
        """Spawn the media process if it is not running."""
        if self._alive():
            return
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env[SETTINGS_ENV] = self.settings.model_dump_json()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "townhall.live.mediaproc",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                env=env,
            )
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        self._reader_task = asyncio.create_task(self._read_main(reader), name="media-channel")
        self._started_at = asyncio.get_running_loop().time()
        self._ready = asyncio.Event()
        log.info("media process %d started", self._proc.pid)

    async def call(self, method: str, *args: Any) -> Any:
        """Call the media process; raises what the call raised there, or 503."""
        if not self._alive():
            raise ServiceUnavailable(
                "The media process is not running; try again in a moment.", retry_after_s=1.0
            )
        assert self._writer is not None
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        try:
            self._writer.write(frame(("call", call_id, method, args)))
            await self._writer.drain()
            # a media process still starting (imports, its lock) is not late yet
            starting_s = 0.0 if self._ready.is_set() else STARTUP_ALLOWANCE_S
            async with asyncio.timeout(self.settings.media_call_timeout_s + starting_s):
                return await future
        except TimeoutError:
            raise ServiceUnavailable(
                f"The media process did not answer {method!r} in time; try again.",
                retry_after_s=1.0,
            ) from None
        finally:
            self._calls.pop(call_id, None)

    def resync(self, room: RemoteRoom) -> None:
        task = asyncio.create_task(room.restore(self), name=f"media-resync-{room.space_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_main(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                item = await read_frame(reader)
                kind = item[0]
                if kind == "entry":
                    room = self._rooms.get(item[1])
                    if room is not None:
                        room.apply(item[2], self.resync)
                        self.local_log.add(item[1], item[2])
                elif kind == "aac":
                    room = self._rooms.get(item[1])
                    if room is not None:
                        room.program.progressive.publish(item[2])
                elif kind == "ready":
                    self._ready.set()
                elif kind == "status":
                    for space_id, status in item[1].items():
                        room = self._rooms.get(space_id)
                        if room is not None:
                            room.program.status = status
                            room.stage.speakers = status.speakers
                            room.captions.update(status)
                elif kind == "reply":
                    future = self._calls.get(item[1])
                    if future is not None and not future.done():
                        if item[2]:
                            future.set_result(item[3])
                        else:
                            future.set_exception(item[3])
        except (asyncio.IncompleteReadError, ConnectionError, ChannelError) as exc:
            if not self._closing:
                self._lost(f"{type(exc).__name__}: {exc}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the task's top level: say so where people look
            log.exception("media channel failed")
            self._lost(repr(exc))

    def _lost(self, why: str) -> None:
        metrics.MEDIA_PROCESS_EXITS.inc()
        restart = self._restart_due()
        log.error(
            "the media process is gone (%s); live rooms stop until %s",
            why,
            "it restarts" if restart is not None else "they start again",
        )
        message = "The media process stopped; the live audio is interrupted " + (
            "while it restarts." if restart is not None else "until the host starts again."
        )
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()  # an unreadable channel: no second media process beside it
        for room in self._rooms.values():
            room.program.failure = message
            window = room.program.window
            if window is not None and not window.closed:
                window.close(ended=False)
            room.program.progressive.close()
        for future in self._calls.values():
            if not future.done():
                future.set_exception(ServiceUnavailable(message, retry_after_s=1.0))
        self._writer = None
        if self._closing:
            return
        if self.scaleout is not None:
            self._spawn(self._release_all(), "media-release-leases")
        elif restart is not None:
            self._spawn(self._restart(restart), "media-restart")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _restart_due(self) -> float | None:
        """Seconds until the media process restarts (backing off), or None
        once ``media_process_restarts`` restarts in a row were used up (a
        media process that ran a minute resets the count)."""
        if self._closing or self.scaleout is not None:
            return None
        if asyncio.get_running_loop().time() - self._started_at > RESTART_RESET_S:
            self._restarts = 0
        if self._restarts >= self.settings.media_process_restarts:
            return None
        self._restarts += 1
        return float(min(RESTART_MAX_DELAY_S, 0.25 * 2**self._restarts))

    async def _restart(self, delay_s: float) -> None:
        """One machine: a new media process resumes the rooms the last one
        ran, each in a new discontinuity, from its recording."""
        await asyncio.sleep(delay_s)
        for space_id, room in list(self._rooms.items()):
            if not room.program.failure or self._closing:
                continue
            try:
                await self.start_local(space_id)
                log.warning("room %s resumed in a new media process", space_id)
            except Exception:  # this task's top level: the room stays failed, said in /healthz
                log.exception("room %s could not resume in a new media process", space_id)
                metrics.TASK_FAILURES.labels(task="media-restart").inc()

    async def _release_all(self) -> None:
        """Scaled out, the media process gone: let the rooms' leases go, so
        the next lease round (here or on another node) resumes them."""
        scaleout = self.scaleout
        assert scaleout is not None
        async with self._lock:
            rooms, self._rooms = dict(self._rooms), {}
            metrics.SPACES_LIVE.set(0)
        for space_id in rooms:
            try:
                await scaleout.detach(space_id, release=True)
            except Exception:  # this task's top level: log, count, go on with the next room
                log.exception("room %s: could not let its lease go", space_id)
                metrics.TASK_FAILURES.labels(task="media-release").inc()
