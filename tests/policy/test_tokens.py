"""TokenSigner: round trip, rotation, and every refusal naming its reason."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import jwt
import orjson
import pytest

from townhall.errors import Unauthorized
from townhall.policy.tokens import TokenSigner, key_id, load_keys

KEY_A = b"a" * 32
KEY_B = b"b" * 32


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_round_trip_keeps_every_claim() -> None:
    clock = Clock()
    signer = TokenSigner([KEY_A], clock=clock)
    token = signer.issue("listener", "anon-x", 300, space_id="s1", role="listener")
    claims = signer.verify(token, kind="listener", space_id="s1")
    assert claims.subject == "anon-x"
    assert claims.space_id == "s1"
    assert claims.role == "listener"
    assert claims.issued_at == 1_800_000_000
    assert claims.expires_at == 1_800_000_300
    assert len(claims.token_id) >= 12


def test_renewal_keeps_token_id() -> None:
    signer = TokenSigner([KEY_A], clock=Clock())
    token, claims = signer.mint("listener", "anon-x", 300, space_id="s1", token_id="same-id")
    assert claims.token_id == "same-id"
    assert signer.verify(token, kind="listener").token_id == "same-id"


def test_expired_token_is_refused() -> None:
    clock = Clock()
    signer = TokenSigner([KEY_A], clock=clock)
    token = signer.issue("session", "acc", 60)
    clock.now += 59
    signer.verify(token, kind="session")
    clock.now += 1
    with pytest.raises(Unauthorized, match="expired"):
        signer.verify(token, kind="session")


def test_wrong_kind_and_wrong_space() -> None:
    signer = TokenSigner([KEY_A], clock=Clock())
    token = signer.issue("listener", "anon", 60, space_id="s1")
    with pytest.raises(Unauthorized, match="wrong kind"):
        signer.verify(token, kind="speaker", space_id="s1")
    with pytest.raises(Unauthorized, match="wrong space"):
        signer.verify(token, kind="listener", space_id="s2")


def _flip_payload(token: str) -> str:
    header, payload, signature = token.split(".")
    data = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["sub"] = "someone-else"
    forged = base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")
    return f"{header}.{forged}.{signature}"


def test_tampered_payload_is_refused() -> None:
    signer = TokenSigner([KEY_A], clock=Clock())
    token = signer.issue("session", "acc", 60)
    with pytest.raises(Unauthorized, match="forged or tampered"):
        signer.verify(_flip_payload(token), kind="session")


def test_forged_with_known_kid_but_other_key_is_refused() -> None:
    signer = TokenSigner([KEY_A], clock=Clock())
    forged = jwt.encode(
        {"knd": "session", "sub": "x", "iat": 0, "exp": 2_000_000_000, "jti": "j"},
        b"z" * 32,
        algorithm="HS256",
        headers={"kid": key_id(KEY_A)},
    )
    with pytest.raises(Unauthorized, match="forged or tampered"):
        signer.verify(forged, kind="session")


def test_alg_none_is_refused() -> None:
    signer = TokenSigner([KEY_A], clock=Clock())
    unsigned = jwt.encode({"knd": "session"}, None, algorithm="none")
    with pytest.raises(Unauthorized, match="forged or tampered"):
        signer.verify(unsigned, kind="session")


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 50, "...."])
def test_malformed_is_refused(garbage: str) -> None:
    signer = TokenSigner([KEY_A], clock=Clock())
    with pytest.raises(Unauthorized, match="malformed"):
        signer.verify(garbage, kind="session")


def test_rotation_previous_key_still_verifies_unknown_kid_rejected() -> None:
    clock = Clock()
    old = TokenSigner([KEY_A], clock=clock)
    old_token = old.issue("session", "acc", 60)
    rotated = TokenSigner([KEY_B, KEY_A], clock=clock)
    assert rotated.verify(old_token, kind="session").subject == "acc"
    new_token = rotated.issue("session", "acc", 60)
    assert jwt.get_unverified_header(new_token)["kid"] == key_id(KEY_B)
    # once the old key is dropped, its tokens name an unknown key
    only_new = TokenSigner([KEY_B], clock=clock)
    with pytest.raises(Unauthorized, match="unknown key"):
        only_new.verify(old_token, kind="session")
    # and a node that never had the new key cannot accept new tokens
    with pytest.raises(Unauthorized, match="unknown key"):
        old.verify(new_token, kind="session")


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        TokenSigner([b"short"])


def test_keys_file_is_created_once_private_and_reused(tmp_path: Path) -> None:
    first = load_keys("", tmp_path)
    path = tmp_path / "signing-keys"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_keys("", tmp_path) == first
    assert len(first) == 1 and len(first[0]) >= 32


def test_configured_keys_win_in_order(tmp_path: Path) -> None:
    keys = load_keys(
        "current-key-0123456789-0123456789, previous-key-0123456789-0123456789", tmp_path
    )
    assert keys == [b"current-key-0123456789-0123456789", b"previous-key-0123456789-0123456789"]
    assert not (tmp_path / "signing-keys").exists()
    with pytest.raises(ValueError, match="at least"):
        load_keys("tiny", tmp_path)


def test_tokens_are_standard_jwts_both_ways() -> None:
    clock = Clock()
    signer = TokenSigner([KEY_A], clock=clock)
    token = signer.issue("speaker", "acc", 60, space_id="s1", role="host")
    decoded = jwt.decode(
        token, KEY_A, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert decoded["sub"] == "acc" and decoded["rol"] == "host"
    foreign = jwt.encode(
        {"knd": "session", "sub": "x", "iat": 0, "exp": 2_000_000_000, "jti": "j"},
        KEY_A,
        algorithm="HS256",
        headers={"kid": key_id(KEY_A)},
    )
    assert signer.verify(foreign, kind="session").subject == "x"


@pytest.mark.parametrize(
    "payload",
    [
        b"[1, 2]",
        b'{"knd": "session"}',
        b'{"knd": "root", "sub": "x", "iat": 0, "exp": 9, "jti": "j"}',
    ],
)
def test_signed_but_nonsense_payload_is_malformed(payload: bytes) -> None:
    signer = TokenSigner([KEY_A], clock=lambda: 0.0)
    header = base64.urlsafe_b64encode(
        orjson.dumps({"alg": "HS256", "kid": key_id(KEY_A), "typ": "JWT"})
    ).rstrip(b"=")
    body = base64.urlsafe_b64encode(payload).rstrip(b"=")
    import hashlib
    import hmac

    signing_input = header + b"." + body
    signature = base64.urlsafe_b64encode(hmac.digest(KEY_A, signing_input, hashlib.sha256))
    token = (signing_input + b"." + signature.rstrip(b"=")).decode()
    with pytest.raises(Unauthorized, match="malformed"):
        signer.verify(token, kind="session")


def test_revocations_stop_tokens_until_they_expire() -> None:
    from townhall.policy.tokens import Revocations

    clock = [1000.0]
    evicted: list[int] = []
    revoked = Revocations(
        horizon_s=100, max_entries=3, clock=lambda: clock[0], on_evict=lambda: evicted.append(1)
    )
    signer = TokenSigner([b"k" * 32], clock=lambda: clock[0])
    signer.revocations = revoked
    token, claims = signer.mint("session", "acct", 50)
    other, _ = signer.mint("session", "acct", 50)
    revoked.revoke(claims.token_id, claims.expires_at)
    with pytest.raises(Unauthorized, match="signed out"):
        signer.verify(token, kind="session")
    assert signer.verify(other, kind="session").subject == "acct"
    listener, lclaims = signer.mint("listener", "acct", 50, space_id="s")
    revoked.revoke(lclaims.token_id, lclaims.expires_at)  # only sessions are checked
    assert signer.verify(listener, kind="listener", space_id="s")
    revoked.revoke_all("acct", int(clock[0]))
    with pytest.raises(Unauthorized, match="signed out"):
        signer.verify(other, kind="session")
    later, _ = signer.mint("session", "acct", 50, issued_at=revoked.not_before("acct") + 1)  # type: ignore[operator]
    assert signer.verify(later, kind="session")
    assert len(revoked) == 3
    clock[0] = 1051.0  # the tokens expired: their entries go
    revoked.prune()
    assert len(revoked) == 1 and revoked.not_before("acct") == 1000
    clock[0] = 1101.0
    revoked.prune()
    assert len(revoked) == 0
    for i in range(5):  # bounded: the first to expire is forgotten early
        revoked.revoke(f"t{i}", 2000 + i)
    assert len(revoked) == 3 and len(evicted) == 2
