"""Accounts: sign-up and sign-in records, with argon2id password hashes.

Hashing runs in a worker thread (argon2 is deliberately slow and would stall the
event loop). A sign-in for an unknown username still pays for one hash check, so
timing does not tell which usernames exist.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from base64 import b32encode
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from townhall.errors import Conflict, ValidationFailed
from townhall.store.db import Database
from townhall.store.models import Account

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
    """argon2id hashing off the event loop. Costs come from the settings."""

    def __init__(self, *, time_cost: int, memory_kib: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=1, type=Type.ID
        )
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; with no hash, spends the same time and says False."""
        return await asyncio.to_thread(self._verify, password_hash, password)

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
