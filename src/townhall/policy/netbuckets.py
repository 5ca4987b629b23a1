"""Per-client-network token buckets, O(1) per decision, for the hot paths
(join, ticket exchange, reactions, state.json, playlists without delivery
directives) and the caps that keep one network from inflating a space's
listener count.

Pure: the caller passes the clock. A network is a client's /24 (IPv4) or /64
(IPv6) (:func:`network_of`); the address must already be the real client's
(``server.auth.forwarded_client`` with ``trusted_proxies``).

:class:`NetBuckets` is GCRA (as ``policy.ratelimit``) over an insertion-ordered
dict bounded at ``max_keys``: a full dict forgets its least recently refreshed
network (which then gets a fresh burst), so memory stays flat under a flood
of distinct networks and every decision is a dict lookup and a store.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


def network_of(host: str | None) -> str:
    """The bucket key of an address: ``a.b.c.0/24`` or the /64 of an IPv6
    address (IPv4-mapped IPv6 counts as IPv4); ``unknown`` when not an address.
    The IPv4 case is string work only (no ipaddress objects)."""
    if not host:
        return "unknown"
    if host.count(".") == 3 and ":" not in host:
        a, _, rest = host.partition(".")
        b, _, rest = rest.partition(".")
        c, _, d = rest.partition(".")
        if (a + b + c + d).isdigit() and all(int(x) < 256 for x in (a, b, c, d)):
            return f"{int(a)}.{int(b)}.{int(c)}.0/24"
        return "unknown"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return network_of(str(address.ipv4_mapped))
    if address.version == 4:
        return network_of(str(address))
    return str(ipaddress.ip_network(f"{address}/64", strict=False))


@dataclass(frozen=True, slots=True)
class BucketStats:
    keys: int
    allowed: int
    refused: int


class NetBuckets:
    """``count`` requests per ``period_s`` per key, burst ``count``."""

    __slots__ = ("_allowed", "_refused", "_tats", "count", "interval_s", "max_keys", "period_s")

    def __init__(self, count: int, period_s: float, *, max_keys: int = 100_000) -> None:
        if count < 1 or period_s <= 0 or max_keys < 1:
            raise ValueError("a bucket needs count >= 1, period_s > 0 and max_keys >= 1")
        self.count = count
        self.period_s = period_s
        self.interval_s = period_s / count
        self.max_keys = max_keys
        self._tats: dict[str, float] = {}
        self._allowed = 0
        self._refused = 0

    def hit(self, key: str, now_s: float) -> float:
        """Consume one unit: 0.0 when allowed, else the seconds to wait."""
        tats = self._tats
        tat = tats.pop(key, now_s)  # re-inserted below: most recent at the end
        if tat < now_s:
            tat = now_s
        new_tat = tat + self.interval_s
        over_s = new_tat - now_s - self.period_s
        if over_s > 1e-9:
            tats[key] = tat
            self._refused += 1
            return over_s
        tats[key] = new_tat
        if len(tats) > self.max_keys:
            del tats[next(iter(tats))]
        self._allowed += 1
        return 0.0

    def check(self, key: str, now_s: float) -> float:
        """What ``hit`` would answer, without consuming (0.0: allowed)."""
        tat = self._tats.get(key, now_s)
        over_s = max(tat, now_s) + self.interval_s - now_s - self.period_s
        return over_s if over_s > 1e-9 else 0.0

    def hit_if_busy(self, key: str, now_s: float) -> float:
        """``check`` for a key with nothing counted now; ``hit`` for a key whose
        bucket is in use, so that what passes while a key is near its limit is
        bounded by the rate however many of its requests are in flight."""
        tat = self._tats.get(key)
        if tat is None or tat <= now_s:
            return 0.0
        return self.hit(key, now_s)

    def statistics(self) -> BucketStats:
        return BucketStats(len(self._tats), self._allowed, self._refused)


class NetworkCap:
    """At most ``cap`` counted events per key per generation of ``period_s``.
    Used to keep a flood of tokens from one
    network from inflating a listener count: the listener still listens,
    only the count ignores it."""

    __slots__ = ("_current", "_started_s", "cap", "max_keys", "period_s")

    def __init__(self, cap: int, period_s: float, *, max_keys: int = 100_000) -> None:
        self.cap = cap
        self.period_s = period_s
        self.max_keys = max_keys
        self._current: dict[str, int] = {}
        self._started_s: float | None = None

    def count(self, key: str, now_s: float) -> bool:
        """True when this event may be counted (and counts it)."""
        if self._started_s is None:
            self._started_s = now_s
        elif now_s - self._started_s >= self.period_s:
            self._current = {}
            self._started_s = now_s
        seen = self._current.get(key, 0)
        if seen >= self.cap:
            return False
        if seen == 0 and len(self._current) >= self.max_keys:
            return False
        self._current[key] = seen + 1
        return True
