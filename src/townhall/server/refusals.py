"""Refused API answers, remembered per client network and per bearer token
(issue 10): a network, or one token replayed from many networks, whose API
requests keep being refused (401, 429) is answered 429 until its bucket
refills, before any work.

Two callers share one record: the HTTP/1.1 driver asks :meth:`Refusals.early`
before it starts an ASGI cycle (two dict lookups and, when refused, a cached
rendered 429: no token decode, no middleware stack), and the ASGI middleware
``server.defense.AuthFailureShield`` asks and counts for every driver.

A token is keyed by its signature segment, so the driver needs no decode to
find it; a token whose signature is wrong never gets a key (it is a 401 at
the first HMAC). Bounded: ``max_keys`` buckets, least recently refreshed
forgotten first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from townhall import metrics
from townhall.errors import TooManyRequests
from townhall.origin.answers import Problem, Rendered
from townhall.policy.netbuckets import NetBuckets, network_of
from townhall.server.auth import Networks, forwarded_client

Header = tuple[bytes, bytes]
REFUSED = (
    "Too many of your recent requests were refused; wait the seconds Retry-After says, "
    "then sign in or join again."
)
_MAX_RENDERED = 512


def bearer_key(value: bytes | str) -> str | None:
    """The bucket key of an ``Authorization`` header value, if it is a bearer token."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    scheme, _, raw = text.partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        return None
    return "sig:" + raw.rpartition(".")[2]


class Refusals:
    def __init__(self, per_10s: int, max_keys: int, trusted: Networks) -> None:
        self.buckets = NetBuckets(per_10s, 10.0, max_keys=max_keys)
        self.trusted = trusted
        self._early = metrics.RATE_LIMITED.labels(limit="refusals-early")
        self._rendered: dict[tuple[bytes, int], Rendered] = {}

    def client(self, peer: str | None, headers: Sequence[Header]) -> str | None:
        """The client address: the peer, or behind ``trusted_proxies`` the hop they vouch for."""
        if not self.trusted or peer is None:
            return peer
        forwarded = [v.decode("latin-1") for k, v in headers if k == b"x-forwarded-for"]
        return forwarded_client(peer, forwarded, self.trusted)

    def wait_s(self, key: str, now_s: float) -> float:
        """0.0 when ``key`` may go on, else seconds until its bucket has room."""
        return self.buckets.check(key, now_s)

    def hit(self, keys: Sequence[str], now_s: float) -> None:
        """One more refusal for each of ``keys``."""
        for key in keys:
            self.buckets.hit(key, now_s)

    def early(
        self,
        peer: str | None,
        url: bytes,
        headers: Sequence[Header],
        vouched: Callable[[bytes, Sequence[Header]], bool] | None = None,
    ) -> Rendered | None:
        """The driver's check for an /api/ request: a 429 to send, or None.
        ``vouched(url, headers)``: may this request pass its network's
        refusal (a host's own action, ``server/host_pass.py``)? Its token's
        key still applies."""
        now = time.monotonic()
        # a key near its limit pays for what it lets through: however many of its
        # requests are in flight, at most its rate of them reach the app
        wait = self.buckets.hit_if_busy(network_of(self.client(peer, headers)), now)
        if wait and vouched is not None and vouched(url, headers):
            wait = 0.0
        if not wait:
            for name, value in headers:
                if name == b"authorization":
                    key = bearer_key(value)
                    wait = self.buckets.hit_if_busy(key, now) if key is not None else 0.0
                    break
        if not wait:
            return None
        self._early.inc()
        path = url.partition(b"?")[0]
        seconds = max(1, int(-(-wait // 1)))
        found = self._rendered.get((path, seconds))
        if found is None:
            if len(self._rendered) >= _MAX_RENDERED:
                self._rendered.clear()
            error = TooManyRequests(REFUSED, retry_after_s=seconds)
            found = Problem(error).render(path.decode("latin-1"))
            self._rendered[(path, seconds)] = found
        return found
