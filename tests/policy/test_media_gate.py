"""The media gate: a listener token from ?t= or the cookie, space-bound, unexpired."""

from __future__ import annotations

import pytest

from townhall.errors import Unauthorized
from townhall.policy import media_gate
from townhall.policy.tokens import TokenSigner

KEY = b"k" * 32


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_token_sources() -> None:
    assert media_gate.token_of("t=abc&x=1", None) == "abc"
    assert media_gate.token_of("_HLS_msn=3&t=abc", "th_listener=zzz") == "abc"
    assert media_gate.token_of("", "a=1; th_listener=zzz; b=2") == "zzz"
    assert media_gate.token_of("x=1", "other=1") is None
    assert media_gate.token_of("", 'bad"cookie') is None
    assert media_gate.token_of("", None) is None


def test_check() -> None:
    clock = Clock()
    tokens = TokenSigner([KEY], clock=clock)
    good = tokens.issue("listener", "anon-1", 60, space_id="sp1")
    assert media_gate.check(tokens, "sp1", f"t={good}", None).space_id == "sp1"
    assert media_gate.check(tokens, "sp1", "", f"th_listener={good}").subject == "anon-1"
    session = tokens.issue("session", "acc", 60)
    other = tokens.issue("listener", "anon-1", 60, space_id="sp2")
    forged = TokenSigner([b"f" * 32]).issue("listener", "anon-1", 60, space_id="sp1")
    cases = [
        ("", None, "This space has a listener limit, so its media needs a listener token"),
        ("t=junk", None, "The token is malformed"),
        (f"t={forged}", None, "The token has a bad signature (forged or tampered)"),
        (f"t={good[:-3]}AAA", None, "The token has a bad signature (forged or tampered)."),
        (f"t={other}", None, "The token is for a different space (wrong space)"),
        (f"t={session}", None, "The token is of the wrong kind"),
    ]
    for query, cookie, start in cases:
        with pytest.raises(Unauthorized) as exc:
            media_gate.check(tokens, "sp1", query, cookie)
        assert exc.value.detail.startswith(start), (query, exc.value.detail)
    clock.now += 61
    with pytest.raises(Unauthorized) as exc:
        media_gate.check(tokens, "sp1", f"t={good}", None)
    assert exc.value.detail.startswith("The token has expired")
