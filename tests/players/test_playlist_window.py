"""Playlists stay small (issue 14): live LL-HLS and plain playlists list a
sliding window of the latest segments, whatever the talk's length; the VOD
after the end lists everything."""

from __future__ import annotations

from tests.media.hls_validator import check_reload, validate
from tests.origin.test_window import end, make_window, publish
from townhall.config import Settings
from townhall.origin.playlist import PlaylistView, render_ll, render_plain
from townhall.origin.window import LiveWindow

WINDOW = 3


def talk(window: LiveWindow, segments: int) -> None:
    start = window.open_msn
    for msn in range(start, start + segments):
        publish(window, msn, 0)
        publish(window, msn, 1)
        end(window, msn)


def test_live_playlists_slide_and_stay_small() -> None:
    window = make_window(playlist_segments=WINDOW)
    talk(window, 2)
    short = window.view()
    assert len(short.segments) == 2 and short.sliding
    talk(window, 40)
    sizes = []
    previous = None
    for _ in range(3):
        talk(window, 20)
        view = window.view()
        ll = validate(render_ll(view), expect="ll")
        plain = validate(render_plain(view))
        assert [s.msn for s in ll.segments] == list(range(view.first_msn, view.first_msn + WINDOW))
        assert ll.media_sequence == window.open_msn - WINDOW
        assert ll.playlist_type is None and plain.playlist_type is None  # not EVENT: it slides
        assert len(plain.segments) == WINDOW
        if previous is not None:
            check_reload(previous, ll)
        previous = ll
        sizes.append(len(render_ll(view)))
    assert max(sizes) - min(sizes) <= 8, sizes  # size does not grow with the talk


def test_discontinuities_that_left_the_window_are_counted() -> None:
    window = make_window(playlist_segments=WINDOW, first_msn=0)
    talk(window, 5)
    # a restart: the next segment starts a new discontinuity
    restarted = make_window(
        playlist_segments=WINDOW,
        epoch=1,
        first_msn=window.open_msn,
        history=window.history,
    )
    talk(restarted, 1)
    assert restarted.view().discontinuity_sequence == 0
    talk(restarted, WINDOW)  # the discontinuous segment has left the window
    view = restarted.view()
    assert view.discontinuity_sequence == 1
    parsed = validate(render_ll(view), expect="ll")
    assert parsed.discontinuity_sequence == 1


def test_ended_window_lists_the_whole_recording() -> None:
    window = make_window(playlist_segments=WINDOW)
    talk(window, 10)
    window.close(ended=True)
    view = window.view()
    assert len(view.segments) == 10 and not view.sliding
    vod = validate(render_ll(view), expect="vod")
    assert vod.media_sequence == 0 and len(vod.segments) == 10


def test_unbounded_when_set_to_zero_and_default_is_bounded() -> None:
    window = make_window(playlist_segments=0)
    talk(window, 10)
    view: PlaylistView = window.view()
    assert len(view.segments) == 10 and not view.sliding
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in render_ll(view)
    assert Settings().live_playlist_window_segments > 0
