"""The multivariant playlist: one AAC-LC variant with CODECS and BANDWIDTH,
advertised by the join answer and the listener page."""

from __future__ import annotations

from typing import Any

import httpx

from tests.media.hls_validator import validate
from townhall.origin.master import render_master


def test_render_master_names_codec_bandwidth_and_the_media_playlist() -> None:
    text = render_master(bitrate_bps=64000)
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    (inf,) = [line for line in lines if line.startswith("#EXT-X-STREAM-INF:")]
    assert 'CODECS="mp4a.40.2"' in inf
    assert "AVERAGE-BANDWIDTH=64000" in inf
    peak = int(inf.split("BANDWIDTH=")[1].split(",")[0])
    assert peak >= 64000
    assert lines[lines.index(inf) + 1] == "live.m3u8"


async def test_master_is_served_and_advertised(app_client: httpx.AsyncClient, api: Any) -> None:
    _, headers = await api.account("masterhost")
    space = await api.space(headers, title="Multivariant")
    response = await app_client.get(f"/spaces/{space['id']}/master.m3u8")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/vnd.apple.mpegurl")
    assert "max-age" in response.headers["cache-control"]
    assert 'CODECS="mp4a.40.2"' in response.text
    joined = await app_client.post(f"/api/spaces/{space['id']}/join", json={})
    assert joined.status_code == 200, joined.text
    assert joined.json()["urls"]["master_m3u8"].endswith(f"/spaces/{space['id']}/master.m3u8")
    assert space["urls"]["master_m3u8"].endswith("/master.m3u8")
    page = await app_client.get(f"/spaces/{space['id']}")
    assert f'href="/spaces/{space["id"]}/master.m3u8"' in page.text
    missing = await app_client.get("/spaces/abcdefgh2345/master.m3u8")
    assert missing.status_code == 404


def test_validator_accepts_nothing_it_should_not() -> None:
    # the media playlist validator rejects a multivariant playlist (no segments)
    try:
        validate(render_master(bitrate_bps=64000), expect="ll")
    except (AssertionError, ValueError):
        return
    raise AssertionError("a multivariant playlist passed as a media playlist")


def test_master_offers_the_subtitles_rendition_only_when_captioned() -> None:
    plain = render_master(bitrate_bps=64000)
    assert "SUBTITLES" not in plain
    text = render_master(bitrate_bps=64000, subtitles=True)
    lines = text.splitlines()
    (media,) = [line for line in lines if line.startswith("#EXT-X-MEDIA:")]
    assert (
        "TYPE=SUBTITLES" in media and 'GROUP-ID="subs"' in media and 'URI="captions.m3u8"' in media
    )
    (inf,) = [line for line in lines if line.startswith("#EXT-X-STREAM-INF:")]
    assert 'SUBTITLES="subs"' in inf
    # the rendition is declared before the variant that names its group
    assert lines.index(media) < lines.index(inf)
    assert lines[lines.index(inf) + 1] == "live.m3u8"
