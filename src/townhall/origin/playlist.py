"""HLS media playlists (RFC 8216bis) rendered from a frozen description of the
live window: Low-Latency HLS while live, plain HLS for players without LL
support, and VOD once the space has ended.

Pure functions of a :class:`PlaylistView`; the caller caches the text per
window version. Choices:

- EVENT while live: every segment since the start stays listed (DVR), so
  EXT-X-MEDIA-SEQUENCE is the first recorded msn and never moves; the server
  offers Playlist Delta Updates (CAN-SKIP-UNTIL = 6 target durations, the
  minimum the spec allows) so long talks do not cost full reloads.
- Parts are listed only for the last ``part_segments`` complete segments and
  the one being built (the spec lets servers drop older parts; it requires
  none further back than three target durations).
- EXT-X-PROGRAM-DATE-TIME on every segment (wall-clock of its first sample),
  so players and the latency bench can map media time to wall-clock time.
- EXT-X-VERSION: 6 (EXT-X-MAP without I-FRAMES-ONLY), 9 where the playlist
  uses or offers EXT-X-SKIP. The LL-HLS tags themselves need no version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from townhall.errors import BadRequest


@dataclass(frozen=True, slots=True)
class PartRef:
    uri: str
    duration_s: float
    independent: bool = True


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """A segment; ``complete`` ones have a URI and an EXTINF duration, the open
    one (being built at the live edge) only its parts so far."""

    msn: int
    uri: str
    duration_s: float
    map_uri: str
    discontinuity: bool
    program_date_time_s: float | None
    parts: tuple[PartRef, ...] = ()


@dataclass(frozen=True, slots=True)
class PlaylistView:
    """Everything a playlist shows. ``segments`` are complete, ascending and
    contiguous by msn; ``open_segment`` (msn = last + 1) carries the parts of
    the segment being built; ``preload_hint_uri`` names the next part."""

    segments: tuple[SegmentRef, ...]
    open_segment: SegmentRef | None
    preload_hint_uri: str | None
    part_target_s: float
    segment_target_s: float
    ended: bool
    first_msn: int = 0
    # a sliding live window (issue 14): older segments leave the playlist, so
    # it is not an EVENT playlist, and discontinuities that left are counted
    discontinuity_sequence: int = 0
    sliding: bool = False


def _num(value: float) -> str:
    """Decimal with at most 6 places, no trailing zeros (0.512, 4.096, 6)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _duration(value: float) -> str:
    return f"{value:.5f}"


def _pdt(epoch_s: float) -> str:
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def target_duration_s(view: PlaylistView) -> int:
    """EXT-X-TARGETDURATION: the longest segment rounded to the nearest integer."""
    longest = max([view.segment_target_s, *(s.duration_s for s in view.segments)])
    return max(1, math.floor(longest + 0.5))


def part_target_text(view: PlaylistView) -> str:
    """PART-TARGET rounded UP to the microsecond, so that every part DURATION
    (rounded to the nearest microsecond) is at most the target."""
    return _num(math.ceil(view.part_target_s * 1_000_000 - 1e-6) / 1_000_000)


def part_hold_back_s(view: PlaylistView) -> float:
    """Three part targets (Apple's minimum), rounded up to the microsecond."""
    return math.ceil(3 * float(part_target_text(view)) * 1_000_000 - 1e-6) / 1_000_000


def skip_until_s(view: PlaylistView) -> float:
    return 6.0 * target_duration_s(view)


def _segment_lines(
    seg: SegmentRef,
    lines: list[str],
    *,
    with_parts: bool,
    current_map: str | None,
    first: bool,
) -> str:
    if seg.discontinuity and not first:
        lines.append("#EXT-X-DISCONTINUITY")
    if seg.map_uri != current_map:
        lines.append(f'#EXT-X-MAP:URI="{seg.map_uri}"')
        current_map = seg.map_uri
    if seg.program_date_time_s is not None:
        lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(seg.program_date_time_s)}")
    if with_parts:
        for part in seg.parts:
            indep = ",INDEPENDENT=YES" if part.independent else ""
            lines.append(f'#EXT-X-PART:DURATION={_num(part.duration_s)},URI="{part.uri}"{indep}')
    if seg.uri:
        lines.append(f"#EXTINF:{_duration(seg.duration_s)},")
        lines.append(seg.uri)
    return current_map or seg.map_uri


def render_ll(view: PlaylistView, *, part_segments: int = 2, skip: bool = False) -> str:
    """The Low-Latency HLS playlist (an ended view renders as VOD instead).

    ``skip`` renders a Playlist Delta Update (client sent ``_HLS_skip=YES``).
    """
    if view.ended:
        return render_vod(view)
    target = target_duration_s(view)
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:9",
        f"#EXT-X-TARGETDURATION:{target}",
        f"#EXT-X-PART-INF:PART-TARGET={part_target_text(view)}",
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
        f"PART-HOLD-BACK={_num(part_hold_back_s(view))},"
        f"CAN-SKIP-UNTIL={_num(skip_until_s(view))}",
        f"#EXT-X-MEDIA-SEQUENCE:{view.segments[0].msn if view.segments else view.first_msn}",
    ]
    if not view.sliding:
        lines.insert(5, "#EXT-X-PLAYLIST-TYPE:EVENT")
    if view.discontinuity_sequence:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{view.discontinuity_sequence}")
    segments = view.segments
    skipped = 0
    if skip:
        boundary = skip_until_s(view)
        kept_s = 0.0
        keep_from = len(segments)
        while keep_from > 0 and kept_s + segments[keep_from - 1].duration_s <= boundary:
            keep_from -= 1
            kept_s += segments[keep_from].duration_s
        skipped = keep_from
    if skipped:
        lines.append(f"#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}")
    with_parts_from = len(segments) - part_segments
    current_map: str | None = None
    for i in range(skipped, len(segments)):
        current_map = _segment_lines(
            segments[i],
            lines,
            with_parts=i >= with_parts_from,
            current_map=current_map,
            first=i == 0,
        )
    if view.open_segment is not None:
        _segment_lines(
            view.open_segment,
            lines,
            with_parts=True,
            current_map=current_map,
            first=not segments,
        )
    if view.preload_hint_uri:
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{view.preload_hint_uri}"')
    return "\n".join(lines) + "\n"


def render_plain(view: PlaylistView) -> str:
    """Plain HLS (complete segments only, no LL tags); VOD once ended."""
    if view.ended:
        return render_vod(view)
    return _render_segments(view, playlist_type="" if view.sliding else "EVENT", endlist=False)


def render_vod(view: PlaylistView) -> str:
    """The whole recording: PLAYLIST-TYPE VOD and EXT-X-ENDLIST."""
    return _render_segments(view, playlist_type="VOD", endlist=True)


def _render_segments(view: PlaylistView, *, playlist_type: str, endlist: bool) -> str:
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:6",
        f"#EXT-X-TARGETDURATION:{target_duration_s(view)}",
        f"#EXT-X-PLAYLIST-TYPE:{playlist_type}",
        f"#EXT-X-MEDIA-SEQUENCE:{view.segments[0].msn if view.segments else view.first_msn}",
    ]
    if not playlist_type:
        lines.remove("#EXT-X-PLAYLIST-TYPE:")
    if view.discontinuity_sequence and not endlist:
        lines.append(f"#EXT-X-DISCONTINUITY-SEQUENCE:{view.discontinuity_sequence}")
    if endlist:
        lines.insert(4, "#EXT-X-INDEPENDENT-SEGMENTS")
    current_map: str | None = None
    for i, seg in enumerate(view.segments):
        current_map = _segment_lines(
            seg, lines, with_parts=False, current_map=current_map, first=i == 0
        )
    if endlist:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class BlockingRequest:
    """A parsed ``_HLS_msn`` / ``_HLS_part`` / ``_HLS_skip`` query."""

    msn: int | None
    part: int | None
    skip: bool


MAX_MSN = 10**12


def parse_blocking_query(msn: str | None, part: str | None, skip: str | None) -> BlockingRequest:
    """Validate the LL-HLS delivery directives; raises BadRequest with a sentence."""

    def number(name: str, raw: str) -> int:
        if not raw.isdigit() or len(raw) > 12:
            raise BadRequest(f"{name} must be a whole number between 0 and {MAX_MSN - 1}.")
        return int(raw)

    msn_n = number("_HLS_msn", msn) if msn is not None else None
    part_n = number("_HLS_part", part) if part is not None else None
    if part_n is not None and msn_n is None:
        raise BadRequest("_HLS_part needs _HLS_msn: ask for a part of a given segment.")
    if skip not in (None, "YES", "v2"):
        raise BadRequest("_HLS_skip must be YES or v2.")
    return BlockingRequest(msn=msn_n, part=part_n, skip=skip is not None)
