"""Where evidence lives on disk: the node's keys under ``data_dir`` and each
space's chain beside its recording, ``<recordings_dir>/<space_id>/evidence.jsonl``
(one signed record per line, appended as intervals close, fsynced when the
space ends), so the chain is kept with the recording after the end.

Keys: ``evidence-ed25519.pem`` (the node's signing key, PKCS#8, mode 0600)
and ``evidence-hash.key`` (32 random bytes keying the hashes of client
networks). Both are created on first start and kept.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from townhall.evidence.chain import record_hash
from townhall.store.recordings import check_space_id, fsync_dir, write_durable

CHAIN_FILE = "evidence.jsonl"
SIGNING_KEY_FILE = "evidence-ed25519.pem"
HASH_KEY_FILE = "evidence-hash.key"


def load_or_create_keys(data_dir: Path) -> tuple[Ed25519PrivateKey, bytes]:
    """The node's evidence signing key and hash key, made on first use."""
    data_dir.mkdir(parents=True, exist_ok=True)
    pem_path = data_dir / SIGNING_KEY_FILE
    if pem_path.exists():
        key = load_pem_private_key(pem_path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{pem_path} is not an Ed25519 private key; move it away to make one")
    else:
        key = Ed25519PrivateKey.generate()
        write_durable(
            pem_path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        os.chmod(pem_path, 0o600)
    hash_path = data_dir / HASH_KEY_FILE
    if hash_path.exists():
        hash_key = hash_path.read_bytes()[:32]
    else:
        hash_key = secrets.token_bytes(32)
        write_durable(hash_path, hash_key)
        os.chmod(hash_path, 0o600)
    return key, hash_key


class EvidenceStore:
    """Append, read and seal the chains of spaces under ``recordings_dir``."""

    def __init__(self, recordings_dir: Path) -> None:
        self.recordings_dir = recordings_dir

    def path(self, space_id: str) -> Path:
        return self.recordings_dir / check_space_id(space_id) / CHAIN_FILE

    def append(self, space_id: str, record: dict[str, Any]) -> None:
        path = self.path(space_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as f:
            f.write(orjson.dumps(record) + b"\n")

    def seal(self, space_id: str) -> None:
        """Make the chain durable (the space ended)."""
        path = self.path(space_id)
        with contextlib.suppress(FileNotFoundError), path.open("rb+") as f:
            os.fsync(f.fileno())
            fsync_dir(path.parent)

    def records(self, space_id: str) -> list[dict[str, Any]] | None:
        """Every stored record in order; None when the space has no chain.

        A torn last line (a crash while appending) is left out."""
        try:
            data = self.path(space_id).read_bytes()
        except FileNotFoundError:
            return None
        out: list[dict[str, Any]] = []
        for line in data.splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                break
        return out

    def resume(self, space_id: str) -> tuple[int, str] | None:
        """(next seq, hash of the last record) to continue a chain after a
        restart; cuts a torn last line first so the next append starts clean."""
        records = self.records(space_id)
        if not records:
            return None
        path = self.path(space_id)
        good = sum(len(orjson.dumps(r)) + 1 for r in records)
        if path.stat().st_size != good:
            os.truncate(path, good)
        return int(records[-1]["seq"]) + 1, record_hash(records[-1])
