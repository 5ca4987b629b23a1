"""A reusable HLS media playlist validator (RFC 8216bis, with Low-Latency HLS).

Usage from tests and benchmarks::

    from tests.media.hls_validator import validate, check_reload

    parsed = validate(text, expect="ll")        # or "plain", "vod", None
    check_reload(previous_parsed, parsed)       # media sequence continuity

``validate`` collects every problem it finds and raises :class:`PlaylistInvalid`
(an AssertionError, so pytest shows the list) or returns the parsed playlist.
It checks what a player relies on: the header, required tags, EXTINF and URI
pairing, segment durations (rounded) <= TARGETDURATION, part durations <=
PART-TARGET, PART-HOLD-BACK >= 3 x PART-TARGET, CAN-SKIP-UNTIL >= 6 x target,
parts only near the live edge and summing to their segment, one preload hint
after the last part, EXT-X-MAP before fMP4 media, version numbers for the tags
used, ENDLIST (and no hint) in VOD, and no LL tags in plain playlists.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import av
import numpy as np

Expect = Literal["ll", "plain", "vod"] | None

_ATTR_RE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')
DURATION_TOLERANCE_S = 1e-6


class PlaylistInvalid(AssertionError):
    def __init__(self, problems: list[str], text: str) -> None:
        self.problems = problems
        super().__init__("invalid playlist:\n  - " + "\n  - ".join(problems) + "\n---\n" + text)


@dataclass
class Part:
    uri: str
    duration_s: float
    independent: bool


@dataclass
class Segment:
    msn: int
    uri: str
    duration_s: float
    discontinuity: bool
    map_uri: str | None
    program_date_time: datetime | None
    parts: list[Part] = field(default_factory=list)


@dataclass
class Playlist:
    version: int | None = None
    target_duration: int | None = None
    media_sequence: int = 0
    discontinuity_sequence: int = 0
    playlist_type: str | None = None
    part_target_s: float | None = None
    server_control: dict[str, str] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)
    open_parts: list[Part] = field(default_factory=list)  # parts after the last EXTINF
    preload_hints: list[dict[str, str]] = field(default_factory=list)
    skipped_segments: int = 0
    endlist: bool = False
    map_uris: list[str] = field(default_factory=list)

    @property
    def last_msn(self) -> int:
        return self.media_sequence + self.skipped_segments + len(self.segments) - 1

    @property
    def all_parts(self) -> list[Part]:
        parts = [p for s in self.segments for p in s.parts]
        return parts + self.open_parts


def attributes(text: str) -> dict[str, str]:
    """An attribute list (KEY=value,KEY="quoted") as a dict, quotes removed."""
    return {k: v[1:-1] if v.startswith('"') else v for k, v in _ATTR_RE.findall(text)}


def parse(text: str) -> tuple[Playlist, list[str]]:
    """Parse leniently; return the playlist and the problems met on the way."""
    problems: list[str] = []
    pl = Playlist()
    lines = [line.strip() for line in text.splitlines()]
    if not lines or lines[0] != "#EXTM3U":
        problems.append("first line must be #EXTM3U")
    pending_duration: float | None = None
    pending_disc = False
    pending_pdt: datetime | None = None
    current_map: str | None = None
    parts: list[Part] = []
    seen_once: dict[str, int] = {}
    after_endlist = False
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        if after_endlist:
            problems.append(f"line {number}: content after #EXT-X-ENDLIST")
        if not line.startswith("#"):
            if pending_duration is None:
                problems.append(f"line {number}: URI {line!r} without a preceding #EXTINF")
                continue
            msn = pl.media_sequence + pl.skipped_segments + len(pl.segments)
            pl.segments.append(
                Segment(msn, line, pending_duration, pending_disc, current_map, pending_pdt, parts)
            )
            pending_duration, pending_disc, pending_pdt, parts = None, False, None, []
            continue
        if not line.startswith("#EXT"):
            continue  # comment
        tag, _, value = line.partition(":")
        if tag in (
            "#EXT-X-VERSION",
            "#EXT-X-TARGETDURATION",
            "#EXT-X-MEDIA-SEQUENCE",
            "#EXT-X-PLAYLIST-TYPE",
            "#EXT-X-PART-INF",
            "#EXT-X-SERVER-CONTROL",
            "#EXT-X-DISCONTINUITY-SEQUENCE",
        ):
            seen_once[tag] = seen_once.get(tag, 0) + 1
            if seen_once[tag] > 1:
                problems.append(f"line {number}: {tag} appears more than once")
            if pl.segments or parts:
                problems.append(f"line {number}: {tag} must come before the first segment")
        try:
            if tag == "#EXT-X-VERSION":
                pl.version = int(value)
            elif tag == "#EXT-X-TARGETDURATION":
                pl.target_duration = int(value)
            elif tag == "#EXT-X-MEDIA-SEQUENCE":
                pl.media_sequence = int(value)
            elif tag == "#EXT-X-DISCONTINUITY-SEQUENCE":
                pl.discontinuity_sequence = int(value)
            elif tag == "#EXT-X-PLAYLIST-TYPE":
                if value not in ("EVENT", "VOD"):
                    problems.append(f"line {number}: PLAYLIST-TYPE must be EVENT or VOD")
                pl.playlist_type = value
            elif tag == "#EXT-X-PART-INF":
                pl.part_target_s = float(attributes(value)["PART-TARGET"])
            elif tag == "#EXT-X-SERVER-CONTROL":
                pl.server_control = attributes(value)
            elif tag == "#EXTINF":
                if pending_duration is not None:
                    problems.append(f"line {number}: #EXTINF follows an #EXTINF that has no URI")
                pending_duration = float(value.split(",", 1)[0])
            elif tag == "#EXT-X-DISCONTINUITY":
                pending_disc = True
            elif tag == "#EXT-X-PROGRAM-DATE-TIME":
                pending_pdt = datetime.fromisoformat(value.replace("Z", "+00:00"))
            elif tag == "#EXT-X-MAP":
                current_map = attributes(value)["URI"]
                pl.map_uris.append(current_map)
            elif tag == "#EXT-X-PART":
                attrs = attributes(value)
                parts.append(
                    Part(
                        attrs["URI"],
                        float(attrs["DURATION"]),
                        attrs.get("INDEPENDENT") == "YES",
                    )
                )
            elif tag == "#EXT-X-PRELOAD-HINT":
                pl.preload_hints.append(attributes(value))
            elif tag == "#EXT-X-SKIP":
                if pl.segments:
                    problems.append(f"line {number}: EXT-X-SKIP must precede every segment")
                pl.skipped_segments = int(attributes(value)["SKIPPED-SEGMENTS"])
            elif tag == "#EXT-X-ENDLIST":
                pl.endlist = True
                after_endlist = True
        except (KeyError, ValueError) as exc:
            problems.append(f"line {number}: malformed {tag}: {exc}")
    pl.open_parts = parts
    if pending_duration is not None:
        problems.append("the playlist ends with an #EXTINF that has no URI")
    return pl, problems


def validate(text: str, *, expect: Expect = None) -> Playlist:
    """Check ``text``; raise PlaylistInvalid listing every problem, or return it."""
    pl, problems = parse(text)
    td = pl.target_duration
    if td is None:
        problems.append("#EXT-X-TARGETDURATION is required")
    if pl.version is None:
        problems.append("#EXT-X-VERSION is missing (fMP4 needs version 6 or more)")
    for seg in pl.segments:
        if td is not None and math.floor(seg.duration_s + 0.5) > td:
            problems.append(
                f"segment {seg.msn} lasts {seg.duration_s}s, more than TARGETDURATION {td} when rounded"
            )
        if seg.duration_s <= 0:
            problems.append(f"segment {seg.msn} has a non-positive duration")
    if pl.segments or pl.open_parts:
        first_media = pl.segments[0].uri if pl.segments else pl.open_parts[0].uri
        if first_media.endswith((".m4s", ".mp4")) and not pl.map_uris:
            problems.append("fMP4 media without #EXT-X-MAP")
    if pl.map_uris and pl.version is not None and pl.version < 6:
        problems.append("#EXT-X-MAP needs EXT-X-VERSION 6 or more")
    if pl.skipped_segments and (pl.version or 0) < 9:
        problems.append("#EXT-X-SKIP needs EXT-X-VERSION 9 or more")

    parts = pl.all_parts
    sc = pl.server_control
    if parts or pl.part_target_s is not None:
        pt = pl.part_target_s
        if pt is None:
            problems.append("#EXT-X-PART without #EXT-X-PART-INF")
        else:
            for part in parts:
                if part.duration_s > pt + DURATION_TOLERANCE_S:
                    problems.append(
                        f"part {part.uri} lasts {part.duration_s}s, more than PART-TARGET {pt}"
                    )
            if "PART-HOLD-BACK" not in sc:
                problems.append("LL-HLS playlist without PART-HOLD-BACK in EXT-X-SERVER-CONTROL")
            elif float(sc["PART-HOLD-BACK"]) + DURATION_TOLERANCE_S < 3 * pt:
                problems.append(
                    f"PART-HOLD-BACK {sc['PART-HOLD-BACK']} is less than 3 x PART-TARGET {pt}"
                )
        for seg in pl.segments:
            if seg.parts:
                total = sum(p.duration_s for p in seg.parts)
                if abs(total - seg.duration_s) > 1e-3:
                    problems.append(
                        f"parts of segment {seg.msn} sum to {total:.5f}s, EXTINF says {seg.duration_s}"
                    )
        if td is not None:
            # parts older than three target durations from the end must be gone
            age_s = sum(p.duration_s for p in pl.open_parts)
            for seg in reversed(pl.segments):
                if seg.parts and age_s > 3 * td + DURATION_TOLERANCE_S:
                    problems.append(
                        f"segment {seg.msn} still lists parts {age_s:.3f}s from the end"
                    )
                age_s += seg.duration_s
    if "CAN-SKIP-UNTIL" in sc and td is not None and float(sc["CAN-SKIP-UNTIL"]) < 6 * td:
        problems.append(f"CAN-SKIP-UNTIL {sc['CAN-SKIP-UNTIL']} is less than 6 x target {td}")
    if len([h for h in pl.preload_hints if h.get("TYPE") == "PART"]) > 1:
        problems.append("more than one EXT-X-PRELOAD-HINT of TYPE=PART")
    for hint in pl.preload_hints:
        if hint.get("TYPE") not in ("PART", "MAP") or not hint.get("URI"):
            problems.append(f"preload hint {hint} needs TYPE=PART|MAP and a URI")
    if pl.preload_hints and not text.rstrip().splitlines()[-1].startswith("#EXT-X-PRELOAD-HINT"):
        problems.append("EXT-X-PRELOAD-HINT must follow the last part")

    if expect == "ll":
        if sc.get("CAN-BLOCK-RELOAD") != "YES":
            problems.append("LL-HLS playlist must say CAN-BLOCK-RELOAD=YES")
        if pl.part_target_s is None:
            problems.append("LL-HLS playlist needs #EXT-X-PART-INF")
        if not parts:
            problems.append("LL-HLS playlist lists no parts")
        if not any(h.get("TYPE") == "PART" for h in pl.preload_hints) and not pl.endlist:
            problems.append("live LL-HLS playlist needs an EXT-X-PRELOAD-HINT for the next part")
        if pl.endlist:
            problems.append("live LL-HLS playlist must not have #EXT-X-ENDLIST")
        if any(not p.independent for p in parts):
            problems.append("audio parts must all be INDEPENDENT=YES")
    elif expect == "plain":
        if parts or pl.preload_hints or pl.part_target_s is not None or sc:
            problems.append("plain HLS playlist must not carry LL-HLS tags")
        if pl.endlist:
            problems.append("live plain playlist must not have #EXT-X-ENDLIST")
    elif expect == "vod":
        if pl.playlist_type != "VOD":
            problems.append("VOD playlist needs #EXT-X-PLAYLIST-TYPE:VOD")
        if not pl.endlist:
            problems.append("VOD playlist needs #EXT-X-ENDLIST")
        if pl.preload_hints:
            problems.append("VOD playlist must not have a preload hint")
        if not pl.segments:
            problems.append("VOD playlist lists no segments")
    if problems:
        raise PlaylistInvalid(problems, text)
    return pl


def check_reload(before: Playlist, after: Playlist) -> None:
    """Media sequence continuity between two loads of the same playlist."""
    problems: list[str] = []
    if after.media_sequence < before.media_sequence:
        problems.append(
            f"media sequence went back from {before.media_sequence} to {after.media_sequence}"
        )
    if after.last_msn < before.last_msn:
        problems.append(f"last segment went back from {before.last_msn} to {after.last_msn}")
    old = {s.msn: s for s in before.segments}
    for seg in after.segments:
        prior = old.get(seg.msn)
        if prior is not None and (prior.uri, prior.duration_s) != (seg.uri, seg.duration_s):
            problems.append(f"segment {seg.msn} changed between reloads")
    if before.playlist_type == "EVENT" and after.media_sequence != before.media_sequence:
        problems.append("an EVENT playlist must not remove segments")
    if problems:
        raise PlaylistInvalid(problems, "(reload check)")


# -- media checks (decode what a player would get) -------------------------------


def decode_pcm(data: bytes, *, format: str | None = None) -> tuple[np.ndarray, int]:
    """Decode audio bytes (fMP4, m4a, ADTS) with PyAV: mono float samples and rate."""

    with av.open(io.BytesIO(data), format=format) as container:
        chunks = []
        rate = 0
        for frame in container.decode(audio=0):
            rate = frame.sample_rate
            chunks.append(frame.to_ndarray().reshape(-1))
    samples = np.concatenate(chunks) if chunks else np.zeros(0)
    return samples.astype(np.float64), rate
