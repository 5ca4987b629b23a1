"""FastPath.decide without a server: what it claims, what it leaves to the app
(every error and every cold path), the waits it asks for, and that rendered
responses are made once and evicted with the window."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tests.origin.test_window import end, make_window, publish
from townhall.config import Settings
from townhall.origin.fanout import ProgressiveHub
from townhall.origin.rules import (
    FastPath,
    FromDisk,
    Problem,
    Rendered,
    Stream,
    Wait,
    disk_media,
    disk_playlist,
    latest_epoch,
)
from townhall.origin.window import COMPLETE, LiveWindow
from townhall.store.recordings import Manifest

SPACE = "abcdefgh2345"


def make_fast(window: LiveWindow) -> tuple[FastPath, Any]:
    program = SimpleNamespace(
        window=window,
        ended=False,
        progressive=ProgressiveHub(max_lag_ms=1000, burst_ms=0, frame_ms=20),
    )
    settings = Settings(blocking_reload_timeout_s=2.0)
    fast = FastPath(settings, lambda space_id: program if space_id == SPACE else None)
    return fast, program


@pytest.fixture
def live() -> tuple[FastPath, LiveWindow]:
    window = make_window(window_segments=3)
    window.init_segment = b"\x00\x00\x00\x10ftypiso6" + b"\x00" * 4
    for msn in range(4):
        publish(window, msn, 0)
        publish(window, msn, 1)
        end(window, msn)
    publish(window, 4, 0)  # open segment 4 has one part
    return make_fast(window)[0], window


def decide(fast: FastPath, path: str, query: str | None = None, method: str = "GET") -> Any:
    return fast.decide(
        method.encode(), f"/spaces/{SPACE}/{path}".encode(), query.encode() if query else None
    )


def test_media_is_claimed_rendered_once_and_evicted_with_the_window(
    live: tuple[FastPath, LiveWindow],
) -> None:
    fast, window = live
    part = decide(fast, "part/3.1.m4s")
    assert isinstance(part, Rendered) and part.status == 200
    assert part.body == window.part(3, 1)
    assert b"content-length: %d\r\n" % len(part.body) in part.head
    assert part.tail == part.head + b"\r\n" + part.body
    assert decide(fast, "part/3.1.m4s") is part  # rendered once
    assert decide(fast, "part/4.0.m4s", method="HEAD").body == window.part(4, 0)
    segment = decide(fast, "seg/3.m4s")
    assert isinstance(segment, Rendered) and segment.body == window.segment(3)
    init = decide(fast, "init.mp4")
    assert init is decide(fast, "init/0.mp4") and init.body == window.init_segment
    publish(window, 4, 1)
    end(window, 4)  # segment 1 leaves the window
    assert decide(fast, "seg/1.m4s") is None  # from disk: the app
    assert decide(fast, "part/1.0.m4s") is None  # 404: the app
    assert decide(fast, "part/3.1.m4s") is part


@pytest.mark.parametrize(
    ("path", "query", "method"),
    [
        ("part/3.2.m4s", None, "GET"),  # index past the segment's parts: 404
        ("part/3.m4s", None, "GET"),
        ("part/3.1.mp4", None, "GET"),
        ("part/-1.0.m4s", None, "GET"),
        ("part/9.0.m4s", None, "GET"),  # too far ahead: 404
        ("part/1234567890123.0.m4s", None, "GET"),
        ("seg/%33.m4s", None, "GET"),
        ("seg/x.m4s", None, "GET"),
        ("init/1.mp4", None, "GET"),  # another epoch: from disk
        ("init/..mp4", None, "GET"),
        ("live.aac", None, "HEAD"),  # 405 from the app
        ("recording.m4a", None, "GET"),
        ("state.json", None, "GET"),
        ("live.m3u8", "_HLS_msn=abc", "GET"),
        ("live.m3u8", "_HLS_part=1", "GET"),  # part without msn: 400
        ("live.m3u8", "_HLS_msn=1&_HLS_msn=2", "GET"),
        ("live.m3u8", "_HLS_msn=%31", "GET"),
        ("live.m3u8", "_HLS_skip=NO", "GET"),
        ("live.m3u8", "_HLS_msn=7", "GET"),  # more than two past the edge: 400
        ("plain.m3u8", "_HLS_msn=x", "GET"),  # the app validates it too
    ],
)
def test_errors_and_cold_paths_are_left_to_the_app(
    live: tuple[FastPath, LiveWindow], path: str, query: str | None, method: str
) -> None:
    fast, _ = live
    assert decide(fast, path, query, method) is None


def test_other_spaces_and_paths_are_not_claimed(live: tuple[FastPath, LiveWindow]) -> None:
    fast, _ = live
    for raw in (b"/api/spaces", b"/healthz", b"/spaces/abcdefgh2345", b"/spaces/zzzzzzzzzzzz/live.m3u8",
                b"/spaces/abcdefgh2345/../x", "/spaces/é/live.m3u8".encode()):  # fmt: skip
        assert fast.decide(b"GET", raw, None) is None


def test_playlists_ready_or_waiting(live: tuple[FastPath, LiveWindow]) -> None:
    fast, window = live
    plain = decide(fast, "plain.m3u8", "_HLS_msn=99&_HLS_skip=YES")  # ignored on plain
    assert isinstance(plain, Rendered) and b"#EXT-X-PART" not in plain.body
    ll = decide(fast, "live.m3u8", "token=abc")  # unknown parameters are ignored, as the app does
    assert isinstance(ll, Rendered) and b"max-age=1\r\n" in ll.head
    assert decide(fast, "live.m3u8") is ll  # once per version
    blocking = decide(fast, "live.m3u8", "_HLS_msn=4&_HLS_part=0")
    # satisfiable at once: short-lived, so asking again is never answered from a cache
    assert isinstance(blocking, Rendered) and b"max-age=1\r\n" in blocking.head
    wait = decide(fast, "live.m3u8", "_HLS_msn=4&_HLS_part=1&_HLS_skip=YES")
    assert isinstance(wait, Wait) and wait.position == (4, 1)
    assert wait.timeout_s == max(2.0, window.blocking_hold_s)  # three target durations
    whole = decide(fast, "live.m3u8", "_HLS_msn=5")
    assert isinstance(whole, Wait) and whole.position == (5, COMPLETE)
    publish(window, 4, 1)
    answer = wait.answer()
    assert answer is not None and b'"part/4.1.m4s"' in answer.body
    assert b"max-age=6\r\n" in answer.head
    timeout = wait.timeout()
    assert timeout.status == 503 and b"retry-after: 1\r\n" in timeout.head
    assert b"/spaces/abcdefgh2345/live.m3u8" in timeout.body
    assert decide(fast, "live.m3u8") is not ll  # a new version


def test_hinted_part_waits_and_closed_window_answers_through_the_app() -> None:
    window = make_window()
    fast, program = make_fast(window)
    first = decide(fast, "live.m3u8")
    # nothing recorded yet: a request without directives waits for the first
    # whole segment (plain-HLS players need one), at most one segment
    assert isinstance(first, Wait) and first.position == (0, COMPLETE)
    assert first.timeout_s <= window.segment_target_s + 1.0
    assert isinstance(decide(fast, "live.m3u8", "_HLS_msn=0&_HLS_part=0"), Wait)
    publish(window, 0, 0)
    hinted = decide(fast, "part/0.1.m4s")
    assert isinstance(hinted, Wait) and hinted.answer() is None  # not there yet
    stream = decide(fast, "live.aac")
    assert isinstance(stream, Stream) and stream.hub is program.progressive
    assert b"content-type: audio/aac\r\n" in stream.head and b"content-length" not in stream.head
    window.close(ended=True)
    assert hinted.answer() is None  # never came: the app says 404
    assert decide(fast, "part/0.1.m4s") is None
    assert decide(fast, "live.aac") is None
    ended = decide(fast, "live.m3u8", "_HLS_msn=3")
    assert isinstance(ended, Rendered) and b"max-age=86400" in ended.head


def answer(fast: FastPath, path: str, query: str | None = None, method: str = "GET") -> Any:
    return fast.answer(
        method.encode(), f"/spaces/{SPACE}/{path}".encode(), query.encode() if query else None
    )


@pytest.mark.parametrize(
    ("path", "query", "method", "want"),
    [
        ("part/3.1.m4s", None, "GET", Rendered),
        ("part/3.1.m4s", None, "HEAD", Rendered),
        ("part/4.1.m4s", None, "GET", Wait),  # the preload hint
        ("part/5.0.m4s", None, "GET", Wait),  # next segment's first part: hinted soon
        ("part/3.2.m4s", None, "GET", 404),
        ("part/3.m4s", None, "GET", 404),
        ("part/3.1.mp4", None, "GET", 404),
        ("part/-1.0.m4s", None, "GET", 404),
        ("part/6.0.m4s", None, "GET", 404),  # too far ahead
        ("part/0.0.m4s", None, "GET", 404),  # gone from the window
        ("part/1234567890123.0.m4s", None, "GET", 404),
        ("seg/3.m4s", None, "GET", Rendered),
        ("seg/0.m4s", None, "GET", FromDisk),
        ("seg/x.m4s", None, "GET", 404),
        ("init.mp4", None, "GET", Rendered),
        ("init/0.mp4", None, "GET", Rendered),
        ("init/1.mp4", None, "GET", FromDisk),
        ("init/..mp4", None, "GET", 404),
        ("live.aac", None, "GET", Stream),
        ("live.aac", None, "HEAD", None),  # the router's 405
        ("recording.m4a", None, "GET", 409),
        ("state.json", None, "GET", None),  # another route's
        ("live.m3u8", None, "POST", None),
        ("live.m3u8", None, "GET", Rendered),
        ("live.m3u8", "_HLS_msn=4&_HLS_part=0", "GET", Rendered),
        ("live.m3u8", "_HLS_msn=4&_HLS_part=1", "GET", Wait),
        ("live.m3u8", "_HLS_msn=%33", "GET", Rendered),  # decoded, as the router does
        ("live.m3u8", "_HLS_msn=1&_HLS_msn=5", "GET", Wait),  # the last one counts
        ("live.m3u8", "_HLS_msn=abc", "GET", 400),
        ("live.m3u8", "_HLS_part=1", "GET", 400),
        ("live.m3u8", "_HLS_skip=NO", "GET", 400),
        ("live.m3u8", "_HLS_msn=7", "GET", 400),  # more than two past the edge
        ("plain.m3u8", "_HLS_msn=x", "GET", 400),
        ("plain.m3u8", "_HLS_msn=99", "GET", Rendered),  # ignored on plain
    ],
)
def test_the_rules_table(
    live: tuple[FastPath, LiveWindow], path: str, query: str | None, method: str, want: Any
) -> None:
    fast, _ = live
    got = answer(fast, path, query, method)
    if isinstance(want, int):
        assert isinstance(got, Problem) and got.status == want
        assert got.error.detail.endswith((".", "m4s."))  # a sentence a person can act on
    elif want is None:
        assert got is None
    else:
        assert type(got) is want
    fast_kind = type(got) in (Rendered, Wait, Stream)
    decided = decide(fast, path, query, method)
    if "%" in (query or "") or "&_HLS_msn" in (query or ""):
        assert decided is None  # the fast path leaves what needs decoding to the app
    else:
        assert (decided is not None) == fast_kind and (not fast_kind or type(decided) is want)


def test_spaces_not_live_here_read_their_recording(live: tuple[FastPath, LiveWindow]) -> None:
    fast, _ = live
    other = "zzzzzzzzzzzz"

    def cold(name: str, query: bytes | None = None) -> Any:
        return fast.answer(b"GET", f"/spaces/{other}/{name}".encode(), query)

    playlist = cold("live.m3u8", b"_HLS_msn=3")
    assert playlist == FromDisk("playlist", other, plain=False, blocking=True)
    assert cold("plain.m3u8") == FromDisk("playlist", other, plain=True, blocking=False)
    assert cold("seg/12.m4s") == FromDisk("segment", other, 12)
    assert cold("init.mp4") == FromDisk("latest-init", other)
    assert cold("init/2.mp4") == FromDisk("init", other, 2)
    assert cold("recording.m4a") == FromDisk("recording", other)
    for name in ("part/1.0.m4s", "live.aac", "seg/x.m4s"):
        assert isinstance(cold(name), Problem) and cold(name).status == 404
    bad = fast.answer(b"GET", b"/spaces/NOT..AN..ID/live.m3u8", None)
    assert isinstance(bad, Problem) and bad.status == 400
    assert fast.answer(b"GET", b"/spaces/NOT..AN..ID/other", None) is None
    assert fast.decide(b"GET", f"/spaces/{other}/live.m3u8".encode(), None) is None


def test_after_a_disk_read(live: tuple[FastPath, LiveWindow]) -> None:
    fast, window = live
    record = window.history[0]
    manifest = Manifest(
        space_id=SPACE, sample_rate_hz=48000, ended=False, epochs=(0,), segments=(record,)
    )
    want = FromDisk("playlist", SPACE, blocking=True)
    refused = disk_playlist(fast.settings, want, (manifest, {}))
    assert isinstance(refused, Problem) and refused.status == 503
    assert refused.error.retry_after_s == 2
    cache: dict[str, Rendered] = {}
    plain = disk_playlist(fast.settings, FromDisk("playlist", SPACE), (manifest, cache))
    assert isinstance(plain, Rendered) and b"#EXT-X-PART" not in plain.body
    assert disk_playlist(fast.settings, FromDisk("playlist", SPACE), (manifest, cache)) is plain
    missing = disk_playlist(fast.settings, want, None)
    assert isinstance(missing, Problem) and missing.status == 404
    assert latest_epoch(manifest) == 0
    assert isinstance(latest_epoch(None), Problem)
    segment = disk_media(FromDisk("segment", SPACE, 0), b"abc")
    assert isinstance(segment, Rendered) and segment.kind == "segment" and segment.body == b"abc"
    gone = disk_media(FromDisk("init", SPACE, 3), None)
    assert isinstance(gone, Problem) and "init segment 3" in gone.error.detail


def test_a_blocking_reload_released_by_a_closed_window_is_not_cached(
    live: tuple[FastPath, LiveWindow],
) -> None:
    """The room moved to another node (its window here closed, not ended)
    while a blocking reload waited for a part this window never got: the
    answer must not be cached for max-age=6, or every player asking that URL
    again through a cache keeps the old playlist instead of the new window's."""
    fast, window = live
    wait = decide(fast, "live.m3u8", "_HLS_msn=4&_HLS_part=1")
    assert isinstance(wait, Wait)
    reached = decide(fast, "live.m3u8", "_HLS_msn=5")
    assert isinstance(reached, Wait)
    publish(window, 4, 1)
    end(window, 4)  # a part, then the segment: reached answers as usual
    window.close(ended=False)
    answer = wait.answer()
    assert answer is not None and b"max-age=6\r\n" in answer.head  # (4, 1) was published
    later = decide(fast, "live.m3u8", "_HLS_msn=5&_HLS_part=1")  # closed: answered at once
    assert isinstance(later, Rendered) and b"max-age=1\r\n" in later.head
    window2 = make_window(window_segments=3)
    fast2, _ = make_fast(window2)
    publish(window2, 0, 0)
    parked = decide(fast2, "live.m3u8", "_HLS_msn=0&_HLS_part=1")
    assert isinstance(parked, Wait)
    window2.close(ended=False)  # before (0, 1) came
    moved = parked.answer()
    assert moved is not None and b"cache-control: no-cache\r\n" in moved.head, moved.head


@pytest.mark.parametrize(
    ("name", "agent", "at_once"),
    [
        ("live.m3u8", b"Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0", True),  # hls.js, Shaka
        ("live.m3u8", b"AppleCoreMedia/1.0.0.21A329 (iPhone; U; CPU OS 17_0)", True),
        ("live.m3u8", b"Radio/2.1 (Linux;Android 14) ExoPlayerLib/2.19.1", True),
        ("live.m3u8", b"townhall-bench", True),  # its LL-HLS runner
        ("live.m3u8", b"Lavf/60.16.100", False),  # ffmpeg
        ("live.m3u8", b"GStreamer souphttpsrc 1.22.0 libsoup/3.2.2", False),
        ("live.m3u8", b"VLC/3.0.18 LibVLC/3.0.18", False),
        ("live.m3u8", None, False),  # no User-Agent: whole segments
        ("plain.m3u8", b"Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0", False),
    ],
)
def test_only_players_that_cannot_do_ll_hls_wait_for_the_first_whole_segment(
    name: str, agent: bytes | None, at_once: bool
) -> None:
    """Go-live (one part, no segment yet): an LL-HLS player's first
    live.m3u8 (no delivery directives, as hls.js asks) is answered at once so
    the first listener hears the first part (issue 9's start delay); ffmpeg,
    GStreamer, VLC, unknown clients and plain.m3u8 wait for a whole segment
    (issue 12)."""
    window = make_window()
    fast, _ = make_fast(window)
    publish(window, 0, 0)
    headers = [] if agent is None else [(b"user-agent", agent)]
    got = fast.decide(b"GET", f"/spaces/{SPACE}/{name}".encode(), None, None, (None, headers))
    if at_once:
        assert isinstance(got, Rendered), got
        assert b"part/0.0.m4s" in got.body
    else:
        assert isinstance(got, Wait) and got.position == (0, COMPLETE), got
