"""POST /api/spaces/{id}/webrtc/offer through the real HTTP interface: a
speaker connects and is heard; bad input gets a problem+json with a reason,
never a 500."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection

from tests.conftest import Api
from townhall.client.speak import PcmTrack, SpeakerClient, http_offer
from townhall.config import Settings
from townhall.media import signals
from townhall.policy.tokens import TokenSigner, load_keys


async def real_offer(kind: str = "audio") -> str:
    pc = RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver(kind, direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


def problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return str(response.json()["detail"])


async def speaker_token(client: httpx.AsyncClient, sid: str, headers: dict[str, str]) -> str:
    response = await client.post(f"/api/spaces/{sid}/speaker-token", headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


async def stage_of_two(
    client: httpx.AsyncClient, api: Api
) -> tuple[str, dict[str, str], dict[str, str]]:
    """A live space with a host and an invited speaker: (space id, host, speaker headers)."""
    _, host = await api.account("host")
    _, guest = await api.account("guest")
    sid = (await api.space(host))["id"]
    response = await client.post(
        f"/api/spaces/{sid}/invites", json={"username": "guest", "role": "speaker"}, headers=host
    )
    assert response.status_code == 200, response.text
    return sid, host, guest


async def test_two_speakers_connect_over_http_and_hear_each_other(
    app_client: httpx.AsyncClient, api: Api
) -> None:
    sid, host, guest = await stage_of_two(app_client, api)
    host_token = await speaker_token(app_client, sid, host)
    guest_token = await speaker_token(app_client, sid, guest)
    a = SpeakerClient(PcmTrack(signals.tone(440.0, 1.0, amplitude=0.3), loop=True))
    b = SpeakerClient(PcmTrack(signals.tone(880.0, 1.0, amplitude=0.3), loop=True))
    try:
        await a.connect(http_offer(app_client, sid, host_token))
        await b.connect(http_offer(app_client, sid, guest_token))
        async with asyncio.timeout(10):
            await a.connected.wait()
            await b.connected.wait()
            while len(a.recorder.frames) < 40 or len(b.recorder.frames) < 40:
                await asyncio.sleep(0.05)
        a_start, b_start = len(a.recorder.frames), len(b.recorder.frames)
        await asyncio.sleep(0.8)
        a_hears = np.concatenate(a.recorder.frames[a_start:])
        b_hears = np.concatenate(b.recorder.frames[b_start:])
    finally:
        await a.close()
        await b.close()
    assert signals.goertzel_amplitude(a_hears, 880.0) > 0.15
    assert signals.goertzel_amplitude(a_hears, 440.0) < 0.01
    assert signals.goertzel_amplitude(b_hears, 440.0) > 0.15
    assert signals.goertzel_amplitude(b_hears, 880.0) < 0.01


async def test_bad_offers_get_a_reason_not_a_500(app_client: httpx.AsyncClient, api: Api) -> None:
    sid, host, _guest = await stage_of_two(app_client, api)
    token = await speaker_token(app_client, sid, host)
    auth = {"Authorization": f"Bearer {token}"}
    url = f"/api/spaces/{sid}/webrtc/offer"

    detail = problem(
        await app_client.post(url, json={"sdp": "hello", "type": "offer"}, headers=auth), 400
    )
    assert "Malformed SDP" in detail
    video_only = await real_offer("video")
    detail = problem(
        await app_client.post(url, json={"sdp": video_only, "type": "offer"}, headers=auth), 400
    )
    assert "no audio track" in detail
    response = await app_client.post(url, json={"sdp": video_only, "type": "answer"}, headers=auth)
    assert "type" in problem(response, 422)
    assert "not valid JSON" in problem(
        await app_client.post(
            url, content=b"{", headers=auth | {"content-type": "application/json"}
        ),
        400,
    )
    assert "sdp" in problem(await app_client.post(url, json={"type": "offer"}, headers=auth), 422)


async def test_offers_without_the_right_token_are_refused_with_the_reason(
    app_client: httpx.AsyncClient, api: Api, settings: Settings
) -> None:
    sid, host, guest = await stage_of_two(app_client, api)
    offer = {"sdp": await real_offer(), "type": "offer"}
    url = f"/api/spaces/{sid}/webrtc/offer"

    assert "Bearer" in problem(await app_client.post(url, json=offer), 401)
    listener = (await app_client.post(f"/api/spaces/{sid}/join", json={})).json()["token"]
    detail = problem(
        await app_client.post(url, json=offer, headers={"Authorization": f"Bearer {listener}"}),
        401,
    )
    assert "wrong kind" in detail and "listener token" in detail
    session = host["Authorization"]
    assert "wrong kind" in problem(
        await app_client.post(url, json=offer, headers={"Authorization": session}), 401
    )

    # a speaker token that ran out
    past = TokenSigner(load_keys(settings.signing_keys, settings.data_dir), clock=lambda: 1e9)
    host_id = (await app_client.get("/api/me", headers=host)).json()["id"]
    expired = past.issue("speaker", host_id, 60, space_id=sid, role="host")
    assert "expired" in problem(
        await app_client.post(url, json=offer, headers={"Authorization": f"Bearer {expired}"}),
        401,
    )
    # a valid token for another space
    other = (await api.space(host, title="other"))["id"]
    other_token = await speaker_token(app_client, other, host)
    assert "different space" in problem(
        await app_client.post(url, json=offer, headers={"Authorization": f"Bearer {other_token}"}),
        401,
    )

    # a speaker moved back to the audience after getting the token
    guest_token = await speaker_token(app_client, sid, guest)
    guest_id = (await app_client.get("/api/me", headers=guest)).json()["id"]
    response = await app_client.post(f"/api/spaces/{sid}/speakers/{guest_id}/demote", headers=host)
    assert response.status_code == 200, response.text
    detail = problem(
        await app_client.post(url, json=offer, headers={"Authorization": f"Bearer {guest_token}"}),
        403,
    )
    assert "not on the stage" in detail and "listener" in detail


async def test_offer_to_an_ended_space_is_409(app_client: httpx.AsyncClient, api: Api) -> None:
    sid, host, _guest = await stage_of_two(app_client, api)
    token = await speaker_token(app_client, sid, host)
    response = await app_client.post(f"/api/spaces/{sid}/end", headers=host)
    assert response.status_code == 200, response.text
    detail = problem(
        await app_client.post(
            f"/api/spaces/{sid}/webrtc/offer",
            json={"sdp": await real_offer(), "type": "offer"},
            headers={"Authorization": f"Bearer {token}"},
        ),
        409,
    )
    assert "ended" in detail
