"""Which local addresses WebRTC (aioice) gathers host candidates on.

aioice gathers on every non-loopback interface and offers no option to choose.
A server behind a known address, and every test and benchmark here (whose
traffic must stay on loopback), names its addresses instead:
``restrict_host_addresses(["127.0.0.1"])`` replaces aioice's interface lookup
for this process. Calling it with an empty list restores the default.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

import aioice.ice

_ORIGINAL: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses


def parse_addresses(text: str) -> list[str]:
    """Comma-separated IP addresses; raises ValueError naming a bad one."""
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address") from None
    return addresses


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Gather host candidates only on ``addresses`` (all interfaces if empty)."""
    if not addresses:
        setattr(aioice.ice, "get_host_addresses", _ORIGINAL)  # noqa: B010
        return
    chosen = [ipaddress.ip_address(a) for a in addresses]

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            str(a) for a in chosen if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)
        ]

    setattr(aioice.ice, "get_host_addresses", host_addresses)  # noqa: B010


def loopback_for(host: str) -> list[str]:
    """["127.0.0.1"] or ["::1"] when ``host`` is a loopback name or address, else []."""
    if host in ("localhost", ""):
        return ["127.0.0.1"]
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return []
    if address.is_loopback:
        return ["127.0.0.1"] if address.version == 4 else ["::1"]
    return []
