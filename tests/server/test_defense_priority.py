"""Priority in the waiting line (issues 9 and 10): within one arrival window,
returning clients (a valid "seen before" mark) are numbered first, then
solvers of the challenge, then clients that could not solve; a client that
does not solve is queued (never walled off), and its ticket's exchange is not
asked to solve again. The numbering runs on the real in-memory admission
store; the join path through the real app."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ARGON2, Api
from townhall.config import Settings
from townhall.policy import challenge as pow_
from townhall.policy.priority import Priority
from townhall.server.app import create_app
from townhall.server.arrival_window import ArrivalWindow
from townhall.store.admission import MemoryAdmission


async def _numbers(window: ArrivalWindow, order: list[Priority]) -> list[int]:
    async def one(priority: Priority, delay_s: float) -> int:
        await asyncio.sleep(delay_s)
        return await window.number("s", priority)

    return list(await asyncio.gather(*(one(p, i * 0.01) for i, p in enumerate(order))))


async def test_a_window_numbers_by_priority_then_arrival() -> None:
    window = ArrivalWindow(MemoryAdmission().issue, 0.3, 100)
    order: list[Priority] = ["unsolved", "solver", "normal", "returning", "unsolved", "solver"]
    numbers = await _numbers(window, order)
    assert numbers == [5, 2, 3, 1, 6, 4]
    # the next window starts after the first: first come, first served across windows
    assert await _numbers(window, ["returning"]) == [7]
    assert window.statistics().pending == 0


async def test_normal_arrivals_alone_are_numbered_at_once() -> None:
    window = ArrivalWindow(MemoryAdmission().issue, 5.0, 100)
    started = asyncio.get_running_loop().time()
    assert await _numbers(window, ["normal", "normal"]) == [1, 2]
    assert asyncio.get_running_loop().time() - started < 1.0


async def test_the_window_is_bounded_and_a_client_gone_takes_no_number() -> None:
    window = ArrivalWindow(MemoryAdmission().issue, 0.3, 2)
    first = asyncio.create_task(window.number("s", "unsolved"))
    gone = asyncio.create_task(window.number("s", "solver"))
    await asyncio.sleep(0.01)
    assert await window.number("s", "returning") == 1  # over the bound: at once
    gone.cancel()
    assert await first == 2
    assert window.statistics().overflowed == 1
    assert await window.number("s", "normal") == 3  # the cancelled one took no number
    await window.close()


@pytest.fixture
async def capped(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        data_dir=tmp_path / "data",
        max_listeners=2,
        admit_rate_per_s=1000,
        queue_interval_ms=1000,
        queue_priority_window_s=0.5,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        # the line moves only when the test ticks it: a background tick between
        # the window's arrivals (0.05 s apart) would call the first ticket and
        # admit a later arrival at once, which is right but not what is tested
        admitter = app.state.services._admitter
        admitter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await admitter
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def services(client: httpx.AsyncClient) -> Any:
    return client._transport.app.state.services  # type: ignore[attr-defined]


async def _solve(client: httpx.AsyncClient, url: str) -> dict[str, str]:
    """Headers of a solved challenge (asked for by a join with a forged answer)."""
    asked = await client.post(url, headers={"X-Townhall-Pow": "x 0"})
    assert asked.status_code == 429, asked.text
    text, bits = asked.json()["challenge"], asked.json()["bits"]
    return {"X-Townhall-Pow": f"{text} {pow_.solve(text, bits)}"}


async def test_under_pressure_non_solvers_queue_behind_solvers_and_returning_first(
    capped: httpx.AsyncClient,
) -> None:
    api = Api(capped)
    _, host = await api.account("hostess")
    space_id = str((await api.space(host))["id"])
    url = f"/api/spaces/{space_id}/join"
    defense = services(capped).defense
    defense.effort = pow_.Effort(6)

    # places are free, yet a client that does not solve is queued (a ticket, no 429)
    unsolved = await capped.post(url)
    assert unsolved.status_code == 202, unsolved.text
    assert unsolved.json()["reason"] == "unsolved" and unsolved.json()["number"] == 1
    assert "proof-of-work" in unsolved.json()["detail"]

    # one window of arrivals, sent as they come: unsolved, solver, returning solver
    async def later(delay_s: float, headers: dict[str, str]) -> httpx.Response:
        await asyncio.sleep(delay_s)
        return await capped.post(url, headers=headers)

    mark = pow_.mark(defense.key, time.time(), 3600)
    headers_s = await _solve(capped, url)
    headers_r = {"X-Townhall-Seen": mark, **(await _solve(capped, url))}
    answers = await asyncio.gather(later(0.0, {}), later(0.05, headers_s), later(0.1, headers_r))
    assert [a.status_code for a in answers] == [202, 202, 202], [a.text for a in answers]
    numbers = [a.json()["number"] for a in answers]
    assert numbers == [4, 3, 2], numbers  # returning, then solver, then unsolved

    # the line moves; a ticket's exchange is never asked to solve (it waited its turn)
    await services(capped).admission.tick()
    exchange = await capped.post(url, json={"ticket": unsolved.json()["ticket"]})
    assert exchange.status_code == 200, exchange.text
    assert exchange.json()["token"] and exchange.json()["seen_mark"]
