"""The multivariant playlist ``/spaces/{space_id}/master.m3u8``: one audio-only
variant (the LL-HLS media playlist) with its CODECS and BANDWIDTH, so players
that do not guess (Shaka Player, many TVs and radio apps) know it is AAC-LC in
fMP4 before they fetch anything. It never changes while the space exists, so
it is cacheable for minutes; after the end the same variant is the VOD.

When the space is captioned (the server's ``captions`` setting, the host has
not turned them off, or an ended space has a transcript) the playlist also
offers the WebVTT subtitles rendition (``captions.m3u8``, issue 13) and the
variant names its group."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from starlette.responses import Response

from townhall.captions.live import captions_offered
from townhall.captions.track import subtitles_media_tag
from townhall.config import Settings
from townhall.errors import NotFound
from townhall.origin.answers import CORS_HEADERS
from townhall.store.recordings import served_copy

router = APIRouter(include_in_schema=False)

MPEGURL = "application/vnd.apple.mpegurl"
AAC_LC = "mp4a.40.2"
MASTER_CACHE = "public, max-age=300"
# fMP4 boxes (moof, mdat headers per part) on top of the AAC bitrate
CONTAINER_OVERHEAD = 1.15
SUBTITLES_GROUP = "subs"
_SPACE_ID = re.compile(r"[a-z2-7]{12}")


def render_master(
    *, bitrate_bps: int, media_uri: str = "live.m3u8", subtitles: bool = False
) -> str:
    """The multivariant playlist text for a program of ``bitrate_bps`` AAC-LC;
    with ``subtitles``, the captions rendition and the variant's SUBTITLES group."""
    peak = int(bitrate_bps * CONTAINER_OVERHEAD)
    media = f"{subtitles_media_tag(group_id=SUBTITLES_GROUP)}\n" if subtitles else ""
    group = f',SUBTITLES="{SUBTITLES_GROUP}"' if subtitles else ""
    return (
        "#EXTM3U\n"
        "#EXT-X-VERSION:9\n"
        "#EXT-X-INDEPENDENT-SEGMENTS\n"
        f"{media}"
        f"#EXT-X-STREAM-INF:BANDWIDTH={peak},AVERAGE-BANDWIDTH={bitrate_bps},"
        f'CODECS="{AAC_LC}"{group}\n'
        f"{media_uri}\n"
    )


@router.api_route("/spaces/{space_id}/master.m3u8", methods=["GET", "HEAD"])
async def master_playlist(space_id: str, request: Request) -> Response:
    services = getattr(request.app.state, "services", None)
    index = getattr(getattr(services, "spaces", None), "index", None)
    if not _SPACE_ID.fullmatch(space_id) or (index is not None and index.get(space_id) is None):
        raise NotFound(f"There is no space '{space_id}'; check the link.")
    settings: Settings = request.app.state.settings
    room = getattr(getattr(services, "rooms", None), "get", lambda _sid: None)(space_id)
    live_captions = getattr(room, "captions", None)
    directory = (
        await served_copy(settings.recordings_dir, settings.recording_copy_dirs, space_id)
    ).dir
    return Response(
        render_master(
            bitrate_bps=settings.program_bitrate_bps,
            subtitles=captions_offered(settings, live_captions, directory),
        ),
        media_type=MPEGURL,
        headers={"Cache-Control": MASTER_CACHE, **CORS_HEADERS},
    )


@router.options("/spaces/{space_id}/{name:path}")
async def listener_preflight(space_id: str, name: str) -> Response:
    """CORS preflight of a listener resource: GET and HEAD from any origin."""
    return Response(
        status_code=204,
        headers={
            **CORS_HEADERS,
            "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
            "Access-Control-Allow-Headers": "Range, If-None-Match, If-Modified-Since, Accept",
            "Access-Control-Max-Age": "86400",
            "Allow": "GET, HEAD, OPTIONS",
        },
    )
