"""The media process: the rooms of this server (stage, mixer, the 20 ms
clock, program, recorder) on an event loop of their own, in a process of
their own, so no HTTP request can delay the clock (issue 11).

Started by :class:`townhall.live.mediarooms.MediaRooms` (the HTTP process)
as ``python -m townhall.live.mediaproc FD`` with the settings in the
environment; it talks over the inherited socket ``FD`` (``live/mediawire.py``):

- calls: ``start``, ``end``, ``suspend`` a room, ``offer`` (a speaker's SDP
  exchange, proxied), ``set_muted``, ``disconnect``, ``set_captions``, ``snapshot`` (a room's
  log for a copy that fell behind), ``metrics`` (this process's media
  metrics as Prometheus text), ``statistics``, ``close``;
- out: ``ready`` once it serves (calls made before wait longer), every call the program makes on its live window, as numbered entries
  (the HTTP process keeps a copy of the window with the follower's
  :class:`~townhall.origin.follower.FollowerState`, as a follower node does),
  every ADTS frame of its progressive stream (live.aac), and every
  ``media_status_interval_ms`` the speakers, health and new caption lines
  of each room (captions run here, beside the program, as they do in-process).

Outgoing frames wait in a bounded queue (``media_channel_queue_frames``): if
the HTTP process stops reading, frames are dropped and counted, never the
clock slowed; the copy then sees a gap and asks for a snapshot. The process
ends when the channel closes (its parent is gone): rooms are suspended, so
their recordings are resumable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import gc
import logging
import os
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, generate_latest

from townhall import memdebug, metrics
from townhall.config import Settings
from townhall.live.mediawire import RoomStatus, WindowStart, frame, read_frame
from townhall.live.registry import RoomRegistry
from townhall.live.room import Room
from townhall.origin.bus import Entry, EpochStart, Message, SegmentEnded, Snapshot

log = logging.getLogger("townhall.media")

SETTINGS_ENV = "TOWNHALL_MEDIA_SETTINGS_JSON"

# the families this process owns in /metrics (the HTTP process shows ours)
MEDIA_METRICS = (
    metrics.MIXER_CLOCK_LATE,
    metrics.CLOCK_SKIPPED_FRAMES,
    metrics.JITTER_DROPPED_FRAMES,
    metrics.JITTER_UNDERRUNS,
    metrics.OFFERS,
    metrics.PROGRAM_FAILURES,
    metrics.PROGRAM_FRAMES_DROPPED,
    metrics.PROGRAM_GIVEN_UP,
    metrics.PROGRAM_PARTS,
    metrics.PROGRAM_RESTARTS,
    metrics.RECORDING_BACKLOG_BYTES,
    metrics.RECORDING_SEGMENTS_MISSING,
    metrics.RECORDING_WRITE_FAILURES,
    metrics.RETURN_DROPPED_FRAMES,
    metrics.SPEAKERS_CONNECTED,
    metrics.TASK_FAILURES,
    metrics.CAPTIONS_DROPPED_SECONDS,
    metrics.CAPTIONS_FAILURES,
    metrics.CAPTIONS_LINES,
)


class RoomLog:
    """A room's numbered window calls, the last ``max_entries`` kept, with
    the current epoch's start and every segment record (what a snapshot of
    the segment bus holds)."""

    def __init__(self, max_entries: int) -> None:
        self.seq = 0
        self.meta: EpochStart | None = None
        self.records: dict[int, Any] = {}
        self.entries: collections.deque[Entry] = collections.deque(maxlen=max_entries)

    def add(self, message: Message) -> Entry:
        self.seq += 1
        entry = Entry(self.seq, message)
        if isinstance(message, EpochStart):
            self.meta = message
        elif isinstance(message, SegmentEnded):
            self.records[message.record.msn] = message.record
        self.entries.append(entry)
        return entry

    def snapshot(self) -> Snapshot:
        records = tuple(r for _, r in sorted(self.records.items()))
        return Snapshot(self.meta, records, tuple(self.entries), self.seq)


class MediaServer:
    """The media process's side of the channel (see the module docstring)."""

    def __init__(self, settings: Settings, writer: asyncio.StreamWriter) -> None:
        self.settings = settings
        self.rooms = RoomRegistry(settings)
        self.rooms.on_room = self._attach
        self.logs: dict[str, RoomLog] = {}
        self._writer = writer
        self._out: asyncio.Queue[bytes] = asyncio.Queue(settings.media_channel_queue_frames)
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped_frames = 0
        self._lines_sent: dict[str, float] = {}  # start of the last caption line told

    def _attach(self, room: Room) -> None:
        room_log = self.logs[room.space_id] = RoomLog(self.settings.media_log_entries)
        space_id = room.space_id

        def tap(message: Message) -> None:
            self.send(("entry", space_id, room_log.add(message)))

        room.program.tap = tap
        room.program.adts_tap = lambda adts_frame: self.send(("aac", space_id, adts_frame))

    def send(self, item: tuple[Any, ...]) -> None:
        """Queue a frame for the HTTP process; never blocks (drops, counted)."""
        try:
            self._out.put_nowait(frame(item))
        except asyncio.QueueFull:
            self.dropped_frames += 1
            metrics.MEDIA_CHANNEL_DROPPED.inc()

    async def run(self, reader: asyncio.StreamReader) -> None:
        self.send(("ready",))
        self._spawn(self._write_main(), "media-write")
        self._spawn(self._status_main(), "media-status")
        try:
            while True:
                try:
                    item = await read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the HTTP process is gone
                if item[0] == "call":
                    _, call_id, method, args = item
                    self._spawn(self._call(call_id, method, args), f"media-call-{method}")
        finally:
            await self.rooms.close()
            for task in list(self._tasks):
                task.cancel()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write_main(self) -> None:
        while True:
            data = await self._out.get()
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (
                ConnectionError,
                RuntimeError,
            ):  # the transport closed: the HTTP process is gone
                return

    async def _status_main(self) -> None:
        interval_s = self.settings.media_status_interval_ms / 1000
        while True:
            await asyncio.sleep(interval_s)
            self._send_status(self.rooms.space_ids())

    def _send_status(self, space_ids: Iterable[str]) -> None:
        statuses = {}
        for space_id in space_ids:
            room = self.rooms.get(space_id)
            if room is not None:
                track = room.captions.track
                after = self._lines_sent.get(space_id, -1.0)
                lines = tuple(ln for ln in track.lines if ln.start_s > after)
                if lines:
                    self._lines_sent[space_id] = lines[-1].start_s
                statuses[space_id] = RoomStatus(
                    room.stage.speaker_status(),
                    room.program.health(),
                    room.program.ended,
                    room.captions.status(),
                    track.done_s,
                    lines,
                    track.open,
                )
        self.send(("status", statuses))

    async def _call(self, call_id: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            value = await self._dispatch(method, args)
            reply: tuple[Any, ...] = ("reply", call_id, True, value)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call's top level: the caller gets the error
            if not hasattr(exc, "status"):
                log.exception("media process: %s failed", method)
            reply = ("reply", call_id, False, _portable(exc))
        self.send(reply)

    async def _dispatch(self, method: str, args: tuple[Any, ...]) -> Any:
        if method == "start":
            started = await self.rooms.start_local(args[0])
            for account_id in args[1] if len(args) > 1 else ():
                # muted as the room's last owner had them (live/scaleout.py), before
                # any offer: set_muted does not wait, no call runs in between
                await started.stage.set_muted(account_id, True)
            window = started.program.window
            assert window is not None
            # its first status before the reply (frames keep their order), so
            # state.json tells e.g. a captions refusal from the start
            self._send_status((args[0],))
            return WindowStart(window.epoch, window.open_msn, tuple(window.history))
        if method == "end":
            await self.rooms.end(args[0])
            self.logs.pop(args[0], None)
            return None
        if method == "suspend":
            await self.rooms.suspend(args[0])
            self.logs.pop(args[0], None)
            return None
        if method == "metrics":
            names = {family.name for m in MEDIA_METRICS for family in m.describe()}
            return metric_families(generate_latest(REGISTRY).decode(), names)
        if method == "close":
            await self.rooms.close()
            return None
        space_id = args[0]
        room = self.rooms.get(space_id)
        if method == "snapshot":
            room_log = self.logs.get(space_id)
            return room_log.snapshot() if room_log is not None else None
        if room is None:
            from townhall.errors import ServiceUnavailable

            raise ServiceUnavailable("This space is not live; speakers can connect once it starts.")
        if method == "offer":
            return await room.stage.accept_offer(*args[1:])
        if method == "set_muted":
            await room.stage.set_muted(*args[1:])
            return None
        if method == "set_captions":
            await room.captions.set_enabled(args[1])
            return room.captions.status()
        if method == "disconnect":
            await room.stage.disconnect(args[1])
            return None
        if method == "statistics":
            return {
                **room.program.statistics(),
                "ticks": room.stage.ticks,
                "channel_dropped_frames": self.dropped_frames,
            }
        raise ValueError(f"unknown media call {method!r}")


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a RuntimeError saying what it was."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def metric_families(text: str, names: set[str]) -> str:
    """The blocks of the Prometheus text ``text`` whose family is in ``names``."""
    out: list[str] = []
    keep = False
    for line in text.splitlines(keepends=True):
        if line.startswith("# HELP "):
            name = line[7:].split(" ", 1)[0]
            keep = metrics.family_of(name) in names
        if keep:
            out.append(line)
    return "".join(out)


def merge_metrics(own: str, media: str) -> str:
    """Prometheus text ``own`` with each family that ``media`` has taken from ``media``."""
    theirs = {name: "".join(lines) for name, lines in metrics.text_blocks(media).items()}
    out = [theirs.pop(name, "".join(lines)) for name, lines in metrics.text_blocks(own).items()]
    return "".join(out + list(theirs.values()))


def prioritise(settings: Settings) -> None:
    """Pay the one-time costs before any clock ticks (the first WebRTC
    certificate initialises OpenSSL: ~25 ms that would land on the first
    go-live), keep what start-up built out of the collector's full passes (as
    the HTTP process does) and apply ``media_process_nice``: the clock first."""
    from aiortc import RTCCertificate

    from townhall.media.encoder import AacEncoder

    RTCCertificate.generateCertificate()
    AacEncoder(sample_rate_hz=settings.sample_rate_hz, bitrate_bps=settings.program_bitrate_bps)
    gc.collect()
    gc.freeze()
    if settings.media_process_rt_priority:
        try:  # what audio servers ask rtkit for: the run queue never makes the clock wait
            param = os.sched_param(settings.media_process_rt_priority)
            # reset on fork: a child (the captions recognizer) or a worker
            # thread must not inherit it and take a core at real-time priority
            os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, param)
        except OSError as exc:
            log.warning(
                "media process: could not use real-time priority %d (%s); using nice instead",
                settings.media_process_rt_priority,
                exc.strerror,
            )
    if settings.media_process_nice:
        try:
            os.nice(settings.media_process_nice)
        except OSError as exc:  # no CAP_SYS_NICE for a negative value: say so, go on
            log.warning(
                "media process: could not apply media_process_nice %d (%s); running at nice %d",
                settings.media_process_nice,
                exc.strerror,
                os.nice(0),
            )


LOCK_FILE = "media-process.lock"
LOCK_WAIT_S = 30.0


def _open_lock(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")


async def hold_data_dir(settings: Settings) -> Any:
    """One media process per data directory: wait (bounded) for the one a
    crashed server left to finish suspending its rooms before resuming them."""
    handle = _open_lock(settings.data_dir / LOCK_FILE)
    deadline = asyncio.get_running_loop().time() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if asyncio.get_running_loop().time() > deadline:
                log.warning("media process: another still holds %s; going on", LOCK_FILE)
                return handle
            await asyncio.sleep(0.05)


async def serve(sock: socket.socket, settings: Settings) -> None:
    prioritise(settings)
    lock = await hold_data_dir(settings)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    server = MediaServer(settings, writer)
    try:
        await server.run(reader)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        lock.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s[media]: %(message)s",
    )
    memdebug.install(settings.memory_report_on_sigusr2, settings.memory_trace_frames)
    sock = socket.socket(fileno=int(args[0]))
    loop = settings.workers_loop
    if loop in ("auto", "uvloop"):
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.run(serve(sock, settings))
            return
    asyncio.run(serve(sock, settings))


if __name__ == "__main__":
    main()
