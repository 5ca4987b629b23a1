"""The one exception tree of townhall.

Every error that can cross the HTTP boundary carries a status and a sentence a
person can act on; the server renders it as ``application/problem+json``
(RFC 9457)::

    TownhallError                      500  something we did not expect
     ├── BadRequest                    400  the request is malformed
     │    └── ValidationFailed         422  a field is wrong (names the field)
     ├── Unauthorized                  401  no, expired, forged or tampered token
     ├── Forbidden                     403  the wrong role, or blocked
     ├── NotFound                      404  no such space, account, file
     ├── Conflict                      409  a seat limit, a state that forbids it
     ├── PayloadTooLarge               413  the body is over the limit
     ├── TooManyRequests               429  rate limited (carries retry_after_s)
     └── ServiceUnavailable            503  full or shutting down (may carry retry_after_s)
          ├── DatabaseUnavailable      503  the control-plane database cannot be reached
          └── NotRunningHere           503  the room runs on another node (or not yet anywhere)

How loudly the server logs each (``log_level``): a 500 is an error; a 503 that
tells the client when to come back is a warning, unless it is the normal
answer of a follower node during a takeover (``NotRunningHere``: info).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar


class TownhallError(Exception):
    """Root of townhall's errors. ``detail`` is the sentence shown to a person."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    type_slug: ClassVar[str] = "internal"
    # the problem answer's Cache-Control (a refusal that is the same for every
    # client may let a shared cache keep it: the media gate's missing token)
    cache_control: ClassVar[str] = "no-store"
    # how the server logs it when status >= 500 (problems.install)
    log_level: ClassVar[int] = logging.ERROR

    def __init__(
        self,
        detail: str,
        *,
        retry_after_s: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.extra = dict(extra or {})

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 problem document for this error."""
        body: dict[str, Any] = {
            "type": f"https://townhall.invalid/problems/{self.type_slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        if self.retry_after_s is not None:
            body["retry_after_s"] = round(self.retry_after_s, 3)
        body.update(self.extra)
        return body


class BadRequest(TownhallError):
    status = 400
    title = "Bad request"
    type_slug = "bad-request"


class ValidationFailed(BadRequest):
    status = 422
    title = "Invalid field"
    type_slug = "invalid-field"


class Unauthorized(TownhallError):
    status = 401
    title = "Not authorized"
    type_slug = "unauthorized"


class Forbidden(TownhallError):
    status = 403
    title = "Forbidden"
    type_slug = "forbidden"


class NotFound(TownhallError):
    status = 404
    title = "Not found"
    type_slug = "not-found"


class Conflict(TownhallError):
    status = 409
    title = "Conflict"
    type_slug = "conflict"


class PayloadTooLarge(TownhallError):
    status = 413
    title = "Payload too large"
    type_slug = "payload-too-large"


class TooManyRequests(TownhallError):
    status = 429
    title = "Too many requests"
    type_slug = "too-many-requests"


class ServiceUnavailable(TownhallError):
    status = 503
    title = "Service unavailable"
    type_slug = "unavailable"
    log_level = logging.WARNING


class DatabaseUnavailable(ServiceUnavailable):
    """The control-plane database cannot be reached (down, restarting, timed
    out). Raised by ``store.db.Database.session`` in place of the driver's
    error, so every endpoint that needs the database answers 503 with
    Retry-After and this sentence, while nothing that does not need it is
    affected."""

    title = "Database unavailable"
    type_slug = "database-unavailable"
    log_level = logging.ERROR

    DETAIL = (
        "This server cannot reach its database right now, so accounts, spaces and the stage "
        "cannot be read or changed; listening is not affected. Try again in a few seconds."
    )


class NotRunningHere(ServiceUnavailable):
    """A live room's owner-only request (a speaker's offer) reached a node that
    does not run the room: the normal answer of a follower, and of every node
    in the seconds of a takeover. The client (or nginx's owner-only upstream)
    tries again, so it is logged at info, not as an error."""

    log_level = logging.INFO
