"""Queue tickets: round trip, rotation, and the exact reason of each refusal."""

from __future__ import annotations

import pytest

from townhall.errors import BadRequest, Unauthorized
from townhall.policy import tickets
from townhall.policy.tickets import TicketSigner

KEY_A = b"a" * 32
KEY_B = b"b" * 32


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_round_trip_and_renewal() -> None:
    clock = Clock()
    signer = TicketSigner([KEY_A], ttl_s=60, clock=clock)
    text, ticket = signer.issue("sp1", 7)
    assert text.startswith("tk1.")
    assert signer.verify(text, "sp1") == ticket
    assert ticket.index == 7 and ticket.expires_at == 1_000_060
    clock.now += 50
    renewed_text, renewed = signer.renew(ticket)
    assert renewed.index == 7 and renewed.issued_at == ticket.issued_at
    assert renewed.expires_at == 1_000_110
    clock.now += 20  # the old one has run out, the renewed one has not
    with pytest.raises(Unauthorized) as exc:
        signer.verify(text, "sp1")
    assert exc.value.detail == tickets.EXPIRED
    assert signer.verify(renewed_text, "sp1").index == 7


def test_rotation_old_key_verifies_new_key_signs() -> None:
    old = TicketSigner([KEY_A], ttl_s=60)
    text, _ = old.issue("sp1", 3)
    rotated = TicketSigner([KEY_B, KEY_A], ttl_s=60)
    assert rotated.verify(text, "sp1").index == 3
    new_text, _ = rotated.issue("sp1", 4)
    assert new_text.split(".")[1] != text.split(".")[1]
    with pytest.raises(Unauthorized) as exc:
        old.verify(new_text, "sp1")
    assert exc.value.detail == tickets.UNKNOWN_KEY


def _tamper(text: str) -> str:
    prefix, kid, payload, sig = text.split(".")
    import base64

    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    forged = raw.replace(b'"idx":900', b'"idx":1')
    return ".".join([prefix, kid, base64.urlsafe_b64encode(forged).decode().rstrip("="), sig])


def test_refusals_name_their_reason() -> None:
    signer = TicketSigner([KEY_A], ttl_s=60)
    text, _ = signer.issue("sp1", 900)
    forger = TicketSigner([b"f" * 32], ttl_s=60)
    forged_same_kid = forger.sign(signer.verify(text, "sp1"))
    forged_same_kid = ".".join(
        [*text.split(".")[:2], *forged_same_kid.split(".")[2:]]
    )  # a signature made with another key, under this server's key id
    cases: list[tuple[str, str, type[Exception], str]] = [
        ("junk", "sp1", BadRequest, tickets.MALFORMED),
        ("tk1.x.y", "sp1", BadRequest, tickets.MALFORMED),
        ("x" * 600, "sp1", BadRequest, tickets.MALFORMED),
        (forger.issue("sp1", 1)[0], "sp1", Unauthorized, tickets.UNKNOWN_KEY),
        (forged_same_kid, "sp1", Unauthorized, tickets.FORGED),
        (_tamper(text), "sp1", Unauthorized, tickets.FORGED),
        (text, "sp2", Unauthorized, tickets.WRONG_SPACE),
    ]
    for bad, space, error, detail in cases:
        with pytest.raises(error) as exc:
            signer.verify(bad, space)
        assert exc.value.detail == detail, bad  # type: ignore[attr-defined]


def test_statuses() -> None:
    assert tickets.TicketMalformed(tickets.MALFORMED).status == 400
    assert tickets.TicketInvalid(tickets.FORGED).status == 401
    assert tickets.TicketReused(tickets.REUSED).status == 409


def test_a_ticket_is_not_a_token() -> None:
    from townhall.policy.tokens import TokenSigner

    token = TokenSigner([KEY_A]).issue("listener", "anon-x", 60, space_id="sp1")
    with pytest.raises(BadRequest):
        TicketSigner([KEY_A], ttl_s=60).verify(token, "sp1")
