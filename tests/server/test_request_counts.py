"""townhall_http_requests_total through the real HTTP/1.1 driver
(origin/http1.py): every answer, the fast path's and the app's, counted
once by route class and status, within a second (origin/request_counts.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.live.test_program import feed, small_settings
from tests.server.test_fastproto import BASE, Conn, serve
from townhall import metrics
from townhall.media.signals import tone
from townhall.origin.request_counts import COUNTS, route_class


def requests() -> dict[tuple[str, str], float]:
    return {
        (sample.labels["route"], sample.labels["status"]): sample.value
        for family in metrics.REQUESTS.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def test_route_classes_are_few_and_by_where_the_path_points() -> None:
    assert route_class("/api/spaces/abc/join") == "app_api"
    assert route_class("/static/js/api.js") == "app_static"
    assert route_class("/healthz") == "app_ops" and route_class("/metrics") == "app_ops"
    assert route_class("/spaces/abc/state.json") == "app_listener"
    assert route_class("/spaces/abc/part/1.2.m4s") == "app_listener"
    assert route_class("/spaces/abc") == "app_page" and route_class("/") == "app_page"
    assert route_class("/no/such/thing") == "app_page"


async def test_every_answer_is_counted_once_by_route_class_and_status(tmp_path: Path) -> None:
    origin, servers = await serve(small_settings(tmp_path, blocking_reload_timeout_s=1.0))
    try:
        await feed(origin.program, tone(1000, 2.0))
        window = origin.program.window
        assert window is not None
        last = window.history[-1].msn
        COUNTS.flush()
        before = requests()
        conn = await Conn.open(servers.fast_port)
        asked = [
            (f"{BASE}/part/{last}.0.m4s", 200),  # the fast path
            (f"{BASE}/part/{last}.0.m4s", 200),
            (f"{BASE}/live.m3u8", 200),
            (f"{BASE}/part/{last}.9.m4s", 404),  # no such part: the app says why
            (f"{BASE}/recording.m4a", 409),  # the app, while live
            ("/api/spaces/nope", 404),
            ("/healthz", 404),  # this test's app has no /healthz
            ("/no/such/thing", 404),
        ]
        for path, status in asked:
            assert (await conn.get(path)).status == status, path
        await conn.close()
        await asyncio.sleep(1.2)  # flushed by the tally's own timer, at most a second later
        after = requests()
        counted = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
        assert counted == {
            ("part", "200"): 2,
            ("playlist", "200"): 1,
            ("app_listener", "404"): 1,
            ("app_listener", "409"): 1,
            ("app_api", "404"): 1,
            ("app_ops", "404"): 1,
            ("app_page", "404"): 1,
        }, counted
    finally:
        await servers.stop()
        await origin.program.suspend()
        await origin.client.aclose()
