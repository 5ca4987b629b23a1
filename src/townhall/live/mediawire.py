"""The local channel between the HTTP process and the media process: one
stream socket (a socketpair), frames of a 4-byte big-endian length and a
pickle (both ends are this same program; nothing else can write to it).

Frames, as tuples:

- ``("call", call_id, method, args)``: HTTP process -> media process;
- ``("ready",)``: the media process serves (sent first);
- ``("reply", call_id, ok, value)``: the answer (``value`` is the exception
  when not ``ok``; townhall's errors keep their status and sentence);
- ``("entry", space_id, Entry)``: a room's next window call, numbered per
  room from 1 as on the segment bus (``origin/bus.py``);
- ``("aac", space_id, bytes)``: one ADTS frame of the room's live.aac;
- ``("status", {space_id: RoomStatus})``: speakers and program health, every
  ``media_status_interval_ms``.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from townhall.captions.track import Line
from townhall.errors import TownhallError
from townhall.live.program import ProgramHealth
from townhall.live.tracks import SpeakerStatus
from townhall.store.recordings import SegmentRecord

_LENGTH = struct.Struct("!I")
MAX_FRAME_BYTES = 16 * 1024 * 1024


class ChannelError(TownhallError):
    """The media process is gone or sent something unreadable."""

    status = 503
    title = "Service Unavailable"
    type_slug = "unavailable"


@dataclass(frozen=True, slots=True)
class RoomStatus:
    """What the HTTP process shows of a room between two status frames."""

    speakers: dict[str, SpeakerStatus]
    health: ProgramHealth
    ended: bool
    captions: tuple[str, str]  # (status, sentence), as LiveCaptions.status()
    captions_done_s: float
    caption_lines: tuple[Line, ...]  # new since the previous status of this room
    caption_open: Line | None = None  # the line being built (streaming captions), shown live


@dataclass(frozen=True, slots=True)
class WindowStart:
    """What ``start`` answers: the room's window as the program opened it
    (the HTTP process opens its copy the same way, history included)."""

    epoch: int
    first_msn: int
    history: tuple[SegmentRecord, ...]


def frame(item: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_FRAME_BYTES:
        raise ChannelError(f"A media channel frame of {len(data)} bytes is over the limit.")
    return _LENGTH.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    """The next frame; ``asyncio.IncompleteReadError`` at the end of the stream."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME_BYTES:
        raise ChannelError(f"A media channel frame announces {length} bytes, over the limit.")
    item = pickle.loads(await reader.readexactly(length))
    if not isinstance(item, tuple) or not item:
        raise ChannelError("A media channel frame is not a tuple.")
    return item
