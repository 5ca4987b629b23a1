"""What the simulated player reads, pure (no sockets, no event loop): an HLS
media playlist (plain or Low-Latency) parsed into a frozen ``MediaPlaylist``;
``next_part_after`` says which part a player asks for next, the
``live_start_*`` helpers where it joins. Also the errors a listener counts.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from townhall.errors import TownhallError


class BenchError(TownhallError):
    """A listener could not go on; ``kind`` is the label it is counted under."""

    title = "Benchmark listener error"
    type_slug = "bench-listener"

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class PlaylistError(BenchError):
    """The playlist is not a media playlist a player could follow."""

    def __init__(self, detail: str) -> None:
        super().__init__("playlist", detail)


# -- playlists (pure) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part:
    """One LL-HLS part: ``msn`` is its segment's media sequence number, ``index``
    its place in that segment (0-based)."""

    uri: str
    duration_s: float
    msn: int
    index: int
    independent: bool = False
    byterange: tuple[int, int] | None = None  # (length, offset)


@dataclass(frozen=True, slots=True)
class Segment:
    uri: str
    duration_s: float
    msn: int
    parts: tuple[Part, ...] = ()
    byterange: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class PreloadHint:
    uri: str
    type: str
    byterange_start: int | None = None


@dataclass(frozen=True, slots=True)
class MediaPlaylist:
    """What a player reads from a media playlist. ``trailing_parts`` are the parts
    of the segment still being written (after the last ``#EXTINF``)."""

    target_duration_s: float
    media_sequence: int
    segments: tuple[Segment, ...]
    trailing_parts: tuple[Part, ...] = ()
    part_target_s: float | None = None
    part_hold_back_s: float | None = None
    hold_back_s: float | None = None
    can_block_reload: bool = False
    preload_hint: PreloadHint | None = None
    map_uri: str | None = None
    ended: bool = False
    skipped_segments: int = 0  # a delta update (EXT-X-SKIP) leaves these out
    can_skip_until_s: float | None = None

    @property
    def is_low_latency(self) -> bool:
        return self.part_target_s is not None

    def all_parts(self) -> tuple[Part, ...]:
        """Every part listed, oldest first (segments' parts, then the trailing ones)."""
        parts: list[Part] = []
        for segment in self.segments:
            parts.extend(segment.parts)
        parts.extend(self.trailing_parts)
        return tuple(parts)

    @property
    def next_msn(self) -> int:
        """Media sequence number of the segment after the last complete one."""
        return self.media_sequence + self.skipped_segments + len(self.segments)


_ATTR = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


def parse_attributes(text: str) -> dict[str, str]:
    """An HLS attribute list (``A=1,B="x,y"``) as a dict, quotes removed."""
    return {key: value.strip('"') for key, value in _ATTR.findall(text)}


def _byterange(value: str) -> tuple[int, int] | None:
    # "length@offset"; a range without an offset (continuing the previous one)
    # is not used by the origins we test, so it is refused rather than guessed.
    if "@" not in value:
        raise PlaylistError(f"BYTERANGE {value!r} has no offset; this client needs length@offset.")
    length, offset = value.split("@", 1)
    return int(length), int(offset)


def _number(value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise PlaylistError(f"{what} {value!r} is not a number.") from None


def parse_playlist(text: str) -> MediaPlaylist:
    """Parse an HLS media playlist. Raises ``PlaylistError`` naming the line that
    is wrong, or a master playlist (this client follows media playlists only)."""
    lines = [line.strip() for line in text.splitlines()]
    if not lines or lines[0] != "#EXTM3U":
        raise PlaylistError("The playlist does not start with #EXTM3U.")
    target_s: float | None = None
    sequence = 0
    segments: list[Segment] = []
    pending_parts: list[Part] = []
    pending_duration: float | None = None
    pending_range: tuple[int, int] | None = None
    part_target: float | None = None
    part_hold_back: float | None = None
    hold_back: float | None = None
    can_block = False
    hint: PreloadHint | None = None
    map_uri: str | None = None
    ended = False
    skipped = 0
    can_skip: float | None = None
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        if not line.startswith("#"):
            if pending_duration is None:
                raise PlaylistError(f"Line {number}: URI {line!r} without #EXTINF before it.")
            msn = sequence + skipped + len(segments)
            segments.append(
                Segment(line, pending_duration, msn, tuple(pending_parts), pending_range)
            )
            pending_parts, pending_duration, pending_range = [], None, None
            continue
        tag, _, value = line.partition(":")
        if tag == "#EXT-X-TARGETDURATION":
            target_s = _number(value, "EXT-X-TARGETDURATION")
        elif tag == "#EXT-X-MEDIA-SEQUENCE":
            sequence = int(_number(value, "EXT-X-MEDIA-SEQUENCE"))
        elif tag == "#EXTINF":
            pending_duration = _number(value.split(",", 1)[0], "EXTINF")
        elif tag == "#EXT-X-BYTERANGE":
            pending_range = _byterange(value)
        elif tag == "#EXT-X-PART":
            attrs = parse_attributes(value)
            if "URI" not in attrs or "DURATION" not in attrs:
                raise PlaylistError(f"Line {number}: EXT-X-PART needs URI and DURATION.")
            pending_parts.append(
                Part(
                    attrs["URI"],
                    _number(attrs["DURATION"], "EXT-X-PART DURATION"),
                    sequence + skipped + len(segments),
                    len(pending_parts),
                    attrs.get("INDEPENDENT") == "YES",
                    _byterange(attrs["BYTERANGE"]) if "BYTERANGE" in attrs else None,
                )
            )
        elif tag == "#EXT-X-PART-INF":
            part_target = _number(parse_attributes(value).get("PART-TARGET", ""), "PART-TARGET")
        elif tag == "#EXT-X-SERVER-CONTROL":
            attrs = parse_attributes(value)
            can_block = attrs.get("CAN-BLOCK-RELOAD") == "YES"
            if "PART-HOLD-BACK" in attrs:
                part_hold_back = _number(attrs["PART-HOLD-BACK"], "PART-HOLD-BACK")
            if "HOLD-BACK" in attrs:
                hold_back = _number(attrs["HOLD-BACK"], "HOLD-BACK")
            if "CAN-SKIP-UNTIL" in attrs:
                can_skip = _number(attrs["CAN-SKIP-UNTIL"], "CAN-SKIP-UNTIL")
        elif tag == "#EXT-X-SKIP":
            count = parse_attributes(value).get("SKIPPED-SEGMENTS", "")
            skipped = int(_number(count, "SKIPPED-SEGMENTS"))
        elif tag == "#EXT-X-PRELOAD-HINT":
            attrs = parse_attributes(value)
            start = attrs.get("BYTERANGE-START")
            hint = PreloadHint(
                attrs.get("URI", ""), attrs.get("TYPE", ""), int(start) if start else None
            )
        elif tag == "#EXT-X-MAP":
            map_uri = parse_attributes(value).get("URI")
        elif tag == "#EXT-X-ENDLIST":
            ended = True
        elif tag in ("#EXT-X-STREAM-INF", "#EXT-X-MEDIA"):
            raise PlaylistError("This is a master playlist; point the client at a media playlist.")
    if target_s is None:
        raise PlaylistError("The playlist has no #EXT-X-TARGETDURATION.")
    return MediaPlaylist(
        target_duration_s=target_s,
        media_sequence=sequence,
        segments=tuple(segments),
        trailing_parts=tuple(pending_parts),
        part_target_s=part_target,
        part_hold_back_s=part_hold_back,
        hold_back_s=hold_back,
        can_block_reload=can_block,
        preload_hint=hint,
        map_uri=map_uri,
        ended=ended,
        skipped_segments=skipped,
        can_skip_until_s=can_skip,
    )


@functools.lru_cache(maxsize=256)
def parse_playlist_cached(body: bytes) -> MediaPlaylist:
    """``parse_playlist`` memoised on the bytes: thousands of listeners read the
    same few playlists, and parsing each copy would cost the load generator the
    CPU it needs to keep up."""
    return parse_playlist(body.decode("utf-8", "replace"))


def next_part_after(playlist: MediaPlaylist, msn: int, index: int) -> tuple[int, int]:
    """The (msn, index) a player asks for after part ``index`` of segment ``msn``:
    the next part of that segment, or part 0 of the next segment once the
    playlist shows ``msn`` complete and ``index`` its last part."""
    offset = msn - playlist.media_sequence - playlist.skipped_segments
    if 0 <= offset < len(playlist.segments):
        parts = playlist.segments[offset].parts
        if parts and index >= parts[-1].index:
            return msn + 1, 0
    return msn, index + 1


def live_start_parts(playlist: MediaPlaylist, hold_back_s: float) -> tuple[Part, ...]:
    """The parts a player fetches when it joins: from ``hold_back_s`` behind the
    live edge (at an independent part where parts say so) to the edge."""
    parts = playlist.all_parts()
    total = 0.0
    start = len(parts)
    for i in range(len(parts) - 1, -1, -1):
        total += parts[i].duration_s
        start = i
        if total >= hold_back_s - 1e-6:
            break
    if any(p.independent for p in parts):
        while start > 0 and not parts[start].independent:
            start -= 1
    return parts[start:]


def live_start_segments(playlist: MediaPlaylist, count: int = 3) -> tuple[Segment, ...]:
    """Plain HLS: a player starts ``count`` segments from the end (RFC 8216 6.3.3)."""
    return playlist.segments[-count:] if count > 0 else ()
