"""The live caption line's choice of line, in the real browser."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.test_js_units import page, run

pytestmark = pytest.mark.browser
__all__ = ["page"]

LINES = "[{start_s: 10, end_s: 12, text: 'a'}, {start_s: 13, end_s: 16, text: 'b'}]"


def test_line_at_follows_the_player_clock(page: Any) -> None:
    at = f"const L = {LINES}; return [9, 10, 12.5, 14, 19.9, 25].map((t) => m.lineAt(L, t)?.text ?? null);"
    assert run(page, "captions.js", at) == [None, "a", "a", "b", "b", None]


def test_line_at_without_a_comparable_clock_shows_the_newest(page: Any) -> None:
    body = f"const L = {LINES}; return [m.lineAt(L, NaN).text, m.lineAt(L, 5000).text, m.lineAt([], 3)];"
    assert run(page, "captions.js", body) == ["b", "b", None]


def test_behind_live(page: Any) -> None:
    body = "return [m.behindLive(100, 40), m.behindLive(100, 120), m.behindLive(NaN, 3)];"
    assert run(page, "rewind.js", body) == [60, 0, 0]
