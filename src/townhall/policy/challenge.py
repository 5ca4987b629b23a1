"""Proof-of-work for the join path under pressure: signed, stateless
challenges, one-hash verification, a bounded replay set, and effort control
in the spirit of Tor's proposal 327 (raise the effort while requests are
dropped, lower it as the line drains). Pure: clocks are arguments.

Wire format (docs/CONTRACTS.md): a challenge is the string
``v1.<space_id>.<expires_at>.<bits>.<salt>.<mac>`` where ``mac`` is the
first 16 bytes of HMAC-SHA256(key, everything before it), base64url. The
client finds a ``nonce`` (1-64 printable ASCII characters) such that
SHA-256(challenge + nonce) starts with ``bits`` zero bits, and sends both
back. Expected work is 2**bits hashes: 16 bits is about a second in a
browser's Web Worker (pure JS SHA-256), a few ms for a native solver, which is
why proof-of-work only ever adds to the other layers and never walls anyone
off: a client that cannot solve still gets the waiting room, behind.

Returning clients carry a signed "seen before" mark
(``seen.<expires_at>.<mac>``) given at admission: they are asked
``RETURNING_DISCOUNT_BITS`` fewer bits and get priority in the line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass

RETURNING_DISCOUNT_BITS = 4
MAX_NONCE_CHARS = 64


class ChallengeError(ValueError):
    """A challenge answer that does not pass; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _mac(key: bytes, text: str) -> str:
    digest = hmac.new(key, text.encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


@dataclass(frozen=True, slots=True)
class Challenge:
    space_id: str
    expires_at: int
    bits: int
    salt: str
    text: str


def issue(key: bytes, space_id: str, bits: int, now_s: float, ttl_s: int) -> Challenge:
    salt = secrets.token_urlsafe(12)
    expires_at = int(now_s) + ttl_s
    body = f"v1.{space_id}.{expires_at}.{bits}.{salt}"
    return Challenge(space_id, expires_at, bits, salt, f"{body}.{_mac(key, body)}")


def parse(key: bytes, text: str) -> Challenge:
    """The challenge ``text`` names, if this node's key signed it."""
    if not isinstance(text, str) or len(text) > 256:
        raise ChallengeError("malformed", "The challenge is not one this server issued.")
    body, _, mac = text.rpartition(".")
    parts = body.split(".")
    # the space id may not contain dots (ids are base32), so 5 parts exactly
    if len(parts) != 5 or parts[0] != "v1":
        raise ChallengeError("malformed", "The challenge is not one this server issued.")
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise ChallengeError(
            "forged", "The challenge's signature does not match; ask for a new one."
        )
    try:
        expires_at, bits = int(parts[2]), int(parts[3])
    except ValueError:
        raise ChallengeError("malformed", "The challenge is not one this server issued.") from None
    return Challenge(parts[1], expires_at, bits, parts[4], text)


def check(
    key: bytes, text: str, nonce: str, space_id: str, now_s: float, *, min_bits: int = 0
) -> Challenge:
    """Verify an answer (signature, space, expiry, effort); the challenge if good.

    ``min_bits``: the least effort accepted now (an answer to an easier,
    older challenge than the current effort is still accepted while valid,
    unless under ``min_bits``)."""
    challenge = parse(key, text)
    if challenge.space_id != space_id:
        raise ChallengeError(
            "wrong-space", "This challenge was issued for another space; ask this space for one."
        )
    if challenge.expires_at < now_s:
        raise ChallengeError("expired", "The challenge has expired; ask for a new one.")
    if (
        not isinstance(nonce, str)
        or not 1 <= len(nonce) <= MAX_NONCE_CHARS
        or not nonce.isprintable()
    ):
        raise ChallengeError(
            "malformed", f"The nonce must be 1 to {MAX_NONCE_CHARS} printable characters."
        )
    if challenge.bits < min_bits:
        raise ChallengeError(
            "under-effort", "The challenge is easier than this server asks now; solve a new one."
        )
    digest = hashlib.sha256((challenge.text + nonce).encode()).digest()
    if leading_zero_bits(digest) < challenge.bits:
        raise ChallengeError(
            "under-effort",
            f"The answer does not have {challenge.bits} leading zero bits; keep solving.",
        )
    return challenge


def solve(text: str, bits: int, *, start: int = 0, limit: int = 1 << 28) -> str:
    """A nonce for ``text`` (for tests and the bench's solving clients)."""
    prefix = text.encode()
    for n in range(start, start + limit):
        nonce = format(n, "x")
        if leading_zero_bits(hashlib.sha256(prefix + nonce.encode()).digest()) >= bits:
            return nonce
    raise ValueError("no nonce found within the limit")


class SeenSet:
    """Solved challenges (by salt) until they expire: a replay is refused.
    Bounded at ``max_items``; the oldest expiry goes first when full (then
    counted in ``evicted``: size it above peak solves/s x ttl)."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, int] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, challenge: Challenge, now_s: float) -> bool:
        """True when first seen (and remembered); False for a replay."""
        items = self._items
        while items:
            oldest_salt, expires_at = next(iter(items.items()))
            if expires_at >= now_s:
                break
            del items[oldest_salt]
        if challenge.salt in items:
            return False
        items[challenge.salt] = challenge.expires_at
        if len(items) > self.max_items:
            items.popitem(last=False)
            self.evicted += 1
        return True


# ---------------------------------------------------------------- returning clients


def mark(key: bytes, now_s: float, ttl_s: int) -> str:
    body = f"seen.{int(now_s) + ttl_s}"
    return f"{body}.{_mac(key, 'mark:' + body)}"


def mark_valid(key: bytes, text: str | None, now_s: float) -> bool:
    if not text or len(text) > 128:
        return False
    body, _, mac = text.rpartition(".")
    kind, _, expires = body.partition(".")
    if kind != "seen" or not expires.isdigit():
        return False
    return hmac.compare_digest(mac, _mac(key, "mark:" + body)) and int(expires) >= now_s


# ---------------------------------------------------------------- effort control


@dataclass(frozen=True, slots=True)
class Effort:
    """Effort control state. ``bits`` 0 means no challenge (no pressure);
    ``calm``: consecutive control steps with the line drained."""

    bits: int = 0
    calm: int = 0


def adjust(
    effort: Effort,
    *,
    joins_per_s: float,
    dropped: int,
    queue_len: int,
    threshold_per_s: float,
    min_bits: int,
    start_bits: int,
    max_bits: int,
    settle_steps: int = 5,
) -> Effort:
    """One step of effort control, once per control period.

    - no challenge yet: start at ``start_bits`` when joins pass the threshold
      or requests were dropped;
    - challenging: one bit more while requests are dropped or joins still run
      over twice the threshold; one bit less after ``settle_steps`` steps in a
      row with the line empty and joins under half the threshold; off when
      that goes under ``min_bits``.
    """
    pressed = joins_per_s > threshold_per_s or dropped > 0
    if effort.bits == 0:
        return Effort(max(min_bits, start_bits)) if pressed else effort
    if dropped > 0 or joins_per_s > 2 * threshold_per_s:
        return Effort(min(max_bits, effort.bits + 1))
    if queue_len == 0 and joins_per_s < threshold_per_s / 2:
        if effort.calm + 1 < settle_steps:
            return Effort(effort.bits, effort.calm + 1)
        lower = effort.bits - 1
        return Effort(0 if lower < min_bits else lower)
    return Effort(effort.bits)
