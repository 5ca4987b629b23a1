"""The lean API answers' registry (origin/lean_api.py), pure: fronts first,
then one route per method and path shape, the key one plain segment."""

from __future__ import annotations

from townhall.origin.answers import Rendered
from townhall.origin.asgi_cycle import Request
from townhall.origin.lean_api import LeanApi, LeanCall

REFUSED = Rendered(429, b"retry-after: 1\r\n", b"", "problem")


def request(method: bytes, url: bytes) -> Request:
    return Request(method, url, [], "1.1", True, 0.0)


def registry(refuse: bool = False) -> LeanApi:
    api = LeanApi()
    api.front(b"/api/", lambda peer, req: REFUSED if refuse else None)
    api.route((b"POST",), b"/api/spaces/", b"/join", lambda p, r, k: None, body=True)
    api.route((b"GET", b"HEAD"), b"/spaces/", b"/state.json", lambda p, r, k: None, body=False)
    return api


def test_a_route_claims_its_path_and_names_the_key() -> None:
    api = registry()
    found = api.decide("127.0.0.1", request(b"POST", b"/api/spaces/abc123/join?x=1"))
    assert isinstance(found, LeanCall) and found.key == "abc123" and found.route.body
    state = api.decide(None, request(b"HEAD", b"/spaces/abc123/state.json"))
    assert isinstance(state, LeanCall) and not state.route.body


def test_other_methods_paths_and_keys_are_left_to_the_app() -> None:
    api = registry()
    for method, url in [
        (b"GET", b"/api/spaces/abc/join"),  # another method
        (b"POST", b"/api/spaces/join"),  # no key
        (b"POST", b"/api/spaces//join"),  # empty key
        (b"POST", b"/api/spaces/a/b/join"),  # two segments
        (b"POST", b"/api/spaces/a%2Fb/join"),  # an escape: the app decodes it
        (b"POST", b"/api/spaces/abc/joinx"),
        (b"POST", b"/api/spaces/abc/reactions"),
    ]:
        assert api.decide(None, request(method, url)) is None, url


def test_a_front_answers_before_any_route() -> None:
    api = registry(refuse=True)
    assert api.decide(None, request(b"POST", b"/api/spaces/abc/join")) is REFUSED
    assert isinstance(api.decide(None, request(b"GET", b"/spaces/abc/state.json")), LeanCall)
