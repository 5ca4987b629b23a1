"""Accounts: sign-up and sign-in records, with argon2id password hashes.

Hashing runs in a bounded pool of its own (argon2 is deliberately slow and would
stall the event loop, or starve other thread work). A sign-in for an unknown username still pays for one hash check, so
timing does not tell which usernames exist.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from base64 import b32encode
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from townhall import metrics
from townhall.errors import Conflict, ServiceUnavailable, ValidationFailed
from townhall.store.db import Database
from townhall.store.models import Account

T = TypeVar("T")

USERNAME_RE = re.compile(r"^[a-z0-9_]{3,32}$")
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 256
MAX_DISPLAY_NAME_CHARS = 64


def new_id() -> str:
    """12 lowercase base32 characters from 8 random bytes (docs/CONTRACTS.md)."""
    return b32encode(secrets.token_bytes(8)).decode().rstrip("=").lower()[:12]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class AccountView:
    id: str
    username: str
    display_name: str

    def public(self) -> dict[str, str]:
        return {"id": self.id, "username": self.username, "display_name": self.display_name}


def _view(row: Account) -> AccountView:
    return AccountView(id=row.id, username=row.username, display_name=row.display_name)


def normalize_username(username: str) -> str:
    """Usernames are case-insensitive: stored and compared in lower case."""
    return username.strip().lower()


def validate_signup(username: str, password: str, display_name: str | None) -> tuple[str, str]:
    """(normalized username, display name) or ValidationFailed naming the field."""
    name = normalize_username(username)
    if not USERNAME_RE.fullmatch(name):
        raise ValidationFailed(
            "Field 'username' is invalid: use 3 to 32 letters, digits or underscores.",
            extra={"errors": [{"field": "username", "message": "3-32 of a-z, 0-9, _"}]},
        )
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise ValidationFailed(
            f"Field 'password' is invalid: use {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters.",
            extra={"errors": [{"field": "password", "message": "wrong length"}]},
        )
    shown = (display_name or "").strip() or name
    if len(shown) > MAX_DISPLAY_NAME_CHARS or not shown.isprintable():
        raise ValidationFailed(
            f"Field 'display_name' is invalid: use at most {MAX_DISPLAY_NAME_CHARS} printable characters.",
            extra={"errors": [{"field": "display_name", "message": "too long or unprintable"}]},
        )
    return name, shown


class Passwords:
    """argon2id hashing off the event loop, in a pool of its own.

    ``workers`` threads hash; at most ``queue`` more hashes wait for one. A
    hash asked for beyond that is refused at once with ServiceUnavailable
    (503, Retry-After), so a sign-in flood queues a little or is refused
    instead of starving the default thread pool (DNS, files) or the mixer."""

    def __init__(
        self, *, time_cost: int, memory_kib: int, workers: int = 1, queue: int = 16
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=1, type=Type.ID
        )
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="townhall-argon2")
        self.max_in_flight = workers + queue
        self._in_flight = 0
        self._retry_after_s = max(1.0, (queue / workers + 1) * 0.1)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._in_flight >= self.max_in_flight:
            metrics.PASSWORD_HASHES.labels(outcome="refused").inc()
            raise ServiceUnavailable(
                "Too many sign-ins are being checked right now; try again in a few seconds.",
                retry_after_s=self._retry_after_s,
            )
        self._in_flight += 1
        metrics.PASSWORD_HASH_QUEUE.inc()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._in_flight -= 1
            metrics.PASSWORD_HASH_QUEUE.dec()
            metrics.PASSWORD_HASHES.labels(outcome="done").inc()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; with no hash, spends the same time and says False."""
        return await self._run(self._verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: str) -> bool:
        try:
            self._hasher.verify(password_hash or self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return password_hash is not None


class Accounts:
    """Account records. Every method opens its own short transaction."""

    def __init__(self, db: Database, passwords: Passwords) -> None:
        self.db = db
        self.passwords = passwords

    async def create(self, username: str, password: str, display_name: str | None) -> AccountView:
        """A new account; ValidationFailed (422) on bad fields, Conflict (409) if taken."""
        name, shown = validate_signup(username, password, display_name)
        if await self.by_username(name) is not None:
            raise Conflict(f"The username '{name}' is taken; choose another.")
        password_hash = await self.passwords.hash(password)
        row = Account(
            id=new_id(),
            username=name,
            display_name=shown,
            password_hash=password_hash,
            created_at=utcnow(),
        )
        try:
            async with self.db.session() as session:
                session.add(row)
        except IntegrityError:
            raise Conflict(f"The username '{name}' is taken; choose another.") from None
        return _view(row)

    async def authenticate(self, username: str, password: str) -> AccountView | None:
        """The account when the password matches, else None (same cost either way)."""
        name = normalize_username(username)
        async with self.db.session() as session:
            row = (
                await session.execute(select(Account).where(Account.username == name))
            ).scalar_one_or_none()
        ok = await self.passwords.verify(row.password_hash if row else None, password)
        return _view(row) if ok and row is not None else None

    async def by_username(self, username: str) -> AccountView | None:
        name = normalize_username(username)
        async with self.db.session() as session:
            row = (
                await session.execute(select(Account).where(Account.username == name))
            ).scalar_one_or_none()
        return _view(row) if row else None

    async def by_id(self, account_id: str) -> AccountView | None:
        async with self.db.session() as session:
            row = await session.get(Account, account_id)
        return _view(row) if row else None

    async def by_ids(self, account_ids: Iterable[str]) -> dict[str, AccountView]:
        ids = list(set(account_ids))
        if not ids:
            return {}
        async with self.db.session() as session:
            rows = (await session.execute(select(Account).where(Account.id.in_(ids)))).scalars()
            return {row.id: _view(row) for row in rows}
