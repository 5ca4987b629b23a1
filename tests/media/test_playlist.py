"""Playlist renderers checked by the RFC 8216bis validator, and the validator
checked against broken playlists."""

from __future__ import annotations

import pytest

from townhall.errors import BadRequest
from townhall.origin.playlist import (
    PartRef,
    PlaylistView,
    SegmentRef,
    parse_blocking_query,
    render_ll,
    render_plain,
    render_vod,
)

from .hls_validator import PlaylistInvalid, check_reload, validate

PART_S = 0.512
T0 = 1_790_000_000.0


def segment(
    msn: int, *, parts: int = 8, with_parts: bool = True, epoch: int = 0, disc: bool = False
) -> SegmentRef:
    return SegmentRef(
        msn=msn,
        uri=f"seg/{msn}.m4s",
        duration_s=PART_S * parts,
        map_uri=f"init/{epoch}.mp4",
        discontinuity=disc,
        program_date_time_s=T0 + msn * 4.096,
        parts=tuple(PartRef(f"part/{msn}.{i}.m4s", PART_S) for i in range(parts))
        if with_parts
        else (),
    )


def view(
    count: int, *, open_parts: int = 3, ended: bool = False, restart_at: int | None = None
) -> PlaylistView:
    segments = []
    for msn in range(count):
        epoch = 1 if restart_at is not None and msn >= restart_at else 0
        segments.append(
            segment(msn, with_parts=msn >= count - 2, epoch=epoch, disc=msn == restart_at)
        )
    open_segment = None
    if open_parts:
        open_segment = SegmentRef(
            msn=count,
            uri="",
            duration_s=0.0,
            map_uri="init/1.mp4" if restart_at is not None else "init/0.mp4",
            discontinuity=False,
            program_date_time_s=T0 + count * 4.096,
            parts=tuple(PartRef(f"part/{count}.{i}.m4s", PART_S) for i in range(open_parts)),
        )
    return PlaylistView(
        segments=tuple(segments),
        open_segment=open_segment,
        preload_hint_uri=None if ended else f"part/{count}.{open_parts}.m4s",
        part_target_s=PART_S,
        segment_target_s=PART_S * 8,
        ended=ended,
    )


def test_ll_playlist_is_valid_and_has_the_ll_tags() -> None:
    text = render_ll(view(5))
    parsed = validate(text, expect="ll")
    assert parsed.target_duration == 4
    assert parsed.part_target_s == PART_S
    assert parsed.server_control["CAN-BLOCK-RELOAD"] == "YES"
    assert float(parsed.server_control["PART-HOLD-BACK"]) == pytest.approx(3 * PART_S)
    assert parsed.playlist_type == "EVENT"
    assert [s.msn for s in parsed.segments] == [0, 1, 2, 3, 4]
    assert parsed.preload_hints == [{"TYPE": "PART", "URI": "part/5.3.m4s"}]
    # parts only near the live edge: last two segments and the open one
    assert [bool(s.parts) for s in parsed.segments] == [False, False, False, True, True]
    assert [p.uri for p in parsed.open_parts] == [f"part/5.{i}.m4s" for i in range(3)]
    assert all(s.program_date_time is not None for s in parsed.segments)
    assert '#EXT-X-MAP:URI="init/0.mp4"' in text


def test_first_part_before_any_segment() -> None:
    parsed = validate(render_ll(view(0, open_parts=1)), expect="ll")
    assert parsed.segments == [] and len(parsed.open_parts) == 1


def test_restart_renders_discontinuity_and_new_map() -> None:
    text = render_ll(view(6, restart_at=4))
    parsed = validate(text, expect="ll")
    assert [s.discontinuity for s in parsed.segments] == [False] * 4 + [True, False]
    assert [s.map_uri for s in parsed.segments] == ["init/0.mp4"] * 4 + ["init/1.mp4"] * 2
    lines = text.splitlines()
    disc = lines.index("#EXT-X-DISCONTINUITY")
    assert lines[disc + 1] == '#EXT-X-MAP:URI="init/1.mp4"'


def test_delta_update_skips_old_segments() -> None:
    full = validate(render_ll(view(20)), expect="ll")
    delta_text = render_ll(view(20), skip=True)
    delta = validate(delta_text, expect="ll")
    assert delta.skipped_segments > 0
    assert delta.skipped_segments + len(delta.segments) == len(full.segments)
    assert delta.last_msn == full.last_msn
    kept_s = sum(s.duration_s for s in delta.segments)
    assert kept_s <= float(full.server_control["CAN-SKIP-UNTIL"])
    assert delta_text.splitlines()[7].startswith("#EXT-X-SKIP:SKIPPED-SEGMENTS=")


def test_plain_playlist_has_no_ll_tags() -> None:
    parsed = validate(render_plain(view(5)), expect="plain")
    assert len(parsed.segments) == 5 and not parsed.endlist


def test_vod_has_endlist_and_every_segment() -> None:
    ended = view(7, open_parts=0, ended=True, restart_at=3)
    for text in (render_vod(ended), render_ll(ended), render_plain(ended)):
        parsed = validate(text, expect="vod")
        assert [s.msn for s in parsed.segments] == list(range(7))
        assert parsed.segments[3].discontinuity


def test_reload_continuity() -> None:
    check_reload(validate(render_ll(view(5))), validate(render_ll(view(6))))
    with pytest.raises(PlaylistInvalid, match="went back"):
        check_reload(validate(render_ll(view(6))), validate(render_ll(view(5))))


def test_blocking_query_parsing() -> None:
    assert parse_blocking_query("12", "3", None).msn == 12
    assert parse_blocking_query(None, None, "YES").skip
    for bad in (
        ("x", None, None),
        ("-1", None, None),
        ("1" * 13, None, None),
        (None, "2", None),
        ("1", None, "NO"),
    ):
        with pytest.raises(BadRequest):
            parse_blocking_query(*bad)


# -- the validator must reject broken playlists -----------------------------------

GOOD = render_ll(view(3))


def broken(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (GOOD.replace("#EXTM3U\n", ""), "first line must be #EXTM3U"),
        (broken("#EXT-X-TARGETDURATION:4\n", ""), "TARGETDURATION is required"),
        (broken("#EXT-X-TARGETDURATION:4", "#EXT-X-TARGETDURATION:3"), "more than TARGETDURATION"),
        (broken("PART-TARGET=0.512", "PART-TARGET=0.5"), "more than PART-TARGET"),
        (broken("PART-HOLD-BACK=1.536", "PART-HOLD-BACK=1.0"), "less than 3 x PART-TARGET"),
        (broken("PART-HOLD-BACK=1.536,", ""), "without PART-HOLD-BACK"),
        (broken("CAN-BLOCK-RELOAD=YES", "CAN-BLOCK-RELOAD=NO"), "CAN-BLOCK-RELOAD=YES"),
        (GOOD.rsplit("#EXT-X-PRELOAD-HINT", 1)[0], "needs an EXT-X-PRELOAD-HINT"),
        (broken('#EXT-X-MAP:URI="init/0.mp4"\n', ""), "without #EXT-X-MAP"),
        (broken("#EXT-X-VERSION:9", "#EXT-X-VERSION:3"), "needs EXT-X-VERSION 6"),
        (broken("seg/0.m4s\n", ""), "#EXTINF"),
        (GOOD + "#EXT-X-ENDLIST\n", "must not have #EXT-X-ENDLIST"),
        (broken(",INDEPENDENT=YES", ""), "INDEPENDENT=YES"),
        (broken("CAN-SKIP-UNTIL=24", "CAN-SKIP-UNTIL=8"), "less than 6 x target"),
        (
            broken("#EXTINF:4.09600,\nseg/2.m4s", "#EXTINF:4.50000,\nseg/2.m4s"),
            "parts of segment 2 sum",
        ),
    ],
)
def test_validator_rejects(text: str, problem: str) -> None:
    with pytest.raises(PlaylistInvalid) as info:
        validate(text, expect="ll")
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_validator_rejects_bad_vod_and_plain() -> None:
    with pytest.raises(PlaylistInvalid, match="needs #EXT-X-ENDLIST"):
        validate(render_plain(view(3)), expect="vod")
    with pytest.raises(PlaylistInvalid, match="must not carry LL-HLS tags"):
        validate(GOOD, expect="plain")


def test_validator_rejects_stale_parts() -> None:
    old_parts = view(8)
    segments = tuple(segment(s.msn, with_parts=True) for s in old_parts.segments)
    text = render_ll(
        PlaylistView(
            segments, old_parts.open_segment, old_parts.preload_hint_uri, PART_S, 4.096, False
        ),
        part_segments=8,
    )
    with pytest.raises(PlaylistInvalid, match="still lists parts"):
        validate(text, expect="ll")


def test_part_target_is_never_below_a_rounded_part_duration() -> None:
    part_s = 5 * 1024 / 48000  # 0.1066666...: part_ms=100
    seg = SegmentRef(
        0,
        "seg/0.m4s",
        4 * part_s,
        "init/0.mp4",
        False,
        T0,
        tuple(PartRef(f"part/0.{i}.m4s", part_s) for i in range(4)),
    )
    text = render_ll(PlaylistView((seg,), None, "part/1.0.m4s", part_s, 4 * part_s, False))
    parsed = validate(text, expect="ll")
    assert parsed.part_target_s == pytest.approx(0.106667)
    assert all(p.duration_s <= parsed.part_target_s for p in parsed.all_parts)
