"""The password-hashing pool: bounded, refused beyond its queue, apart from
the default thread pool."""

from __future__ import annotations

import asyncio
import threading

import pytest

from townhall.errors import ServiceUnavailable
from townhall.store.accounts import Passwords


async def test_over_the_queue_is_a_503_and_the_default_pool_stays_free() -> None:
    passwords = Passwords(time_cost=2, memory_kib=8192, workers=1, queue=1)
    try:
        names: list[str] = []
        hashed = await passwords.hash("correct horse 1")

        def record_thread() -> bool:
            names.append(threading.current_thread().name)
            return True

        results = await asyncio.gather(
            *(passwords.verify(hashed, "correct horse 1") for _ in range(6)),
            asyncio.to_thread(record_thread),
            return_exceptions=True,
        )
        ok = [r for r in results[:6] if r is True]
        refused = [r for r in results[:6] if isinstance(r, ServiceUnavailable)]
        assert len(ok) == 2 and len(refused) == 4
        assert refused[0].retry_after_s and "try again" in refused[0].detail
        assert not names[0].startswith("townhall-argon2")
        assert await passwords.verify(hashed, "wrong password!") is False
    finally:
        passwords.close()


def test_pool_threads_are_named() -> None:
    passwords = Passwords(time_cost=1, memory_kib=1024, workers=2, queue=0)
    try:
        assert passwords.max_in_flight == 2
    finally:
        passwords.close()
    with pytest.raises(ValueError):
        Passwords(time_cost=1, memory_kib=1024, workers=0)
