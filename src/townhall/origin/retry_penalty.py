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

A client that waits as told (its next request starts after the wait) is
never paused; its count starts over once such a request succeeds (a status
below 400: a flood that only gets 401s and 429s keeps doubling). Pure: the
driver passes the clock and does the pausing (``origin/http1.py``).
"""

from __future__ import annotations


class RetryPenalty:
    """The refusals of one connection; ``max_s`` 0 turns pausing off."""

    __slots__ = ("max_s", "strikes", "until_s")

    def __init__(self, max_s: float) -> None:
        self.max_s = max_s
        self.until_s = 0.0  # the latest wait this connection was told of ends here
        self.strikes = 0  # refusals in a row of requests sent during a wait

    def refused(self, started_s: float, now_s: float, retry_after_s: float) -> float:
        """A request that started at ``started_s`` was refused with ``retry_after_s``:
        the seconds to stop reading the connection from ``now_s`` (0.0: go on)."""
        if started_s < self.until_s and self.max_s > 0:
            self.strikes += 1
            pause_s = min(self.max_s, max(retry_after_s, 0.0) * 2.0 ** (self.strikes - 1))
            self.until_s = max(self.until_s, now_s + pause_s)
            return max(0.0, self.until_s - now_s)
        self.until_s = max(self.until_s, now_s + retry_after_s)
        return 0.0

    def answered(self, started_s: float) -> None:
        """A request that started at ``started_s`` succeeded (status below 400)."""
        if started_s >= self.until_s:
            self.strikes = 0
