"""How loudly a failure is logged: a 500 is an error, a 503 with a time to come
back is a warning, and a follower's "the room runs elsewhere" is info (it is
the normal answer during a takeover, many times a second)."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI

from townhall import problems
from townhall.errors import DatabaseUnavailable, NotRunningHere, ServiceUnavailable, TownhallError


def _app() -> FastAPI:
    app = FastAPI()
    problems.install(app)
    raised = {
        "internal": TownhallError("boom"),
        "full": ServiceUnavailable("full; come back in a second", retry_after_s=1.0),
        "database": DatabaseUnavailable(DatabaseUnavailable.DETAIL, retry_after_s=2.0),
        "elsewhere": NotRunningHere("not running here yet", retry_after_s=2.0),
    }

    @app.get("/{name}")
    async def _raise(name: str) -> None:
        raise raised[name]

    return app


@pytest.mark.parametrize(
    ("path", "level"),
    [
        ("internal", logging.ERROR),
        ("full", logging.WARNING),
        ("database", logging.ERROR),
        ("elsewhere", logging.INFO),
    ],
)
async def test_log_level_follows_the_kind_of_failure(
    path: str, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    transport = httpx.ASGITransport(app=_app())
    with caplog.at_level(logging.DEBUG, logger="townhall.access"):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answer = await client.get(f"/{path}")
    assert answer.status_code >= 500
    assert answer.headers["content-type"].startswith("application/problem+json")
    records = [r for r in caplog.records if r.name == "townhall.access"]
    assert [r.levelno for r in records] == [level], caplog.text
