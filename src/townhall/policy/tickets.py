"""Signed queue tickets: a place in a space's waiting line that any node
verifies with a key and no lookup.

A ticket says "arrival number ``index`` of space ``space_id``, valid until
``expires_at``". It is signed with HMAC-SHA256 under the token signing keys
(``policy/tokens.py``; the first key signs, every key verifies, the ``kid``
names the key), each key first derived for tickets only, so a ticket is never
mistaken for a token or the other way round. Wire format (URL-safe)::

    tk1.<kid>.<base64url(JSON payload)>.<base64url(signature)>

The arrival index is not yet the place in line: arrivals before a scheduled
start are shuffled when it starts (:func:`townhall.policy.admission.number_of`).
A ticket expires when its holder stops renewing it (each renewal returns a
refreshed ticket with a later expiry and the same index). Single use at
admission is the adapters' job (a bounded set of used numbers per space).

:class:`TicketSigner` is pure (clock injectable); its errors name the reason.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from jwt.utils import base64url_decode, base64url_encode

from townhall.errors import BadRequest, Conflict, Unauthorized
from townhall.policy.tokens import MIN_KEY_BYTES, key_id

PREFIX = "tk1"
MAX_TICKET_CHARS = 512
_DERIVE = b"townhall queue ticket v1"

MALFORMED = "The ticket is malformed; it is not a queue ticket of this server."
FORGED = "The ticket has a bad signature (forged or tampered); join again for a new place in line."
UNKNOWN_KEY = (
    "The ticket has a bad signature (forged or tampered): it names an unknown key; "
    "join again for a new place in line."
)
EXPIRED = (
    "The ticket has expired because it was not renewed in time; join again for a new place in line."
)
WRONG_SPACE = (
    "The ticket is for a different space (wrong space); join this space for a ticket of its own."
)
REUSED = (
    "The ticket has already been used to join (a ticket admits once); renew your listener "
    "token instead, or join again for a new place in line."
)


class TicketMalformed(BadRequest):
    type_slug = "ticket-malformed"


class TicketInvalid(Unauthorized):
    type_slug = "ticket-invalid"


class TicketReused(Conflict):
    type_slug = "ticket-reused"


@dataclass(frozen=True, slots=True)
class Ticket:
    space_id: str
    index: int  # arrival number in the space's sequence, from 1
    issued_at: int
    expires_at: int


class TicketSigner:
    """Issue, renew and verify tickets. ``keys[0]`` signs; all keys verify."""

    def __init__(
        self, keys: Sequence[bytes], ttl_s: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        if not keys:
            raise ValueError("TicketSigner needs at least one key")
        for key in keys:
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"signing keys must be at least {MIN_KEY_BYTES} bytes long")
        self._keys = {key_id(k): hmac.new(k, _DERIVE, hashlib.sha256).digest() for k in keys}
        self._kid = key_id(keys[0])
        self.ttl_s = ttl_s
        self._clock = clock

    def issue(self, space_id: str, index: int) -> tuple[str, Ticket]:
        """A fresh ticket for arrival ``index`` of ``space_id``, valid ``ttl_s``."""
        now = int(self._clock())
        ticket = Ticket(space_id, index, now, now + self.ttl_s)
        return self.sign(ticket), ticket

    def renew(self, ticket: Ticket) -> tuple[str, Ticket]:
        """The same place with a later expiry (the holder is still there)."""
        now = int(self._clock())
        renewed = Ticket(ticket.space_id, ticket.index, ticket.issued_at, now + self.ttl_s)
        return self.sign(renewed), renewed

    def lottery_key(self, space_id: str) -> bytes:
        """The key of a space's pre-start shuffle (the same on every node that
        holds the current signing key; secret, so nobody can pick a place)."""
        return hmac.new(
            self._keys[self._kid], b"lottery:" + space_id.encode(), hashlib.sha256
        ).digest()

    def sign(self, ticket: Ticket) -> str:
        payload = base64url_encode(
            orjson.dumps(
                {
                    "spc": ticket.space_id,
                    "idx": ticket.index,
                    "iat": ticket.issued_at,
                    "exp": ticket.expires_at,
                }
            )
        ).decode("ascii")
        signing_input = f"{PREFIX}.{self._kid}.{payload}"
        return f"{signing_input}.{self._mac(self._keys[self._kid], signing_input)}"

    def verify(self, text: str, space_id: str) -> Ticket:
        """The ticket, if genuine, unexpired and of ``space_id``; otherwise
        raises :class:`TicketMalformed` (400) or :class:`TicketInvalid` (401)
        whose detail names the reason."""
        if not isinstance(text, str) or len(text) > MAX_TICKET_CHARS or not text.isascii():
            raise TicketMalformed(MALFORMED)
        parts = text.split(".")
        if len(parts) != 4 or parts[0] != PREFIX:
            raise TicketMalformed(MALFORMED)
        _, kid, payload_segment, signature = parts
        key = self._keys.get(kid)
        if key is None:
            raise TicketInvalid(UNKNOWN_KEY)
        expected = self._mac(key, f"{PREFIX}.{kid}.{payload_segment}")
        if not hmac.compare_digest(expected, signature):
            raise TicketInvalid(FORGED)
        try:
            payload = orjson.loads(base64url_decode(payload_segment))
        except (ValueError, binascii.Error):
            raise TicketMalformed(MALFORMED) from None
        ticket = _ticket_from(payload)
        if ticket.expires_at <= self._clock():
            raise TicketInvalid(EXPIRED)
        if ticket.space_id != space_id:
            raise TicketInvalid(WRONG_SPACE)
        return ticket

    @staticmethod
    def _mac(key: bytes, signing_input: str) -> str:
        digest = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
        return base64url_encode(digest).decode("ascii")


def _ticket_from(payload: Any) -> Ticket:
    if not isinstance(payload, dict):
        raise TicketMalformed(MALFORMED)
    space_id, index = payload.get("spc"), payload.get("idx")
    issued_at, expires_at = payload.get("iat"), payload.get("exp")
    if (
        not isinstance(space_id, str)
        or not isinstance(index, int)
        or index < 1
        or not isinstance(issued_at, int)
        or not isinstance(expires_at, int)
    ):
        raise TicketMalformed(MALFORMED)
    return Ticket(space_id, index, issued_at, expires_at)
