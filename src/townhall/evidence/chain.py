"""The evidence chain: each record carries the hash of the one before and an
Ed25519 signature by the node, so anyone holding the node's public key can
check that no record was changed, dropped, reordered or re-signed.

Wire format (docs/EVIDENCE.md): a record is a JSON object. Its *canonical
bytes* are ``orjson.dumps(record without "sig", OPT_SORT_KEYS)``; ``sig`` is
the base64 (standard, padded) Ed25519 signature of those bytes; ``prev`` is
the hex SHA-256 of the previous record's canonical bytes *with* its ``sig``
(``GENESIS`` for ``seq`` 0). ``seq`` counts from 0 without gaps.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS = "0" * 64
ALGORITHM = "Ed25519"


def canonical(record: dict[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k != "sig"}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def record_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()


def public_key_b64(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def key_id(public_b64: str) -> str:
    """A short name of a public key: the first 16 hex of SHA-256 of its raw bytes."""
    return hashlib.sha256(base64.b64decode(public_b64)).hexdigest()[:16]


class ChainWriter:
    """Appends signed records to one space's chain (the caller stores them)."""

    def __init__(
        self, space_id: str, key: Ed25519PrivateKey, *, seq: int = 0, prev: str = GENESIS
    ) -> None:
        self.space_id = space_id
        self._key = key
        self.public_key = public_key_b64(key.public_key())
        self.key_id = key_id(self.public_key)
        self.seq = seq
        self.prev = prev

    def append(self, figures: dict[str, Any]) -> dict[str, Any]:
        record = {
            **figures,
            "space_id": self.space_id,
            "seq": self.seq,
            "prev": self.prev,
            "key_id": self.key_id,
        }
        record["sig"] = base64.b64encode(self._key.sign(canonical(record))).decode()
        self.prev = record_hash(record)
        self.seq += 1
        return record


@dataclass
class Verdict:
    """What :func:`verify_chain` found; ``ok`` only when ``problems`` is empty."""

    records: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    first_s: float | None = None
    last_s: float | None = None
    head: str = GENESIS

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(document: dict[str, Any], *, pinned_key: str | None = None) -> Verdict:
    """Check every link and signature of an evidence document.

    ``pinned_key`` (base64), when given, must equal the document's key (a
    document re-signed with another key and carrying that key fails here).
    Each problem names the record (its position and the ``seq`` it claims).
    """
    verdict = Verdict()
    public = document.get("public_key")
    if not isinstance(public, str):
        verdict.problems.append("the document has no public_key")
        return verdict
    if pinned_key is not None and pinned_key != public:
        verdict.problems.append(
            f"the document's key {key_id(public)} is not the node's key {key_id(pinned_key)}"
        )
        return verdict
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public))
    except ValueError:
        verdict.problems.append("the document's public_key is not an Ed25519 key")
        return verdict
    expected_kid = key_id(public)
    records = document.get("records")
    if not isinstance(records, list):
        verdict.problems.append("the document has no records list")
        return verdict
    prev = GENESIS
    for index, record in enumerate(records):
        name = f"record #{index}"
        if not isinstance(record, dict):
            verdict.problems.append(f"{name} is not an object")
            break
        seq = record.get("seq")
        name = f"record #{index} (seq {seq})"
        if seq != index:
            verdict.problems.append(
                f"{name}: expected seq {index}: a record is missing or out of order"
            )
            break
        if record.get("prev") != prev:
            verdict.problems.append(
                f"{name}: prev does not match the hash of record #{index - 1}: "
                "a record before it was changed, dropped or reordered"
            )
            break
        if record.get("space_id") != document.get("space_id"):
            verdict.problems.append(f"{name}: belongs to space {record.get('space_id')!r}")
            break
        if record.get("key_id") != expected_kid:
            verdict.problems.append(
                f"{name}: signed by key {record.get('key_id')}, not {expected_kid}"
            )
            break
        try:
            key.verify(base64.b64decode(str(record.get("sig", ""))), canonical(record))
        except (InvalidSignature, ValueError):
            verdict.problems.append(
                f"{name}: the signature does not verify: the record was changed"
            )
            break
        prev = record_hash(record)
        verdict.records += 1
        verdict.labels[str(record.get("label"))] += 1
        start = record.get("start_s")
        if isinstance(start, (int, float)) and verdict.first_s is None:
            verdict.first_s = float(start)
        end = record.get("end_s")
        if isinstance(end, (int, float)):
            verdict.last_s = float(end)
    verdict.head = prev
    claimed_head = document.get("head")
    if verdict.ok and claimed_head is not None and claimed_head != prev:
        verdict.problems.append("the document's head is not the hash of its last record")
    return verdict
