"""A layer of issue 10's defense in the HTTP/1.1 driver: a connection that
ignores Retry-After stops being read until it runs out.

A 429 says "wait R seconds". A player does; a flood does not: it pipelines the
next requests behind the refused one, and every one of them costs the server a
parse and a 429 while the legitimate listeners' requests wait behind them in
the same event loop. So a connection whose request is refused while an
earlier refusal's Retry-After is still running (the request was sent, or
read, before that wait was over) is not read, and its queued requests not
answered, until the wait is over; each further refusal of a request sent
during a wait doubles the wait, up to ``max_s``. The flood's pipeline then
stays full and it sends nothing more on that connection: a refused connection
costs the server a timer instead of a 429 per request.

A 401 counts as a refusal with a wait of ``UNAUTHORIZED_WAIT_S``: a client
told its credentials are refused must get new ones (a join, a sign-in)
before it sends them again; a flood of forged tokens does not. Each pause is
stretched by up to half (``spread``, a random number the driver draws), so
that a thousand connections refused at the same moment do not all come back
at the same moment either.

A client that waits as told (its next request starts after the wait) is
never paused; its count starts over once such a request succeeds (a status
below 400: a flood that only gets 401s and 429s keeps doubling). Pure: the
driver passes the clock and does the pausing (``origin/http1.py``).
"""

from __future__ import annotations

UNAUTHORIZED_WAIT_S = 1.0
SPREAD_SHARE = 0.5  # a pause is stretched by up to this share of itself


class RetryPenalty:
    """The refusals of one connection; ``max_s`` 0 turns pausing off."""

    __slots__ = ("max_s", "strikes", "until_s")

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self.until_s = 0.0  # the latest wait this connection was told of ends here
        self.strikes = 0  # refusals in a row of requests sent during a wait

    def refused(
        self, started_s: float, now_s: float, retry_after_s: float, spread: float = 0.0
    ) -> float:
        """A request that started at ``started_s`` was refused with ``retry_after_s``:
        the seconds to stop reading the connection from ``now_s`` (0.0: go on).
        ``spread`` in [0, 1): how much of the stretch to add."""
        if started_s < self.until_s and self.max_s > 0:
            self.strikes += 1
            pause_s = max(retry_after_s, 0.0) * 2.0 ** min(self.strikes - 1, 30)
            pause_s = min(self.max_s, pause_s * (1.0 + SPREAD_SHARE * spread))
            self.until_s = max(self.until_s, now_s + pause_s)
            return max(0.0, self.until_s - now_s)
        self.until_s = max(self.until_s, now_s + retry_after_s)
        return 0.0

    def answered(self, started_s: float) -> None:
        """A request that started at ``started_s`` succeeded (status below 400)."""
        if started_s >= self.until_s:
            self.strikes = 0
