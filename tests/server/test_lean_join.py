"""The HTTP/1.1 driver's lean answers to joins and presence beats (issue 10,
server/lean.py) against the app's routes, through two real `townhall serve`
processes: one answering them in the driver, one with
``TOWNHALL_LEAN_API_ANSWERS=false`` (the framework's routes). Raw sockets from
the same loopback sources send the same requests to both; status line, header
lines in order and bodies must be equal (the Date line dropped; the space id,
tokens, tickets and timings are the only parts that may differ, and are
compared by shape). Malformed queue tickets count as refusals, forged ones are
all refused, and the lean server's answers are counted as fast answers of kind
"api" while the other's are not."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import LiveServer
from tests.server.test_fast_serve import live_space

pytestmark = pytest.mark.slow

ENV = {
    "TOWNHALL_JOINS_PER_NETWORK_PER_10S": "4",
    "TOWNHALL_REFUSALS_PER_NETWORK_PER_10S": "3",
    "TOWNHALL_PROGRAM_WAITS_FOR_HOST": "false",
    # a proxy in front (an HTTP worker passing joins on to the primary, nginx)
    "TOWNHALL_TRUSTED_PROXIES": "127.0.80.1/32",
}


@dataclass
class Reply:
    status: int
    head: list[bytes]  # the status line and header lines, in order, without Date
    headers: dict[bytes, bytes]
    body: bytes


@dataclass
class Server:
    live: LiveServer
    space_id: str  # no cap
    capped: str  # max_listeners 1: the first join is admitted, the rest queue

    def send(self, source: str, raw: bytes) -> list[Reply]:
        """Send ``raw`` (one or more pipelined requests) from ``source``; every reply."""
        count = raw.count(b" HTTP/1.1\r\n")
        with socket.create_connection(("127.0.0.1", self.live.port), 15, (source, 0)) as sock:
            raw = raw.replace(b"{SPACE}", self.space_id.encode())
            sock.sendall(raw.replace(b"{CAPPED}", self.capped.encode()))
            data = b""
            replies: list[Reply] = []
            while len(replies) < count:
                chunk = sock.recv(65536)
                assert chunk, f"closed after {len(replies)} replies: {data!r}"
                data += chunk
                while b"\r\n\r\n" in data:
                    head, _, rest = data.partition(b"\r\n\r\n")
                    lines = head.split(b"\r\n")
                    headers = dict(line.split(b": ", 1) for line in lines[1:])
                    size = int(headers.get(b"content-length", b"0"))
                    if len(rest) < size:
                        break
                    body, data = rest[:size], rest[size:]
                    kept = [line for line in lines if not line.startswith(b"date: ")]
                    replies.append(Reply(int(lines[0].split()[1]), kept, headers, body))
        return [self._neutral(r) for r in replies]

    def _neutral(self, reply: Reply) -> Reply:
        def neutral(data: bytes) -> bytes:
            data = data.replace(self.space_id.encode(), b"SPACE")
            return data.replace(self.capped.encode(), b"CAPPED")

        return Reply(
            reply.status, [neutral(line) for line in reply.head], reply.headers, neutral(reply.body)
        )


def join(body: bytes = b"", space: str = "{CAPPED}", forwarded_for: str = "") -> bytes:
    extra = f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else ""
    head = (
        f"POST /api/spaces/{space}/join HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def start(path: Path, lean: bool) -> Server:
    env = {**ENV, "TOWNHALL_LEAN_API_ANSWERS": "true" if lean else "false"}
    live = LiveServer(path, env).start(timeout_s=90)  # a shared, loaded machine
    with httpx.Client(base_url=live.url, timeout=15) as client:
        space_id = live_space(client)
        user = {"username": "host1", "password": "correct horse 1"}
        session = client.post("/api/sessions", json=user).json()["token"]
        capped = client.post(
            "/api/spaces",
            json={"title": "capped", "visibility": "public", "max_listeners": 1},
            headers={"Authorization": f"Bearer {session}"},
        )
        assert capped.status_code == 201, capped.text
        return Server(live, space_id, str(capped.json()["id"]))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    lean = start(tmp_path_factory.mktemp("lean") / "data", True)
    try:
        app = start(tmp_path_factory.mktemp("app") / "data", False)
        try:
            yield lean, app
        finally:
            app.live.stop()
    finally:
        lean.live.stop()


def same(a: list[Reply], b: list[Reply]) -> None:
    assert [r.status for r in a] == [r.status for r in b]
    for x, y in zip(a, b, strict=True):
        assert x.head == y.head
        assert x.body == y.body


def shape(reply: Reply) -> tuple[int, list[bytes], list[str]]:
    """Status, header names in order, and the body's keys."""
    names = [line.partition(b": ")[0] for line in reply.head[1:]]
    return reply.status, names, sorted(orjson.loads(reply.body))


def fast_answers(server: Server) -> float:
    text = httpx.get(server.live.url + "/metrics", timeout=15).text
    found = re.search(r'^townhall_fastpath_responses_total\{kind="api"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_refusals_of_a_join_are_the_apps_bytes(pair: tuple[Server, Server]) -> None:
    lean, app = pair
    cases = [
        join(b"{not json"),  # 400 malformed JSON
        join(b"[1]"),  # 422 not an object
        join(b'{"ticket": 5}'),  # 422 not a string
        join(b'{"ticket": "t1.' + b"x" * 40 + b'"}'),  # 400 malformed ticket
        join(b'{"ticket": "tk1.kid.eyJ9.c2ln"}'),  # 401 unknown key
        join(b'{"token": "eyJhbGciOiJIUzI1NiJ9.e30.c2ln"}'),  # 401 forged listener token
        join(space="zzzzzzzzzzzz"),  # 404
        (  # 401: the auth shield's answer to a forged bearer token (bench attack's forged)
            b"POST /api/spaces/{SPACE}/reactions HTTP/1.1\r\nHost: t\r\n"
            b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln\r\n"
            b"Content-Type: application/json\r\nContent-Length: 15\r\n\r\n"
            b'{"emoji": "xx"}'
        ),
    ]
    for i, raw in enumerate(cases):
        source = f"127.0.{60 + i}.9"
        got, want = lean.send(source, raw), app.send(source, raw)
        same(got, want)
        assert got[0].status in (400, 401, 404, 422), got[0]
        assert got[0].headers[b"content-type"] == b"application/problem+json"
    time.sleep(1.2)  # fast answers reach Prometheus within a second
    assert fast_answers(lean) >= len(cases)
    assert fast_answers(app) == 0


def test_admitted_queued_and_over_the_bucket_match_the_route(pair: tuple[Server, Server]) -> None:
    """Five joins pipelined from one /24 (bucket 4 per 10 s): the first admitted
    (the cap is 1: a token and the media cookie), three queued (202, a ticket),
    the fifth 429 with Retry-After; each answer as the route's."""
    lean, app = pair
    got = lean.send("127.0.70.9", join() * 5)
    want = app.send("127.0.70.9", join() * 5)
    assert [r.status for r in got] == [200, 202, 202, 202, 429]
    assert [shape(r) for r in got] == [shape(r) for r in want]
    for x, y in zip(got[1:4], want[1:4], strict=True):
        a, b = orjson.loads(x.body), orjson.loads(y.body)
        assert a["reason"] == b["reason"] and a["queue_url"] == b["queue_url"]
        assert a["number"] == b["number"] and a["detail"] == b["detail"]
    timed = (b"content-length: ", b"retry-after: ")  # the wait is to the millisecond
    assert [h for h in got[4].head if not h.startswith(timed)] == [
        h for h in want[4].head if not h.startswith(timed)
    ]
    assert {**orjson.loads(got[4].body), "retry_after_s": 0} == {
        **orjson.loads(want[4].body),
        "retry_after_s": 0,
    }
    assert b"Too many joins from your network" in got[4].body
    # the queued ticket exchanged on the lean path: still waiting (the place is taken)
    ticket = orjson.loads(got[1].body)["ticket"]
    again = lean.send("127.0.71.9", join(orjson.dumps({"ticket": ticket})))[0]
    assert again.status == 202
    assert orjson.loads(again.body)["number"] == orjson.loads(got[1].body)["number"]


def test_malformed_tickets_count_as_refusals_and_forged_ones_never_pass(
    pair: tuple[Server, Server],
) -> None:
    lean, app = pair
    forged = [b'{"ticket": "t1.' + str(i).encode() + b'"}' for i in range(5)]
    seen = []
    for server in (lean, app):
        replies = [server.send("127.0.80.9", join(body))[0] for body in forged]
        # 3 refusals per 10 s (a key near its bound pays as it goes): then the
        # driver's early 429 (refusals-early), as for forged tickets (401)
        statuses = [r.status for r in replies]
        assert statuses[:2] == [400, 400] and statuses[3:] == [429, 429], statuses
        assert b"were refused" in replies[4].body
        seen.append(statuses)
    assert seen[0] == seen[1]
    assert lean.send("127.0.81.9", join(b'{"ticket": "tk1.a.b.c"}'))[0].status == 401
    real = orjson.loads(lean.send("127.0.82.9", join())[0].body)["ticket"]
    signed, _, signature = real.rpartition(".")
    tampered = f"{signed}.{signature[::-1]}"
    refused = lean.send("127.0.83.9", join(orjson.dumps({"ticket": tampered})))[0]
    assert refused.status == 401 and b"ticket" in refused.body


def test_presence_beats_from_the_driver(pair: tuple[Server, Server]) -> None:
    lean, app = pair
    tokens = {}
    for server in (lean, app):
        admitted = server.send("127.0.90.9", join(space="{SPACE}"))[0]
        tokens[server.space_id] = orjson.loads(admitted.body)["token"]
    beat = (
        "POST /api/spaces/{SPACE}/presence HTTP/1.1\r\nHost: t\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    for auth in ("", "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln\r\n"):
        raw = beat.replace("{auth}", auth).encode()
        same(lean.send("127.0.91.9", raw), app.send("127.0.91.9", raw))
    before = fast_answers(lean)
    for server in (lean, app):
        raw = beat.replace("{auth}", f"Authorization: Bearer {tokens[server.space_id]}\r\n")
        (reply,) = server.send("127.0.92.9", raw.encode())
        assert reply.status == 204 and reply.head[1:] == [b"cache-control: no-store"]
    time.sleep(1.2)  # fast answers reach Prometheus within a second
    assert fast_answers(lean) > before


def test_joins_through_a_trusted_proxy_key_on_the_forwarded_network(
    pair: tuple[Server, Server],
) -> None:
    """Joins a trusted proxy passes on (X-Forwarded-For) are answered in the
    driver too, as the route answers them, and each client network behind
    the proxy has its own bucket (4 per 10 s): the fifth join of one is 429,
    the first of another is not; a client's own X-Forwarded-For from an
    untrusted peer is ignored (its peer's network is the key)."""
    lean, app = pair
    before = fast_answers(lean)
    for server in (lean, app):
        one = server.send("127.0.80.1", join(forwarded_for="10.9.9.9") * 5)
        assert [r.status == 429 for r in one] == [False] * 4 + [True], server
        other = server.send("127.0.80.1", join(forwarded_for="10.8.8.8"))
        assert [r.status for r in other] != [429]
        forged = server.send("127.0.81.1", join(forwarded_for="10.7.7.7") * 5)
        assert forged[-1].status == 429  # keyed on 127.0.81.0/24, not 10.7.7.0/24
    assert fast_answers(lean) - before >= 11  # the driver answered them
