"""HTTP/1.1 response framing shared by the driver's two paths (origin/http1.py
for the fast answers, origin/asgi_cycle.py for the app's): status lines, the
server's own header lines, and the driver's own problem+json answers.

Status lines are written the way uvicorn writes them (``HTTP/1.1 200 OK``),
so an answer is byte-identical whichever server sent it.
"""

from __future__ import annotations

import http
from typing import Any

from townhall import problems

CRLF = b"\r\n"
CLOSE = b"connection: close\r\n"
CHUNKED = b"transfer-encoding: chunked\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %b\r\n" % (status, phrase)


STATUS_LINE = {status: _status_line(status) for status in range(100, 600)}


def server_lines(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """uvicorn's default headers (Date, and Server if configured) as header lines."""
    return b"".join(name + b": " + value + CRLF for name, value in default_headers)


def problem_document(
    status: int, slug: str, title: str, detail: str, instance: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"https://townhall.invalid/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    return body


def problem_bytes(
    document: dict[str, Any],
    default_headers: list[tuple[bytes, bytes]],
    *,
    retry_after_s: float | None = None,
    close: bool = True,
) -> bytes:
    """A whole problem+json response, rendered as the app renders its problems
    (``problems.problem_response``), with ``connection: close`` when ``close``."""
    response = problems.problem_response(document, retry_after_s=retry_after_s)
    lines = b"".join(name.lower() + b": " + value + CRLF for name, value in response.raw_headers)
    return b"".join(
        (
            STATUS_LINE[response.status_code],
            server_lines(default_headers),
            lines,
            CLOSE if close else b"",
            CRLF,
            bytes(response.body),
        )
    )
