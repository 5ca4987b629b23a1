"""The benchmark client's playlist parser, on small fixture playlists."""

from __future__ import annotations

import pytest

from townhall.bench.hlsplaylist import (
    PlaylistError,
    live_start_parts,
    live_start_segments,
    next_part_after,
    parse_attributes,
    parse_playlist,
)

LL = """#EXTM3U
#EXT-X-VERSION:9
#EXT-X-TARGETDURATION:4
#EXT-X-PART-INF:PART-TARGET=0.5
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.5,CAN-SKIP-UNTIL=24
#EXT-X-PLAYLIST-TYPE:EVENT
#EXT-X-MEDIA-SEQUENCE:10
#EXT-X-MAP:URI="init-0.mp4"
#EXT-X-PROGRAM-DATE-TIME:2026-11-20T23:46:16.000Z
#EXTINF:4.00000,
s10.m4s
#EXT-X-PROGRAM-DATE-TIME:2026-11-20T23:46:20.000Z
#EXT-X-PART:DURATION=0.50000,URI="p11.0.m4s",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.50000,URI="p11.1.m4s",INDEPENDENT=YES
#EXTINF:1.00000,
s11.m4s
#EXT-X-PART:DURATION=0.50000,URI="p12.0.m4s",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.48000,URI="p12.1.m4s",INDEPENDENT=YES
#EXT-X-PRELOAD-HINT:TYPE=PART,URI="p12.2.m4s"
"""

PLAIN = """#EXTM3U
#EXT-X-VERSION:6
#EXT-X-TARGETDURATION:4
#EXT-X-MEDIA-SEQUENCE:3
#EXT-X-MAP:URI="init.mp4"
#EXTINF:4.0,
a3.m4s
#EXTINF:4.0,
a4.m4s
#EXTINF:4.0,
a5.m4s
#EXTINF:3.5,
a6.m4s
#EXT-X-ENDLIST
"""


def test_ll_playlist_fields() -> None:
    pl = parse_playlist(LL)
    assert pl.is_low_latency
    assert pl.target_duration_s == 4
    assert pl.part_target_s == 0.5
    assert pl.part_hold_back_s == 1.5
    assert pl.can_block_reload
    assert pl.can_skip_until_s == 24
    assert pl.map_uri == "init-0.mp4"
    assert [s.msn for s in pl.segments] == [10, 11]
    assert pl.segments[0].parts == ()
    assert [(p.msn, p.index, p.uri) for p in pl.segments[1].parts] == [
        (11, 0, "p11.0.m4s"),
        (11, 1, "p11.1.m4s"),
    ]
    assert [(p.msn, p.index) for p in pl.trailing_parts] == [(12, 0), (12, 1)]
    assert pl.trailing_parts[1].duration_s == pytest.approx(0.48)
    assert pl.preload_hint is not None and pl.preload_hint.uri == "p12.2.m4s"
    assert pl.next_msn == 12
    assert not pl.ended


def test_next_part_after_rolls_into_next_segment_once_complete() -> None:
    pl = parse_playlist(LL)
    assert next_part_after(pl, 11, 1) == (12, 0)  # s11 is complete with 2 parts
    assert next_part_after(pl, 12, 1) == (12, 2)  # s12 still open
    assert next_part_after(pl, 11, 0) == (11, 1)


def test_live_start_is_part_hold_back_behind_the_edge() -> None:
    pl = parse_playlist(LL)
    start = live_start_parts(pl, 1.5)
    # 0.5 + 0.5 + 0.48 falls short of 1.5 s, so one more part back
    assert [(p.msn, p.index) for p in start] == [(11, 0), (11, 1), (12, 0), (12, 1)]
    assert [(p.msn, p.index) for p in live_start_parts(pl, 0.9)] == [(12, 0), (12, 1)]


def test_delta_update_numbers_segments_after_the_skipped_ones() -> None:
    text = LL.replace(
        '#EXT-X-MAP:URI="init-0.mp4"\n',
        '#EXT-X-MAP:URI="init-0.mp4"\n#EXT-X-SKIP:SKIPPED-SEGMENTS=5\n',
    )
    pl = parse_playlist(text)
    assert [s.msn for s in pl.segments] == [15, 16]
    assert pl.trailing_parts[0].msn == 17
    assert next_part_after(pl, 16, 1) == (17, 0)


def test_plain_playlist_and_its_start() -> None:
    pl = parse_playlist(PLAIN)
    assert not pl.is_low_latency
    assert pl.ended
    assert [s.msn for s in pl.segments] == [3, 4, 5, 6]
    assert [s.uri for s in live_start_segments(pl)] == ["a4.m4s", "a5.m4s", "a6.m4s"]
    assert pl.segments[-1].duration_s == 3.5


def test_attributes_keep_commas_inside_quotes() -> None:
    assert parse_attributes('URI="a,b.m4s",DURATION=0.5,INDEPENDENT=YES') == {
        "URI": "a,b.m4s",
        "DURATION": "0.5",
        "INDEPENDENT": "YES",
    }


def test_byterange_parts() -> None:
    text = LL.replace('URI="p12.0.m4s"', 'URI="s12.mp4",BYTERANGE="1000@0"')
    part = parse_playlist(text).trailing_parts[0]
    assert part.byterange == (1000, 0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "does not start with #EXTM3U"),
        ("#EXTM3U\n#EXTINF:4,\na.m4s\n", "no #EXT-X-TARGETDURATION"),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:4\na.m4s\n", "Line 3: URI 'a.m4s' without #EXTINF"),
        ("#EXTM3U\n#EXT-X-TARGETDURATION:four\n", "EXT-X-TARGETDURATION 'four' is not a number"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nx.m3u8\n", "master playlist"),
        (
            '#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXT-X-PART:URI="x"\n',
            "EXT-X-PART needs URI and DURATION",
        ),
    ],
)
def test_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(PlaylistError) as info:
        parse_playlist(text)
    assert message in info.value.detail
    assert info.value.kind == "playlist"
