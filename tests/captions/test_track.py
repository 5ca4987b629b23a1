"""Caption rendering (pure): WebVTT segments, the subtitles playlist, captions.json, transcripts."""

from __future__ import annotations

from townhall.captions.track import (
    CaptionTrack,
    Line,
    captioned_segments,
    captions_document,
    segment_vtt,
    subtitles_media_tag,
    subtitles_playlist,
    transcript_text,
    transcript_vtt,
    vtt_time,
)
from townhall.store.recordings import SegmentRecord

RATE = 48_000


def rec(msn: int, start_s: float, dur_s: float = 2.0, *, disc: bool = False) -> SegmentRecord:
    return SegmentRecord(
        msn=msn,
        epoch=1 if disc else 0,
        start_samples=int(start_s * RATE),
        duration_samples=int(dur_s * RATE),
        program_date_time_s=1_700_000_000.0 + start_s,
        discontinuity=disc,
        part_count=4,
    )


def track_of(*lines: Line) -> CaptionTrack:
    track = CaptionTrack()
    for line in lines:
        track.add(line)
    return track


def test_vtt_time() -> None:
    assert vtt_time(0) == "00:00:00.000"
    assert vtt_time(3723.4567) == "01:02:03.457"


def test_segment_vtt_has_overlapping_cues_with_voice_and_escapes() -> None:
    track = track_of(
        Line(1.0, 2.5, "Hello <b> & --> there", "a1"),
        Line(2.5, 3.0, "second", None),
        Line(9.0, 10.0, "later", "a1"),
    )
    body = segment_vtt(track, rec(1, 2.0), RATE, {"a1": "Ada <3"})
    assert body.startswith("WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:0,LOCAL:00:00:00.000\n")
    assert "00:00:01.000 --> 00:00:02.500\n<v Ada &lt;3>Hello &lt;b&gt; &amp; -&gt; there\n" in body
    assert "00:00:02.500 --> 00:00:03.000\nsecond\n" in body
    assert "later" not in body


def test_subtitles_playlist_mirrors_the_audio_segments() -> None:
    records = [rec(0, 0.0), rec(1, 2.0), rec(2, 4.0, disc=True)]
    text = subtitles_playlist(records, RATE, segment_target_s=2.0, ended=False)
    lines = text.splitlines()
    assert lines[:5] == [
        "#EXTM3U",
        "#EXT-X-VERSION:6",
        "#EXT-X-TARGETDURATION:2",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:EVENT",
    ]
    assert lines.count("#EXTINF:2.00000,") == 3
    assert lines.index("#EXT-X-DISCONTINUITY") < lines.index("captions/2.vtt")
    assert "#EXT-X-ENDLIST" not in text
    ended = subtitles_playlist(records, RATE, segment_target_s=2.0, ended=True)
    assert ended.endswith("#EXT-X-ENDLIST\n") and "PLAYLIST-TYPE:VOD" in ended


def test_only_segments_recognition_has_passed_are_listed_while_live() -> None:
    records = [rec(0, 0.0), rec(1, 2.0), rec(2, 4.0)]
    track = CaptionTrack()
    track.advance(4.5)
    assert [r.msn for r in captioned_segments(records, track, RATE, ended=False)] == [0, 1]
    assert len(captioned_segments(records, track, RATE, ended=True)) == 3


def test_captions_document_and_transcripts() -> None:
    track = track_of(Line(61.0, 63.0, "one", "a1"), Line(64.0, 65.0, "two", None))
    doc = captions_document(track, status="running", message="", count=1, names={"a1": "Ada"})
    assert doc == {
        "status": "running",
        "message": "",
        "done_s": 65.0,
        "lines": [{"start_s": 64.0, "end_s": 65.0, "text": "two", "speaker": None}],
    }
    lines = list(track.lines)
    assert transcript_text(lines, {"a1": "Ada"}, origin_s=1.0) == "[1:00] Ada: one\n[1:03] two\n"
    vtt = transcript_vtt(lines, {"a1": "Ada"}, origin_s=1.0)
    assert vtt.startswith("WEBVTT\n") and "00:01:00.000 --> 00:01:02.000\n<v Ada>one" in vtt


def test_subtitles_media_tag() -> None:
    tag = subtitles_media_tag()
    assert tag.startswith('#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs"')
    assert tag.endswith('URI="captions.m3u8"')
