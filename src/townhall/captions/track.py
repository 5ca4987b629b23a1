"""The captions of one space and their rendering (pure: no I/O, no loop).

- ``CaptionTrack`` holds the lines recognized so far (bounded) and how far
  recognition has got on the media timeline;
- per-segment WebVTT (``segment_vtt``) and a subtitles media playlist
  (``subtitles_playlist``) aligned one to one with the audio segments, so any
  HLS player shows them; cue times are on the audio's media timeline (the
  CMAF track's decode time in seconds), stated by ``X-TIMESTAMP-MAP``;
- ``captions_document`` (captions.json: the last lines, for the page's
  lower-latency caption line) and the transcript as WebVTT or text.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from townhall.store.recordings import SegmentRecord


@dataclass(frozen=True, slots=True)
class Line:
    """A caption line on the program's media timeline (seconds); ``speaker``
    is the account id of who was speaking, if the mixer knew."""

    start_s: float
    end_s: float
    text: str
    speaker: str | None = None


VTT_HEADER = "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000\n"


class CaptionTrack:
    """Lines in time order (at most ``max_lines``, oldest dropped first) and
    ``done_s``: recognition has covered the media timeline up to there."""

    def __init__(self, max_lines: int = 20_000) -> None:
        self.lines: deque[Line] = deque(maxlen=max_lines)
        self.done_s = 0.0
        self.version = 0
        # the line being built (streaming captions): shown live, not final,
        # so not in the WebVTT segments or the transcript until it closes
        self.open: Line | None = None

    def set_open(self, line: Line | None) -> None:
        if line != self.open:
            self.open = line
            self.version += 1

    def add(self, line: Line) -> None:
        self.lines.append(line)
        self.done_s = max(self.done_s, line.end_s)
        self.version += 1

    def advance(self, done_s: float) -> None:
        if done_s > self.done_s:
            self.done_s = done_s
            self.version += 1

    def between(self, start_s: float, end_s: float) -> list[Line]:
        """Lines that overlap [start_s, end_s)."""
        return [ln for ln in self.lines if ln.end_s > start_s and ln.start_s < end_s]

    def recent(self, count: int) -> list[Line]:
        return list(self.lines)[-count:] if count > 0 else []


def vtt_time(seconds: float) -> str:
    """WebVTT timestamp (hours always shown): 01:02:03.456."""
    ms = max(0, round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def _cue_text(line: Line, names: Mapping[str, str]) -> str:
    text = line.text.replace("-->", "->").replace("\n", " ").strip()
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    name = names.get(line.speaker) if line.speaker else None
    if name:
        safe = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return f"<v {safe}>{text}"
    return text


def _cues(lines: Iterable[Line], names: Mapping[str, str]) -> list[str]:
    return [
        f"{vtt_time(ln.start_s)} --> {vtt_time(max(ln.end_s, ln.start_s + 0.001))}\n"
        f"{_cue_text(ln, names)}\n"
        for ln in lines
    ]


def segment_vtt(
    track: CaptionTrack, record: SegmentRecord, sample_rate_hz: int, names: Mapping[str, str]
) -> str:
    """The WebVTT of one audio segment: the cues that overlap it (a cue that
    spans two segments appears in both, as the HLS spec allows)."""
    start_s = record.start_samples / sample_rate_hz
    end_s = (record.start_samples + record.duration_samples) / sample_rate_hz
    return "\n".join([VTT_HEADER, *_cues(track.between(start_s, end_s), names)])


def captioned_segments(
    records: Sequence[SegmentRecord], track: CaptionTrack, sample_rate_hz: int, *, ended: bool
) -> list[SegmentRecord]:
    """The segments whose captions are final: all once recognition ended,
    else those that end before the point recognition has reached."""
    if ended:
        return list(records)
    return [
        r
        for r in records
        if (r.start_samples + r.duration_samples) / sample_rate_hz <= track.done_s + 1e-6
    ]


def subtitles_playlist(
    records: Sequence[SegmentRecord],
    sample_rate_hz: int,
    *,
    segment_target_s: float,
    ended: bool,
    uri_prefix: str = "captions/",
) -> str:
    """The WebVTT media playlist: one .vtt per audio segment, same msn, same
    durations, discontinuities and program date-times as the audio's."""
    longest = max([segment_target_s, *(r.duration_samples / sample_rate_hz for r in records)])
    first_msn = records[0].msn if records else 0
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:6",
        f"#EXT-X-TARGETDURATION:{max(1, math.floor(longest + 0.5))}",
        f"#EXT-X-MEDIA-SEQUENCE:{first_msn}",
        f"#EXT-X-PLAYLIST-TYPE:{'VOD' if ended else 'EVENT'}",
    ]
    for i, r in enumerate(records):
        if r.discontinuity and i > 0:
            lines.append("#EXT-X-DISCONTINUITY")
        if i == 0 or r.discontinuity:
            lines.append(f"#EXT-X-PROGRAM-DATE-TIME:{_pdt(r.program_date_time_s)}")
        lines.append(f"#EXTINF:{r.duration_samples / sample_rate_hz:.5f},")
        lines.append(f"{uri_prefix}{r.msn}.vtt")
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def subtitles_media_tag(uri: str = "captions.m3u8", group_id: str = "subs") -> str:
    """The multivariant playlist's rendition line for the captions; the audio's
    EXT-X-STREAM-INF then names ``SUBTITLES="<group_id>"``."""
    return (
        f'#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="{group_id}",NAME="English (automatic)",'
        f'LANGUAGE="en",AUTOSELECT=YES,DEFAULT=NO,FORCED=NO,URI="{uri}"'
    )


def _pdt(epoch_s: float) -> str:
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def line_json(line: Line, names: Mapping[str, str], origin_s: float = 0.0) -> dict[str, object]:
    return {
        "start_s": round(line.start_s - origin_s, 3),
        "end_s": round(line.end_s - origin_s, 3),
        "text": line.text,
        "speaker": names.get(line.speaker) if line.speaker else None,
    }


def captions_document(
    track: CaptionTrack,
    *,
    status: str,
    message: str,
    count: int,
    names: Mapping[str, str],
) -> dict[str, object]:
    """captions.json: the last ``count`` lines (media-timeline seconds, the
    same clock as the audio the page plays), the line being built last (with
    ``"open": true``), and whether captions run."""
    lines = [line_json(ln, names) for ln in track.recent(count)]
    if track.open is not None:
        lines = [
            *lines[max(0, len(lines) - count + 1) :],
            {**line_json(track.open, names), "open": True},
        ]
    return {
        "status": status,
        "message": message,
        "done_s": round(track.done_s, 3),
        "lines": lines,
    }


def transcript_vtt(lines: Iterable[Line], names: Mapping[str, str], origin_s: float = 0.0) -> str:
    """The whole transcript as one WebVTT file, timed from the recording's start."""
    shifted = [
        Line(ln.start_s - origin_s, ln.end_s - origin_s, ln.text, ln.speaker) for ln in lines
    ]
    return "\n".join(["WEBVTT\n", *_cues(shifted, names)])


def transcript_text(lines: Iterable[Line], names: Mapping[str, str], origin_s: float = 0.0) -> str:
    """The transcript as plain text: ``[m:ss] Name: words`` per line."""
    out = []
    for ln in lines:
        whole = max(0, int(ln.start_s - origin_s))
        stamp = (
            f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
            if whole >= 3600
            else f"{whole // 60}:{whole % 60:02d}"
        )
        name = names.get(ln.speaker) if ln.speaker else None
        out.append(f"[{stamp}] {name}: {ln.text}" if name else f"[{stamp}] {ln.text}")
    return "\n".join(out) + ("\n" if out else "")
