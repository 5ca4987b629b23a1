"""A preload hint names a part that will exist: after the last part of a
segment (before its end is published) the hint is the next segment's part 0."""

from __future__ import annotations

from tests.origin.test_window import end, make_window, publish


def test_hint_after_the_last_part_is_the_next_segments_first() -> None:
    window = make_window()  # 2 parts per segment
    publish(window, 0, 0)
    assert window.view().preload_hint_uri is not None
    assert window.view().preload_hint_uri.endswith("0.1.m4s")  # type: ignore[union-attr]
    publish(window, 0, 1)  # the last part; the segment end is not published yet
    hint = window.view().preload_hint_uri
    assert hint is not None and hint.endswith("1.0.m4s"), hint
    end(window, 0)
    hint = window.view().preload_hint_uri
    assert hint is not None and hint.endswith("1.0.m4s"), hint
    assert window.normalize(0, 2) == (1, 0)  # a blocking reload for "0.2" waits for 1.0
