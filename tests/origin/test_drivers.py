"""The rules' answers against what the ASGI driver sends, byte for byte, for
every kind of answer: a Rendered answer is what the app sends; a Problem's
``render`` is what the app's error handler sends (so a driver below the
framework may render it itself); a Wait's ``timeout()`` is the app's 503; a
FromDisk is the app's read of the recording."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.live.test_program import SPACE, feed, small_settings
from tests.server.test_hls import Origin
from townhall.media.signals import tone
from townhall.origin.rules import FastPath, FromDisk, Problem, Rendered, Wait, programs_of


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Origin]:
    o = Origin(small_settings(tmp_path, blocking_reload_timeout_s=0.5))
    await o.start()
    try:
        await feed(o.program, tone(1000, 2.0))
        yield o
    finally:
        await o.program.suspend()
        await o.client.aclose()


def raw(response: httpx.Response) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return response.status_code, list(response.headers.raw), response.content


def rendered(answer: Rendered) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return answer.status, answer.headers(), answer.body


async def test_every_answer_kind_is_what_the_app_sends(origin: Origin) -> None:
    rules = FastPath(origin.settings, programs_of(origin.app))
    window = origin.program.window
    assert window is not None
    last, edge = window.history[-1].msn, window.open_msn
    table: list[tuple[str, type]] = [
        ("live.m3u8", Rendered),
        ("live.m3u8?_HLS_skip=YES", Rendered),
        ("plain.m3u8?_HLS_msn=x", Problem),  # validated on plain too
        (f"live.m3u8?_HLS_msn={last}&_HLS_part=1", Rendered),
        (
            f"live.m3u8?_HLS_msn=%3{str(last)[0]}{str(last)[1:]}",
            Rendered,
        ),  # decoded by the rules' strict parse
        (f"live.m3u8?_HLS_msn={edge + 3}", Problem),  # far future: 400
        ("live.m3u8?_HLS_part=1", Problem),
        ("live.m3u8?_HLS_skip=NO", Problem),
        (f"part/{last}.0.m4s", Rendered),
        (f"part/{last}.9.m4s", Problem),
        (f"part/{edge + 3}.0.m4s", Problem),  # too far ahead
        ("part/0.0.m4s", Problem),  # gone from the window
        ("part/x.m4s", Problem),
        (f"seg/{last}.m4s", Rendered),
        ("seg/0.m4s", FromDisk),
        ("seg/99.m4s", FromDisk),  # not there: 404 after the read
        ("seg/x.m4s", Problem),
        ("init.mp4", Rendered),
        ("init/0.mp4", Rendered),
        ("init/7.mp4", FromDisk),
        ("init/x.mp4", Problem),
        ("recording.m4a", Problem),  # 409 while live
    ]
    for url, kind in table:
        path, _, query = url.partition("?")
        full = f"/spaces/{SPACE}/{path}"
        answer = rules.answer(b"GET", full.encode(), query.encode() or None)
        assert type(answer) is kind, url
        response = await origin.get(url)
        if isinstance(answer, Rendered):
            assert rendered(answer) == raw(response), url
        elif isinstance(answer, Problem):
            assert rendered(answer.render(full)) == raw(response), url
            assert response.status_code == answer.status >= 400
        else:
            assert response.status_code in (200, 404), url


async def test_a_space_not_live_here(origin: Origin, tmp_path: Path) -> None:
    rules = FastPath(origin.settings, programs_of(origin.app))
    for url, status in [
        ("/spaces/zzzzzzzzzzzz/live.m3u8", 404),
        ("/spaces/zzzzzzzzzzzz/live.aac", 404),
        ("/spaces/zzzzzzzzzzzz/part/1.0.m4s", 404),
        ("/spaces/Not_An_Id!/live.m3u8", 400),
    ]:
        answer = rules.answer(b"GET", url.encode(), None)
        response = await origin.client.get(url)
        assert response.status_code == status, url
        if isinstance(answer, Problem):
            assert rendered(answer.render(url)) == raw(response), url
        else:
            assert isinstance(answer, FromDisk) and answer.what == "playlist", url
    assert rules.answer(b"GET", b"/spaces/zzzzzzzzzzzz/state.json", None) is None
    assert rules.answer(b"POST", f"/spaces/{SPACE}/live.m3u8".encode(), None) is None


async def test_a_wait_that_times_out_is_the_apps_503(origin: Origin) -> None:
    rules = FastPath(origin.settings, programs_of(origin.app))
    window = origin.program.window
    assert window is not None
    url = f"/spaces/{SPACE}/live.m3u8"
    query = f"_HLS_msn={window.open_msn + 1}"
    answer = rules.answer(b"GET", url.encode(), query.encode())
    assert isinstance(answer, Wait)
    response = await origin.client.get(f"{url}?{query}")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert rendered(answer.timeout()) == raw(response)
