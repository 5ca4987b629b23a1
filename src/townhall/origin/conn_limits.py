"""The first layer of defense (issue 10): how many connections one client
network and the whole process may hold open, and the file-descriptor limit
that bounds them. Pure bookkeeping, no sockets: the HTTP/1.1 driver asks
``admit`` when a connection arrives and calls ``release`` when it is gone.

A client network is the TCP peer's /24 (IPv4) or /64 (IPv6); an IPv4-mapped
IPv6 address counts as its IPv4 address. Peers inside ``trusted_proxies`` (a
reverse proxy or CDN in front carries many listeners on few connections) are
held only to the total cap. X-Forwarded-For plays no part here: it is read
only by the app's rate limits, after a connection was accepted.
"""

from __future__ import annotations

import ipaddress
import logging
import resource
from dataclasses import dataclass

from townhall.origin.wire import problem_bytes, problem_document

log = logging.getLogger("townhall.http")

# descriptors kept free for files, the database, Redis and the media process
FD_RESERVE_SHARE = 0.1
FD_RESERVE_MIN = 256


def network_of(host: str) -> str:
    """The client network of a peer address: ``"10.1.2"`` for 10.1.2.3 (its /24),
    the first 8 bytes in hex for an IPv6 address (its /64)."""
    if ":" not in host:
        return host.rpartition(".")[0]
    try:
        address = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    mapped = address.ipv4_mapped
    if mapped is not None:
        return str(mapped).rpartition(".")[0]
    return address.packed[:8].hex()


def total_cap(configured: int, fd_soft_limit: int) -> int:
    """Connections allowed in all: ``configured`` (0: derived), never closer
    to the descriptor limit than the reserve."""
    reserve = max(FD_RESERVE_MIN, int(fd_soft_limit * FD_RESERVE_SHARE))
    ceiling = max(1, fd_soft_limit - reserve)
    return ceiling if configured <= 0 else min(configured, ceiling)


def raise_fd_limit() -> tuple[int, int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit. Returns
    (soft before, soft now, hard); logs both."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    now = soft
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            now = target
        except (ValueError, OSError) as exc:
            log.warning(
                "could not raise the file descriptor limit from %d to %d: %s", soft, target, exc
            )
    log.info("file descriptor limit: soft %d (was %d), hard %d", now, soft, hard)
    return soft, now, hard


def fd_soft_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(frozen=True, slots=True)
class ConnStatistics:
    open: int
    networks: int
    total_cap: int
    per_network_cap: int


def parse_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """A setting's comma-separated networks (``trusted_proxies``, ``secret_proxies``)."""
    return [
        ipaddress.ip_network(item.strip(), strict=False) for item in text.split(",") if item.strip()
    ]


def in_networks(
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network], host: str | None
) -> bool:
    """``host`` (an address, an IPv6 zone allowed) is in one of ``networks``."""
    if host is None or not networks:
        return False
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return any(address in net for net in networks)


class ConnLimits:
    """Open connections per client network and in all. ``per_network`` 0 means
    no per-network cap; ``total`` is the cap in all (see ``total_cap``)."""

    def __init__(self, per_network: int, total: int, trusted_proxies: str = "") -> None:
        self.per_network = per_network
        self.total = total
        self.open = 0
        self._by_network: dict[str, int] = {}
        self._trusted = parse_networks(trusted_proxies)

    def trusted_peer(self, host: str) -> bool:
        """``host`` is one of ``trusted_proxies``."""
        return in_networks(self._trusted, host)

    def admit(self, host: str | None) -> tuple[str | None, str]:
        """(refusal reason or None, the network key to ``release`` later).
        An admitted connection is counted; a refused one is not."""
        if self.open >= self.total:
            return "total", ""
        key = ""
        if host is not None and self.per_network > 0 and not self.trusted_peer(host):
            key = network_of(host)
            held = self._by_network.get(key, 0)
            if held >= self.per_network:
                return "network", ""
            self._by_network[key] = held + 1
        self.open += 1
        return None, key

    def release(self, key: str) -> None:
        self.open -= 1
        if key:
            held = self._by_network[key] - 1
            if held:
                self._by_network[key] = held
            else:
                del self._by_network[key]

    def statistics(self) -> ConnStatistics:
        return ConnStatistics(self.open, len(self._by_network), self.total, self.per_network)


class CutAnswers:
    """The driver's answers to a connection it cuts (408 for a head too slow,
    431 for one too large, 400), rendered once per Date line: an attack that
    is cut thousands of times a second pays a dict lookup for each, not a
    problem+json rendering. Bounded: a few kinds of cut, one entry each."""

    MAX_ENTRIES = 64

    def __init__(self) -> None:
        self._rendered: dict[tuple[int, str, str, str], tuple[object, bytes]] = {}

    def get(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        default_headers: list[tuple[bytes, bytes]],
    ) -> bytes:
        key = (status, slug, title, detail)
        found = self._rendered.get(key)
        if found is not None and found[0] is default_headers:
            return found[1]
        answer = problem_bytes(problem_document(status, slug, title, detail, None), default_headers)
        if found is None and len(self._rendered) >= self.MAX_ENTRIES:
            self._rendered.clear()  # details that vary (a parser error's text): start over
        self._rendered[key] = (default_headers, answer)
        return answer
