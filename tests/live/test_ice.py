"""WebRTC host candidates stay on the addresses the settings name."""

from __future__ import annotations

import re

import aioice.ice
import pydantic
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from townhall.config import Settings
from townhall.live.ice import loopback_for, parse_addresses, restrict_host_addresses


def test_parse_addresses_names_a_bad_one() -> None:
    assert parse_addresses(" 127.0.0.1, ::1 ") == ["127.0.0.1", "::1"]
    with pytest.raises(ValueError, match="'eth0' is not an IP address"):
        parse_addresses("127.0.0.1,eth0")


def test_settings_refuse_a_bad_address() -> None:
    with pytest.raises(pydantic.ValidationError, match="not an IP address"):
        Settings(webrtc_host_addresses="localhost")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", ["127.0.0.1"]),
        ("localhost", ["127.0.0.1"]),
        ("::1", ["::1"]),
        ("[::1]", ["::1"]),
        ("example.org", []),
        ("10.0.0.1", []),
    ],
)
def test_loopback_for(host: str, expected: list[str]) -> None:
    assert loopback_for(host) == expected


async def test_restricted_peer_offers_only_loopback_candidates() -> None:
    restrict_host_addresses(["127.0.0.1"])
    try:
        assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(False, True) == []
        pc = RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))
        try:
            pc.addTransceiver("audio", direction="sendrecv")
            await pc.setLocalDescription(await pc.createOffer())
            candidates = re.findall(r"a=candidate:\S+ \d+ \w+ \d+ (\S+) ", pc.localDescription.sdp)
        finally:
            await pc.close()
        assert candidates and set(candidates) == {"127.0.0.1"}
    finally:
        restrict_host_addresses(parse_addresses("127.0.0.1"))
