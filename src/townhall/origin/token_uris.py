"""A listener token carried on into a playlist's URIs.

A capped space's media needs a listener token (``policy/media_gate.py``).
Browsers carry it in the ``th_listener`` cookie, so their playlists stay one
shared cache object. Players that cannot keep a cookie (ffmpeg, VLC, radio
apps) are given ``live.m3u8?t=<token>``; they resolve the playlist's relative
URIs without its query, so the playlist they get names every part, segment,
init and playlist URI with the same ``t=`` added. Only a request that carried
``t=`` (and passed the gate) gets such a playlist, marked private: it is that
listener's own, never a shared cache object.

Pure: bytes in, bytes out.
"""

from __future__ import annotations

import re
from dataclasses import replace

from townhall.origin.answers import Answer, FromDisk, Rendered, Wait

_SAFE = re.compile(rb"t=[A-Za-z0-9._~%-]{1,2048}")
_URI_ATTR = re.compile(rb'URI="([^"]*)"')
_LENGTH = re.compile(rb"(?i)(^|\n)content-length: \d+")


def token_param(query: bytes | None) -> bytes | None:
    """The ``t=<token>`` item of a request's query as sent (None when there is
    none, or when it holds anything but URL-safe characters)."""
    if not query:
        return None
    for item in query.split(b"&"):
        if item.startswith(b"t="):
            return item if _SAFE.fullmatch(item) else None
    return None


def _add(uri: bytes, param: bytes) -> bytes:
    return uri + (b"&" if b"?" in uri else b"?") + param


def with_token(body: bytes, param: bytes) -> bytes:
    """A media or master playlist with ``param`` on every URI: the URI lines
    and every ``URI="..."`` attribute (EXT-X-MAP, -PART, -PRELOAD-HINT,
    -RENDITION-REPORT, -MEDIA)."""
    lines = body.split(b"\n")
    for i, line in enumerate(lines):
        if not line or line.isspace():
            continue
        if line.startswith(b"#"):
            if b'URI="' in line:
                lines[i] = _URI_ATTR.sub(lambda m: b'URI="' + _add(m[1], param) + b'"', line)
        else:
            lines[i] = _add(line.rstrip(b"\r"), param) + (b"\r" if line.endswith(b"\r") else b"")
    return b"\n".join(lines)


def tokened_playlist(found: Rendered, param: bytes | None) -> Rendered:
    """``found`` (a playlist answer) with the token on its URIs, private."""
    if param is None or found.status != 200 or found.kind != "playlist":
        return found
    body = with_token(found.body, param)
    head = _LENGTH.sub(lambda m: m[1] + b"content-length: %d" % len(body), found.head, count=1)
    head = head.replace(b"public, max-age", b"private, max-age")
    return Rendered(found.status, head, body, found.kind)


def tokened(found: Answer, query: bytes | None) -> Answer:
    """A playlist answer for a request whose query may carry ``t=``: now, after
    a wait, or after a disk read."""
    param = token_param(query)
    if param is None:
        return found
    if type(found) is Rendered:
        return tokened_playlist(found, param)
    if type(found) is Wait:
        then = found.then
        return replace(found, then=lambda: tokened(then(), query))
    if type(found) is FromDisk:
        return replace(found, token=param)
    return found
