"""The client address behind trusted proxies (X-Forwarded-For), as a pure
function and through the sign-in limit of a real app."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from tests.conftest import FAST_ARGON2
from townhall.config import Settings
from townhall.server.app import create_app
from townhall.server.auth import client_network, forwarded_client, parse_networks

PROXIES = parse_networks("10.0.0.0/8, 192.168.1.1, fd00::/8")


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        # not from a trusted proxy: the header is the client's own claim, ignored
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),
        # one proxy: the address it appended
        ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
        # the client's own (forged) entries left of it are ignored
        ("10.1.2.3", ["6.6.6.6, 1.1.1.1, 198.51.100.1"], "198.51.100.1"),
        # two proxies: skip the trusted hops from the right
        ("10.1.2.3", ["198.51.100.1, 10.9.9.9"], "198.51.100.1"),
        ("10.1.2.3", ["6.6.6.6, 198.51.100.1", "192.168.1.1"], "198.51.100.1"),
        # several header lines are one list
        ("10.1.2.3", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),
        # all hops trusted: the leftmost
        ("10.1.2.3", ["10.0.0.7, 10.0.0.8"], "10.0.0.7"),
        # no header: the proxy itself
        ("10.1.2.3", [], "10.1.2.3"),
        ("10.1.2.3", [" , "], "10.1.2.3"),
        # garbage where the client should be: the last good hop
        ("10.1.2.3", ["198.51.100.1, nonsense"], "10.1.2.3"),
        ("10.1.2.3", ["nonsense, 10.0.0.8"], "10.0.0.8"),
        # ports and brackets as some proxies write them
        ("10.1.2.3", ["198.51.100.1:5555"], "198.51.100.1"),
        ("10.1.2.3", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("10.1.2.3", ["2001:db8::1"], "2001:db8::1"),
        # IPv6 proxy, IPv4-mapped peer
        ("fd00::1", ["198.51.100.1"], "198.51.100.1"),
        ("::ffff:10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
        (None, ["198.51.100.1"], None),
    ],
)
def test_forwarded_client(peer: str | None, header: list[str], client: str | None) -> None:
    assert forwarded_client(peer, header, PROXIES) == client


def test_no_trusted_proxies_means_the_peer() -> None:
    assert forwarded_client("10.1.2.3", ["198.51.100.1"], ()) == "10.1.2.3"
    assert parse_networks("") == ()
    assert parse_networks(" ,") == ()


def test_parse_networks_names_the_bad_entry() -> None:
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33' is not an IP address or CIDR")):
        parse_networks("10.0.0.0/8, 10.0.0.0/33")
    with pytest.raises(ValidationError, match=re.escape("trusted_proxies: 'proxy.local'")):
        Settings(trusted_proxies="proxy.local")


def test_forwarded_addresses_key_on_their_network() -> None:
    client = forwarded_client("10.1.2.3", ["198.51.100.77"], PROXIES)
    assert client_network(client) == "198.51.100.0/24"


async def _signin(client: httpx.AsyncClient, forwarded: str) -> int:
    response = await client.post(
        "/api/sessions",
        json={"username": "nobody", "password": "x"},
        headers={"X-Forwarded-For": forwarded},
    )
    return response.status_code


@pytest.mark.parametrize("trusted", ["127.0.0.0/8", ""])
async def test_signin_limit_keys_on_the_forwarded_network(tmp_path: Path, trusted: str) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        trusted_proxies=trusted,
        signin_per_network_per_min=2,
        signin_per_account_per_min=100,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            assert [await _signin(client, "198.51.100.1") for _ in range(3)] == [401, 401, 429]
            # another network behind the same proxy
            other = await _signin(client, "203.0.113.5")
            assert other == (401 if trusted else 429)
            # a client's own forged entry does not buy it a new budget
            forged = await _signin(client, "203.0.113.99, 198.51.100.1")
            assert forged == 429
