"""Signed tokens: session (after sign-in), listener (from join) and speaker
(from speaker-token), verified by any node that holds the keys, with no lookup.

Tokens are standard JWTs (HS256, PyJWT's HMAC primitive) whose header names
the key (``kid``): the first key signs, every key verifies, so a key can be rotated by putting the new one first
and keeping the old one second until the old tokens have run out.

:class:`TokenSigner` is pure (clock injectable). :func:`load_keys` is the small
piece of I/O that finds the keys: the setting, or a file made once in the data
directory.

:class:`Revocations` (pure) is what sign-out writes: session token ids
revoked before they expire, and per-account "not before" times (sign out
everywhere). ``verify`` checks it for session tokens at the cost of two dict
lookups; entries are forgotten once the tokens they stop have expired.
"""

from __future__ import annotations

import binascii
import hashlib
import heapq
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

import orjson
from jwt.algorithms import HMACAlgorithm
from jwt.utils import base64url_decode, base64url_encode

from townhall.errors import Unauthorized

log = logging.getLogger("townhall.policy")

Kind = Literal["session", "listener", "speaker"]
KINDS: frozenset[str] = frozenset(get_args(Kind))
ALGORITHM = "HS256"
MIN_KEY_BYTES = 32  # HS256 wants at least as many key bytes as hash bytes (RFC 7518)
KEYS_FILE = "signing-keys"


@dataclass(frozen=True, slots=True)
class Claims:
    kind: Kind
    subject: str
    space_id: str | None
    role: str | None
    issued_at: int
    expires_at: int
    token_id: str


def key_id(key: bytes) -> str:
    """A short public name of a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


def new_token_id() -> str:
    return secrets.token_urlsafe(9)


class Revocations:
    """Revoked session tokens (by token id) and per-account not-before times.

    A token id is kept until the token expires; an account's not-before for
    ``horizon_s`` (the session lifetime: every token it stops has expired by
    then). At most ``max_entries`` of each: beyond, the entry that would be
    forgotten first goes now (``on_evict`` is called for each, to count it).
    """

    def __init__(
        self,
        *,
        horizon_s: int,
        max_entries: int = 1_000_000,
        clock: Callable[[], float] = time.time,
        on_evict: Callable[[], object] | None = None,
    ) -> None:
        self.horizon_s = horizon_s
        self.max_entries = max_entries
        self.evicted = 0
        self._on_evict = on_evict
        self._clock = clock
        self._tokens: dict[str, int] = {}  # token id -> expires_at
        self._accounts: dict[str, tuple[int, int]] = {}  # subject -> (not_before, forget_at)
        self._heap: list[tuple[int, str, str]] = []  # (forget_at, "t"|"a", key)

    def __len__(self) -> int:
        return len(self._tokens) + len(self._accounts)

    def revoke(self, token_id: str, expires_at: int) -> None:
        """Stop the token ``token_id`` (which expires at ``expires_at``)."""
        if expires_at <= self._clock() or self._tokens.get(token_id, -1) >= expires_at:
            return
        self._tokens[token_id] = expires_at
        self._push(expires_at, "t", token_id)

    def revoke_all(self, subject: str, not_before: int) -> None:
        """Stop every session of ``subject`` issued at or before ``not_before``."""
        current = self._accounts.get(subject)
        if current is not None and current[0] >= not_before:
            return
        forget_at = not_before + self.horizon_s
        self._accounts[subject] = (not_before, forget_at)
        self._push(forget_at, "a", subject)

    def not_before(self, subject: str) -> int | None:
        entry = self._accounts.get(subject)
        return None if entry is None else entry[0]

    def revoked(self, claims: Claims) -> bool:
        if claims.token_id in self._tokens:
            return True
        entry = self._accounts.get(claims.subject)
        return entry is not None and claims.issued_at <= entry[0]

    def prune(self) -> None:
        """Forget the entries whose tokens have all expired."""
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            self._forget(*heapq.heappop(self._heap))

    def _push(self, forget_at: int, kind: str, key: str) -> None:
        heapq.heappush(self._heap, (forget_at, kind, key))
        self.prune()
        while len(self._tokens) > self.max_entries or len(self._accounts) > self.max_entries:
            if self._forget(*heapq.heappop(self._heap)):
                self.evicted += 1
                if self._on_evict is not None:
                    self._on_evict()

    def _forget(self, forget_at: int, kind: str, key: str) -> bool:
        # stale heap items (an entry renewed later) are skipped
        if kind == "t" and self._tokens.get(key) == forget_at:
            del self._tokens[key]
            return True
        if kind == "a" and key in self._accounts and self._accounts[key][1] == forget_at:
            del self._accounts[key]
            return True
        return False


class TokenSigner:
    """Issue and verify tokens. ``keys[0]`` signs; all keys verify.

    ``verify`` raises :class:`townhall.errors.Unauthorized` whose detail names
    the reason: malformed, bad signature (forged or tampered), expired, wrong
    kind, wrong space.
    """

    def __init__(self, keys: Sequence[bytes], *, clock: Callable[[], float] = time.time) -> None:
        if not keys:
            raise ValueError("TokenSigner needs at least one key")
        for key in keys:
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"signing keys must be at least {MIN_KEY_BYTES} bytes long")
        # PyJWT's HS256 primitive; keys are prepared (and checked not to be
        # asymmetric key material) once here rather than on every token.
        self._hs256 = HMACAlgorithm(HMACAlgorithm.SHA256)
        self._keys = {key_id(k): self._hs256.prepare_key(k) for k in keys}
        self._signing_key = self._keys[key_id(keys[0])]
        self._signing_kid = key_id(keys[0])
        self._clock = clock
        # sign-out: checked for session tokens (set by the server at start-up)
        self.revocations: Revocations | None = None
        self._header_segment = base64url_encode(
            orjson.dumps({"alg": ALGORITHM, "kid": self._signing_kid, "typ": "JWT"})
        )

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def issue(
        self,
        kind: Kind,
        subject: str,
        ttl_s: int,
        *,
        space_id: str | None = None,
        role: str | None = None,
        token_id: str | None = None,
    ) -> str:
        """A signed token valid for ``ttl_s`` seconds from now.

        ``token_id`` keeps the identity of a renewed token (listener renewals);
        otherwise a fresh random id is used.
        """
        return self.mint(kind, subject, ttl_s, space_id=space_id, role=role, token_id=token_id)[0]

    def mint(
        self,
        kind: Kind,
        subject: str,
        ttl_s: int,
        *,
        space_id: str | None = None,
        role: str | None = None,
        token_id: str | None = None,
        issued_at: int | None = None,
    ) -> tuple[str, Claims]:
        """Like :meth:`issue`, also returning the claims signed. ``issued_at``
        (at least now) dates a session after an account's not-before."""
        if kind not in KINDS:
            raise ValueError(f"unknown token kind {kind!r}")
        now = max(int(self._clock()), issued_at or 0)
        claims = Claims(
            kind=kind,
            subject=subject,
            space_id=space_id,
            role=role,
            issued_at=now,
            expires_at=now + int(ttl_s),
            token_id=token_id or new_token_id(),
        )
        return self.issue_claims(claims), claims

    def issue_claims(self, claims: Claims) -> str:
        """Sign exactly these claims (times included): a standard JWT (HS256,
        ``kid`` header) that any JWT library holding the key can verify."""
        payload: dict[str, Any] = {
            "knd": claims.kind,
            "sub": claims.subject,
            "iat": claims.issued_at,
            "exp": claims.expires_at,
            "jti": claims.token_id,
        }
        if claims.space_id is not None:
            payload["spc"] = claims.space_id
        if claims.role is not None:
            payload["rol"] = claims.role
        signing_input = self._header_segment + b"." + base64url_encode(orjson.dumps(payload))
        signature = self._hs256.sign(signing_input, self._signing_key)
        return (signing_input + b"." + base64url_encode(signature)).decode("ascii")

    def verify(self, token: str, *, kind: Kind, space_id: str | None = None) -> Claims:
        """The claims of a valid token of ``kind`` (for ``space_id`` when given)."""
        claims = self.decode(token)
        if claims.kind != kind:
            raise Unauthorized(
                f"The token is of the wrong kind ({claims.kind} token, {kind} token needed)."
            )
        if space_id is not None and claims.space_id != space_id:
            raise Unauthorized(
                "The token is for a different space (wrong space); join this space for a token."
            )
        if kind == "session" and self.revocations is not None and self.revocations.revoked(claims):
            raise Unauthorized("This session was signed out; sign in again.")
        return claims

    def decode(self, token: str) -> Claims:
        """Check signature and expiry, not kind or space."""
        if not isinstance(token, str) or token.count(".") != 2 or not token.isascii():
            raise Unauthorized("The token is malformed; it is not a signed token.")
        raw = token.encode("ascii")
        signing_input, _, signature_segment = raw.rpartition(b".")
        header_segment, _, payload_segment = signing_input.partition(b".")
        try:
            header = orjson.loads(base64url_decode(header_segment))
            signature = base64url_decode(signature_segment)
        except (ValueError, binascii.Error):
            raise Unauthorized("The token is malformed; it is not a signed token.") from None
        if not isinstance(header, dict):
            raise Unauthorized("The token is malformed; it is not a signed token.")
        if header.get("alg") != ALGORITHM:
            raise Unauthorized(
                "The token has a bad signature (forged or tampered): unsupported algorithm."
            )
        key = self._keys.get(str(header.get("kid", "")))
        if key is None:
            raise Unauthorized(
                "The token has a bad signature (forged or tampered): it names an unknown key."
            )
        if not self._hs256.verify(signing_input, key, signature):
            raise Unauthorized("The token has a bad signature (forged or tampered).")
        try:
            payload = orjson.loads(base64url_decode(payload_segment))
        except (ValueError, binascii.Error):
            raise Unauthorized("The token is malformed; it could not be decoded.") from None
        if not isinstance(payload, dict):
            raise Unauthorized("The token is malformed; it could not be decoded.")
        claims = _claims_from(payload)
        if claims.expires_at <= self._clock():
            raise Unauthorized("The token has expired; sign in or join again for a new one.")
        return claims


def _claims_from(payload: dict[str, Any]) -> Claims:
    try:
        kind = payload["knd"]
        subject = payload["sub"]
        issued_at = payload["iat"]
        expires_at = payload["exp"]
        token_id = payload["jti"]
    except KeyError as exc:
        raise Unauthorized(f"The token is malformed; it lacks the {exc.args[0]!r} claim.") from None
    space_id = payload.get("spc")
    role = payload.get("rol")
    if (
        kind not in KINDS
        or not isinstance(subject, str)
        or not isinstance(token_id, str)
        or not isinstance(issued_at, int)
        or not isinstance(expires_at, int)
        or not (space_id is None or isinstance(space_id, str))
        or not (role is None or isinstance(role, str))
    ):
        raise Unauthorized("The token is malformed; a claim has the wrong type.")
    return Claims(
        kind=cast(Kind, kind),
        subject=subject,
        space_id=space_id,
        role=role,
        issued_at=issued_at,
        expires_at=expires_at,
        token_id=token_id,
    )


def parse_keys(text: str) -> list[bytes]:
    """Keys from a comma- or newline-separated string, current first."""
    parts = [p.strip() for p in text.replace("\n", ",").split(",")]
    return [p.encode() for p in parts if p]


def load_keys(configured: str, data_dir: Path) -> list[bytes]:
    """The signing keys: ``configured`` (the setting) if not empty, else the
    keys file in ``data_dir``, created once (mode 0600) with a random key.
    """
    if configured.strip():
        keys = parse_keys(configured)
        for key in keys:
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(
                    f"TOWNHALL_SIGNING_KEYS: every key must be at least {MIN_KEY_BYTES} characters long."
                )
        return keys
    path = data_dir / KEYS_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first; read theirs
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            log.info("generated a signing key in %s", path)
    keys = parse_keys(path.read_text())
    if not keys:
        raise ValueError(f"{path} holds no signing key; delete it to generate a new one.")
    return keys
