"""Per-client-network buckets on the listener plane (issue 10), through a real
`townhall serve` on both drivers (the HTTP/1.1 fast path, and with
--no-fast-path the app's routes): playlists without delivery directives and
state.json are limited per /24 (429 problem+json with Retry-After, counted in
/metrics); blocking reloads and parts stay unlimited; other networks are not
touched; a spoofed X-Forwarded-For from an untrusted peer changes nothing.

Clients are bound to distinct loopback source addresses (127.0.x.y), so the
server sees many real client networks."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httptools
import httpx
import pytest

from tests.conftest import LiveServer
from tests.server.test_fast_serve import listen, live_space

pytestmark = pytest.mark.slow

PLAYLISTS = 5  # per 10 s: refills one each 2 s, slow beside a loaded machine's requests
STATES = 5


def client_from(url: str, address: str) -> httpx.Client:
    """A client whose connections leave from ``address`` (a loopback source)."""
    return httpx.Client(
        base_url=url, timeout=15, transport=httpx.HTTPTransport(local_address=address)
    )


@pytest.fixture(params=[True, False], ids=["fast-path", "app"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServer]:
    env = {
        "TOWNHALL_PLAYLISTS_PER_NETWORK_PER_10S": str(PLAYLISTS),
        "TOWNHALL_STATE_PER_NETWORK_PER_10S": str(STATES),
        # the buckets alone: a hammer that ignores Retry-After is otherwise not
        # read until its wait is over (tests/origin/test_retry_penalty.py)
        "TOWNHALL_HTTP_REFUSED_PAUSE_MAX_S": "0",
    }
    args = [] if request.param else ["--no-fast-path"]
    live = LiveServer(tmp_path / "data", env, args).start()
    try:
        yield live
    finally:
        live.stop()


def limited(metrics_text: str, limit: str) -> float:
    found = re.search(
        rf'^townhall_rate_limited_total\{{limit="{limit}"\}} (\S+)$', metrics_text, re.M
    )
    return float(found.group(1)) if found else 0.0


def exhaust(client: httpx.Client, url: str) -> None:
    """Ask until the bucket refuses (bounded), so the next ask is refused too."""
    for _ in range(50):
        if client.get(url).status_code == 429:
            return
    raise AssertionError(f"{url} was never refused")


def assert_429(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    assert "Retry-After" in response.json()["detail"]


def test_playlists_without_directives_are_limited_per_network(server: LiveServer) -> None:
    with client_from(server.url, "127.0.0.1") as host:
        space_id = live_space(host)
    base = f"/spaces/{space_id}"
    with client_from(server.url, "127.0.7.1") as hammer:
        listen(hammer, space_id)  # one playlist: held until the first part
        playlist = hammer.get(f"{base}/live.m3u8")
        assert playlist.status_code == 200
        codes = [hammer.get(f"{base}/live.m3u8").status_code for _ in range(PLAYLISTS + 5)]
        assert codes.count(429) >= 5, codes
        assert set(codes) == {200, 429}, codes
        exhaust(hammer, f"{base}/live.m3u8")
        assert_429(hammer.get(f"{base}/plain.m3u8"))
        # another address of the same /24, and a forged X-Forwarded-For: the same bucket
        exhaust(hammer, f"{base}/live.m3u8")
        with client_from(server.url, "127.0.7.200") as neighbour:
            assert_429(neighbour.get(f"{base}/live.m3u8", headers={"X-Forwarded-For": "10.9.8.7"}))
        # blocking reloads and parts are the LL-HLS path: never limited
        msn, part = map(int, re.findall(r"part/(\d+)\.(\d+)\.m4s", playlist.text)[-1])
        for _ in range(PLAYLISTS + 5):
            blocking = hammer.get(f"{base}/live.m3u8", params={"_HLS_msn": msn, "_HLS_part": part})
            assert blocking.status_code == 200, blocking.text
            media = hammer.get(f"{base}/part/{msn}.{part}.m4s")
            assert media.status_code == 200 and media.content[4:8] == b"moof"
    # many other networks, a few playlists each: none is refused
    for third in range(10, 60):
        with client_from(server.url, f"127.0.{third}.9") as other:
            for _ in range(PLAYLISTS):
                answer = other.get(f"{base}/live.m3u8")
                assert answer.status_code == 200, (third, answer.text)
    with client_from(server.url, "127.0.0.1") as watcher:
        assert limited(watcher.get("/metrics").text, "playlist-network") >= 7


def test_state_json_is_limited_per_network(server: LiveServer) -> None:
    with client_from(server.url, "127.0.0.1") as host:
        space_id = live_space(host)
    url = f"/spaces/{space_id}/state.json"
    with client_from(server.url, "127.0.8.1") as hammer:
        codes = [hammer.get(url).status_code for _ in range(STATES + 5)]
        assert codes[:STATES] == [200] * STATES and codes.count(429) >= 3, codes
        exhaust(hammer, url)
        assert_429(hammer.get(url))
    for third in range(10, 40):
        with client_from(server.url, f"127.0.{third}.3") as other:
            assert other.get(url).status_code == 200
    with client_from(server.url, "127.0.0.1") as watcher:
        assert limited(watcher.get("/metrics").text, "state-network") >= 4


def test_a_replayed_token_is_refused_by_the_driver_before_the_app(tmp_path: Path) -> None:
    """One real listener token replayed from many /24s: once its refusals pass
    the bound, the HTTP driver answers 429 itself (counted as refusals-early),
    on a connection that stays open, while other tokens and networks go on."""
    env = {
        "TOWNHALL_REFUSALS_PER_NETWORK_PER_10S": "3",
        "TOWNHALL_REACTIONS_PER_TOKEN_PER_10S": "1",
    }
    server = LiveServer(tmp_path / "data", env).start()
    try:
        with client_from(server.url, "127.0.0.1") as host:
            space_id = live_space(host)
            token = host.post(f"/api/spaces/{space_id}/join").json()["token"]
            other = host.post(f"/api/spaces/{space_id}/join").json()["token"]
        url = f"/api/spaces/{space_id}/reactions"
        auth = {"Authorization": f"Bearer {token}"}
        statuses = []
        for third in range(30, 40):  # the same token from 10 networks
            with client_from(server.url, f"127.0.{third}.5") as replayer:
                r = replayer.post(url, json={"emoji": "🔥"}, headers=auth)
                statuses.append(r.status_code)
        assert statuses[0] == 202 and set(statuses[1:]) == {429}, statuses
        with client_from(server.url, "127.0.41.5") as replayer:
            for _ in range(3):  # kept alive: three answers on one connection
                refused = replayer.post(url, json={"emoji": "🔥"}, headers=auth)
                assert_429(refused)
                assert "were refused" in refused.json()["detail"]
            assert refused.headers.get("connection") != "close"
            ok = replayer.post(
                url, json={"emoji": "🔥"}, headers={"Authorization": f"Bearer {other}"}
            )
            assert ok.status_code == 202, ok.text
        with client_from(server.url, "127.0.0.1") as watcher:
            assert limited(watcher.get("/metrics").text, "refusals-early") >= 3
    finally:
        server.stop()


def test_cached_state_json_comes_from_the_driver_with_the_apps_bytes(tmp_path: Path) -> None:
    """While state.json is cached, the HTTP/1.1 driver answers it (counted as
    a fast answer) with the route's status, headers and body; 304 on a
    matching If-None-Match; the app's and the driver's answers are the same."""
    env = {"TOWNHALL_STATE_INTERVAL_MS": "2000"}
    fast = LiveServer(tmp_path / "fast", env).start()
    try:
        with client_from(fast.url, "127.0.0.1") as client:
            space_id = live_space(client)
            url = f"/spaces/{space_id}/state.json"
            for _ in range(10):  # two answers of one document (2 s each, a loaded machine)
                first = client.get(url)  # computed by the app (or already cached)
                again = client.get(url)  # from the driver's cache of it
                assert first.status_code == again.status_code == 200, first.text
                if again.headers["etag"] == first.headers["etag"]:
                    break
            assert again.content == first.content
            drop = {"date"}
            assert {k: v for k, v in again.headers.items() if k not in drop} == {
                k: v for k, v in first.headers.items() if k not in drop
            }
            etag = again.headers["etag"]
            cached = client.get(url, headers={"If-None-Match": etag})
            assert cached.status_code == 304 and cached.headers["etag"] == etag
            assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
            time.sleep(1.2)  # fast answers reach Prometheus within a second
            text = client.get("/metrics").text
        found = re.search(r'^townhall_fastpath_responses_total\{kind="state"\} (\S+)$', text, re.M)
        assert found is not None and float(found.group(1)) >= 1
    finally:
        fast.stop()


def test_state_json_is_limited_per_connection_in_the_driver(tmp_path: Path) -> None:
    """A connection that asks state.json faster than a page polls it gets 429
    from the HTTP/1.1 driver (counted as per-connection), while a new
    connection from the same address (another page behind the same NAT) is
    answered: the network's own bucket is far from spent."""
    env = {"TOWNHALL_STATE_PER_CONNECTION_PER_10S": "5"}
    server = LiveServer(tmp_path / "data", env).start()
    try:
        with client_from(server.url, "127.0.0.1") as host:
            space_id = live_space(host)
        url = f"/spaces/{space_id}/state.json"
        with client_from(server.url, "127.0.9.1") as page:
            codes = [page.get(url).status_code for _ in range(5)]
            # the app computes the first, the driver answers while cached:
            # every one counts once the driver answers state.json
            exhaust(page, url)
            refused = page.get(url)
            assert_429(refused)
            assert "on one connection" in refused.json()["detail"]
        assert codes.count(200) >= 4, codes
        with client_from(server.url, "127.0.9.1") as other_page:
            assert other_page.get(url).status_code == 200
        with client_from(server.url, "127.0.0.1") as watcher:
            assert limited(watcher.get("/metrics").text, "per-connection") >= 2
    finally:
        server.stop()


def test_the_listener_page_is_limited_per_connection_in_the_driver(tmp_path: Path) -> None:
    """A connection that loads the listener page over and over (a page flood
    pipelined on one connection) gets 429 from the driver; the app rendered
    the ones within the budget; another connection from the same address
    loads it; the space's other paths on a connection do not count."""
    env = {"TOWNHALL_PAGES_PER_CONNECTION_PER_10S": "3"}
    server = LiveServer(tmp_path / "data", env).start()
    try:
        with client_from(server.url, "127.0.0.1") as host:
            space_id = live_space(host)
        page_url = f"/spaces/{space_id}"
        with client_from(server.url, "127.0.9.2") as flood:
            first = [flood.get(page_url) for _ in range(3)]
            assert all(r.status_code == 200 for r in first), [r.status_code for r in first]
            assert all("text/html" in r.headers["content-type"] for r in first)
            refused = flood.get(page_url)
            assert_429(refused)
            assert "page loads on one connection" in refused.json()["detail"]
        with client_from(server.url, "127.0.9.2") as browser:
            for _ in range(5):  # the page's own documents are not page loads
                assert browser.get(f"/spaces/{space_id}/state.json").status_code == 200
            assert browser.get(page_url).status_code == 200
        with client_from(server.url, "127.0.0.1") as watcher:
            assert limited(watcher.get("/metrics").text, "per-connection") >= 1
    finally:
        server.stop()


def test_a_hammer_pipelining_past_its_429s_is_not_read_until_its_wait_is_over(
    tmp_path: Path,
) -> None:
    """Playlists pipelined on one connection past the network's bucket: the
    fast path answers 429 (Retry-After 1 s) and, from the second refusal of a
    request sent during that wait, the driver stops reading the connection
    (counted); the rest are answered only after the wait."""
    env = {"TOWNHALL_PLAYLISTS_PER_NETWORK_PER_10S": "3"}
    server = LiveServer(tmp_path / "data", env).start()
    try:
        with client_from(server.url, "127.0.0.1") as host:
            space_id = live_space(host)
            listen(host, space_id)  # the program is out: playlists are answered at once
        one = f"GET /spaces/{space_id}/live.m3u8 HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        with socket.create_connection(
            ("127.0.0.1", server.port), source_address=("127.0.11.1", 0)
        ) as sock:
            sock.settimeout(15)
            started = time.monotonic()
            sock.sendall(one * 6)
            parser = _Answers()
            while len(parser.statuses) < 6:
                parser.feed(sock.recv(65536), time.monotonic() - started)
        statuses, times = parser.statuses, parser.times
        assert statuses[:3] == [200] * 3 and statuses[3:5] == [429, 429], statuses
        assert times[4] < 0.8 and times[5] >= 0.9, times  # paused 1 s after the second 429
        with client_from(server.url, "127.0.0.1") as watcher:
            found = re.search(
                r"^townhall_http_refused_pauses_total (\S+)$", watcher.get("/metrics").text, re.M
            )
        assert found is not None and float(found.group(1)) >= 1
    finally:
        server.stop()


class _Answers:
    """HTTP/1.1 answers parsed from a byte stream: their statuses, and when each came."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.times: list[float] = []
        self._now = 0.0
        self._parser = httptools.HttpResponseParser(self)

    def feed(self, data: bytes, now: float) -> None:
        assert data, "the server closed the connection"
        self._now = now
        self._parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.statuses.append(self._parser.get_status_code())
        self.times.append(self._now)


def test_far_future_reloads_pipelined_on_one_connection_are_paused(tmp_path: Path) -> None:
    """A blocking reload for a part years away is 400 with Retry-After 1 s (a
    player reloads without it); a connection that pipelines more of them is
    not read from the second refusal until its wait is over."""
    server = LiveServer(tmp_path / "data", {}).start()
    try:
        with client_from(server.url, "127.0.0.1") as host:
            space_id = live_space(host)
            listen(host, space_id)
            far = host.get(f"/spaces/{space_id}/live.m3u8?_HLS_msn=99999999&_HLS_part=0")
            assert far.status_code == 400 and far.headers["retry-after"] == "1", far.headers
        one = (
            f"GET /spaces/{space_id}/live.m3u8?_HLS_msn=99999999&_HLS_part=0 HTTP/1.1\r\n"
            "Host: t\r\n\r\n"
        ).encode()
        with socket.create_connection(
            ("127.0.0.1", server.port), source_address=("127.0.11.2", 0)
        ) as sock:
            sock.settimeout(15)
            started = time.monotonic()
            sock.sendall(one * 3)
            parser = _Answers()
            while len(parser.statuses) < 3:
                parser.feed(sock.recv(65536), time.monotonic() - started)
        assert parser.statuses == [400, 400, 400], parser.statuses
        times = parser.times
        assert times[1] < 0.8 and times[2] >= 0.9, times  # paused after the second 400
    finally:
        server.stop()
