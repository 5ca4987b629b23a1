"""The listener plane's rules: what a request for ``/spaces/{id}/...`` gets.
Pure: no sockets, no event loop, no files. Both drivers (the ASGI routes in
``origin/asgi.py`` and the HTTP/1.1 driver below the framework) ask these
rules and perform what they answer, so each answer has one implementation.

``FastPath.answer(method, path, query)`` answers one of:

- :class:`Rendered`: a response ready to write (status, header lines, body),
  pre-rendered ONCE per immutable part / segment / init and once per playlist
  version and kind, memoised in the live window and evicted with it;
- :class:`Wait`: park until ``position`` is published, then ``then()`` (the
  answer after the wait), or ``timeout()`` after ``timeout_s``;
- :class:`Stream`: live.aac, write ``head`` and attach to ``hub``;
- :class:`Problem`: an error with a sentence (404, 400, 409, ...);
- :class:`FromDisk`: read the recording (playlist, segment, init,
  recording.m4a); :func:`disk_playlist` / :func:`disk_media` /
  :func:`latest_epoch` turn what was read into the answer;
- None: not a listener URL (another route, or a method the router refuses).

``FastPath.decide`` is the fast path's view of the same rules: the answers it
can write itself (``Rendered`` / ``Wait`` / ``Stream``), None for everything
else, which then goes to the app. It refuses what needs decoding (``%`` in the
path, odd queries) so that the app, which decodes, answers it.

The bytes are made by the helpers the ASGI driver uses (Starlette ``Response``
objects rendered once), so both drivers send the same headers and bodies; tests
compare them byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from townhall.config import Settings
from townhall.errors import BadRequest, NotFound, ServiceUnavailable
from townhall.media.cmaf import part_frames
from townhall.media.encoder import AAC_FRAME_SAMPLES
from townhall.origin.answers import (
    ENDED_PLAYLIST,
    IMMUTABLE,
    LIVE_PLAYLIST,
    M3U8,
    MP4,
    Answer,
    Decision,
    FromDisk,
    Problem,
    Rendered,
    Stream,
    Wait,
    header_lines,
    media_response,
    playlist_cache,
    progressive_head,
    timeout_response,
)
from townhall.origin.app_hooks import gate_of, programs_of
from townhall.origin.client_kind import plays_ll_hls
from townhall.origin.cors import Cors
from townhall.origin.follower import ListenerSource
from townhall.origin.netlimit import Client, ClientLimit, Peer, refusal
from townhall.origin.playlist import render_ll, render_plain
from townhall.origin.token_uris import tokened, tokened_playlist
from townhall.origin.window import COMPLETE, LiveWindow, records_view
from townhall.policy.media_gate import MediaGate
from townhall.store.recordings import SPACE_ID_RE, Manifest, RecordingNotFinal

__all__ = [
    "Answer",
    "Decision",
    "FastPath",
    "FromDisk",
    "Problem",
    "Rendered",
    "Stream",
    "Wait",
    "disk_media",
    "disk_playlist",
    "gate_of",
    "latest_epoch",
    "programs_of",
    "timeout_response",
]

_MAX_DIGITS_MSN = 12
_MAX_DIGITS_PART = 4
_MAX_DIGITS_EPOCH = 6
_PREFIX = b"/spaces/"


def _not_found(detail: str) -> Problem:
    return Problem(NotFound(detail))


def _number(raw: bytes, max_digits: int) -> int | None:
    if 0 < len(raw) <= max_digits and raw.isdigit():
        return int(raw)
    return None


# -- the rules --------------------------------------------------------------------


class FastPath:
    """The rules for the spaces of this process.

    ``programs(space_id)`` returns what answers a live space's listeners here:
    its running Program, or (scaled out) a followed room's copy (a dict
    lookup) or None.
    """

    def __init__(
        self,
        settings: Settings,
        programs: Callable[[str], ListenerSource | None],
        *,
        gate: MediaGate | None = None,
        playlist_limit: ClientLimit | None = None,
    ) -> None:
        self.settings = settings
        self.programs = programs
        # capped spaces (the gate knows which): media needs a listener token
        self.gate = gate
        self.timeout_s = settings.blocking_reload_timeout_s
        self.playlist_limit = playlist_limit  # issue 10: playlists without directives
        # a list of CORS origins is answered per request by the app (origin/cors.py)
        self.cors_any = Cors.parse(settings.cors_origins).any_origin
        self._stream_head = header_lines(progressive_head())

    def decide(
        self,
        method: bytes,
        path: bytes,
        query: bytes | None,
        cookie: bytes | None = None,
        client: Client | None = None,
    ) -> Decision:
        """The fast path: ``path`` as sent (percent-encoded), ``query`` without
        the '?'. Only live spaces, only answers it can write; None otherwise."""
        if not self.cors_any:
            return None
        if not path.startswith(_PREFIX) or b"%" in path or not path.isascii():
            return None
        if method != b"GET" and method != b"HEAD":
            return None
        slash = path.find(b"/", 8)
        if slash < 0:
            return None
        program = self.programs(path[8:slash].decode("ascii"))
        if program is None:
            return None
        window = program.window
        if window is None:
            return None
        name = path[slash + 1 :]
        if self.gate is not None and self.gate.refuse(path[8:slash].decode("ascii"), query, cookie):
            return None  # the app answers the 401
        if name.startswith(b"part/"):  # the hot one first
            found = self._part(window, name[5:], path)
        elif name == b"live.m3u8" or name == b"plain.m3u8":
            directives = _directives(query)
            if directives is None:
                return None  # the app parses it (and says 400 where one is due)
            if over := refusal(self.playlist_limit, client, name, directives[0]):
                return over.render(path.decode("ascii"))
            found = self._playlist(window, directives, path, name[0] == 112, client)  # "p"
            found = found if self.gate is None else tokened(found, query)
        else:
            found = self._live(method, program, window, name, path)
        if type(found) is Rendered or type(found) is Wait or type(found) is Stream:
            return found
        return None

    def answer(
        self,
        method: bytes,
        path: bytes,
        query: bytes | None,
        cookie: bytes | None = None,
        client: Client | None = None,
    ) -> Answer:
        """Every answer: ``path`` decoded as the router sees it (UTF-8 bytes),
        ``query`` as sent (decoded here when it has to be; 400 when malformed)."""
        if method != b"GET" and method != b"HEAD":
            return None
        if not path.startswith(_PREFIX):
            return None
        slash = path.find(b"/", 8)
        if slash < 0:
            return None
        raw_id, name = path[8:slash], path[slash + 1 :]
        space_id = raw_id.decode("utf-8", "replace")
        program = self.programs(space_id) if raw_id.isascii() else None
        window = program.window if program is not None else None
        if window is None and not SPACE_ID_RE.fullmatch(space_id):
            if not _listener_name(name):
                return None
            return Problem(
                BadRequest(
                    "That is not a space id: use the lowercase letters and digits from the share link."
                )
            )
        directives = _NO_DIRECTIVES
        if name == b"live.m3u8" or name == b"plain.m3u8":
            parsed = _directives(query)
            if parsed is None:
                strict = _strict_directives(query)
                if isinstance(strict, Problem):
                    return strict
                parsed = strict
            directives = parsed
            if over := refusal(self.playlist_limit, client, name, directives[0]):
                return over
        if program is None or window is None:
            cold = self._cold(method, space_id, program, name, directives)
            return tokened(cold, query if self.gate else None)
        if self.gate is not None and name != b"recording.m4a":
            refused = self.gate.refuse(space_id, query, cookie)
            if refused is not None:
                return Problem(refused)
        if name.startswith(b"part/"):
            return self._part(window, name[5:], path)
        if name == b"live.m3u8" or name == b"plain.m3u8":
            found = self._playlist(window, directives, path, name[0] == 112, client)
            return tokened(found, query if self.gate else None)
        return self._live(method, program, window, name, path)

    # -- a space live on this node ------------------------------------------------------

    def _live(
        self, method: bytes, program: ListenerSource, window: LiveWindow, name: bytes, path: bytes
    ) -> Answer:
        if name.startswith(b"seg/"):
            msn = _media_number(name[4:], b".m4s", _MAX_DIGITS_MSN)
            if msn is None:
                return _not_found("Segments are named <msn>.m4s, as the playlist lists them.")
            data = window.segment(msn)
            if data is None:  # older ones come from the recording on disk
                return FromDisk("segment", program_id(path), msn)
            return window.memo("seg", partial(_media, data, MP4, IMMUTABLE, "segment"), msn=msn)
        if name == b"live.aac":
            if method != b"GET":
                return None  # 405 from the router
            if window.closed:
                return _not_live()
            if program.progressive.closed:  # scaled out: this node follows the room
                return Problem(
                    ServiceUnavailable(
                        "This server relays this space's playlist but not its progressive "
                        "stream; retry (another server has it) or listen at live.m3u8.",
                        retry_after_s=1.0,
                    )
                )
            return Stream(program.progressive, self._stream_head)
        if name == b"init.mp4":
            found = _init(window)
            if found is not None:
                return found
            if window.closed:
                return FromDisk("latest-init", program_id(path))
            # the first init comes with the first part
            return Wait(
                window,
                (window.open_msn, 0),
                self.timeout_s,
                partial(_init_or_disk, window, program_id(path)),
                partial(timeout_response, path.decode("utf-8", "replace")),
            )
        if name.startswith(b"init/"):
            epoch = _media_number(name[5:], b".mp4", _MAX_DIGITS_EPOCH)
            if epoch is None:
                return _not_found(
                    "Init segments are named <epoch>.mp4, as the playlist lists them."
                )
            found = _init(window) if epoch == window.epoch else None
            return found if found is not None else FromDisk("init", program_id(path), epoch)
        if name == b"recording.m4a":
            if not program.ended:
                return Problem(RecordingNotFinal())
            return FromDisk("recording", program_id(path))
        return None

    def _part(self, window: LiveWindow, name: bytes, path: bytes) -> Answer:
        msn = index = None
        if name.endswith(b".m4s"):
            msn_raw, dot, index_raw = name[:-4].partition(b".")
            if dot:
                msn = _number(msn_raw, _MAX_DIGITS_MSN)
                index = _number(index_raw, _MAX_DIGITS_PART)
        if msn is None or index is None:
            return _not_found("Parts are named <msn>.<part>.m4s, as the playlist lists them.")
        if index >= window.segment_parts:
            return _not_found(
                f"Segments have {window.segment_parts} parts; part {index} does not exist."
            )
        data = window.part(msn, index)
        if data is not None:
            return window.memo(
                ("part", index), partial(_media, data, MP4, IMMUTABLE, "part"), msn=msn
            )
        if window.has((msn, index)) or window.closed:
            return _part_after(window, msn, index)  # gone from the window, or never came
        if msn > window.open_msn + 1:
            return _not_found(
                f"Part {msn}.{index} is too far past the live edge; reload the playlist."
            )
        # a preload-hinted part: answer as soon as it exists (shared wake-up)
        return Wait(
            window,
            (msn, index),
            self.timeout_s,
            partial(_part_after, window, msn, index),
            partial(timeout_response, path.decode("utf-8", "replace")),
        )

    def _playlist(
        self, window: LiveWindow, directives: Directives, path: bytes, plain: bool, client: Peer
    ) -> Answer:
        msn, part, skip = _NO_DIRECTIVES if plain else directives
        kind = "plain" if plain else ("ll-skip" if skip else "ll")
        if msn is not None and not window.closed:
            if window.is_far_future(msn):
                # with a wait: a player reloads without it at once; one that
                # asks it again on the same connection within the wait is a
                # flood, and the driver stops reading it (origin/retry_penalty.py)
                return Problem(
                    BadRequest(
                        f"_HLS_msn={msn} is more than two segments past the live edge "
                        f"(segment {window.open_msn}); reload the playlist without it.",
                        retry_after_s=1.0,
                    )
                )
            position = window.normalize(msn, part)
            if window.ready(position):
                # satisfiable at once: a short max-age, so a client asking the
                # same URL again is never shown an older playlist from a cache
                return _playlist(window, kind, False)
            return Wait(
                window,
                position,
                max(self.timeout_s, window.blocking_hold_s),
                partial(_playlist, window, kind, True, position),
                partial(timeout_response, path.decode("utf-8", "replace")),
            )
        whole = plain or not plays_ll_hls(client)
        if msn is None and not window.closed and not window.history and whole:
            # the very first seconds: players without LL-HLS (ffmpeg, GStreamer,
            # VLC, radio apps) need a whole segment, so a request without
            # delivery directives waits for the first one, at most one segment;
            # an LL-HLS player's first live.m3u8 is answered at once (issue 9)
            position = (window.open_msn, COMPLETE)
            if window.ready(position):
                return _playlist(window, kind, False)
            answer = partial(_playlist, window, kind, False)
            return Wait(window, position, window.segment_target_s + 1.0, answer, answer)
        if window.version == 0 and not window.closed:
            # a resumed space, nothing published yet in this run: hold the very
            # first request until the new run's first part (its discontinuity)
            position = (window.open_msn, 0)
            if window.ready(position):
                return _playlist(window, kind, False)
            return Wait(
                window,
                position,
                self.timeout_s,
                partial(_playlist, window, kind, False),
                partial(timeout_response, path.decode("utf-8", "replace")),
            )
        return _playlist(window, kind, False)

    # -- a space not live here: its recording ----------------------------------------------

    def _cold(
        self,
        method: bytes,
        space_id: str,
        program: ListenerSource | None,
        name: bytes,
        directives: Directives,
    ) -> Answer:
        if name == b"live.m3u8" or name == b"plain.m3u8":
            blocking = directives[0] is not None
            return FromDisk("playlist", space_id, plain=name[0] == 112, blocking=blocking)
        if name.startswith(b"part/"):
            if _part_name(name[5:]) is None:
                return _not_found("Parts are named <msn>.<part>.m4s, as the playlist lists them.")
            return _not_found(
                "Parts exist only near the live edge of a live space; use the segments."
            )
        if name.startswith(b"seg/"):
            msn = _media_number(name[4:], b".m4s", _MAX_DIGITS_MSN)
            if msn is None:
                return _not_found("Segments are named <msn>.m4s, as the playlist lists them.")
            return FromDisk("segment", space_id, msn)
        if name == b"init.mp4":
            return FromDisk("latest-init", space_id)
        if name.startswith(b"init/"):
            epoch = _media_number(name[5:], b".mp4", _MAX_DIGITS_EPOCH)
            if epoch is None:
                return _not_found(
                    "Init segments are named <epoch>.mp4, as the playlist lists them."
                )
            return FromDisk("init", space_id, epoch)
        if name == b"live.aac":
            return None if method != b"GET" else _not_live()
        if name == b"recording.m4a":
            if program is not None and not program.ended:
                return Problem(RecordingNotFinal())
            return FromDisk("recording", space_id)
        return None


def _listener_name(name: bytes) -> bool:
    return name in (b"live.m3u8", b"plain.m3u8", b"init.mp4", b"live.aac", b"recording.m4a") or (
        name.startswith((b"part/", b"seg/", b"init/")) and name.count(b"/") == 1
    )


def program_id(path: bytes) -> str:
    """The space id of a ``/spaces/{id}/...`` path (only for live spaces: valid)."""
    return path[8 : path.find(b"/", 8)].decode("ascii")


def _not_live() -> Problem:
    return _not_found(
        "This space is not live on this server; once it ends, its recording is at recording.m4a."
    )


def _media_number(name: bytes, suffix: bytes, max_digits: int) -> int | None:
    if not name.endswith(suffix):
        return None
    return _number(name[: -len(suffix)], max_digits)


def _part_name(name: bytes) -> tuple[int, int] | None:
    if not name.endswith(b".m4s"):
        return None
    msn_raw, dot, index_raw = name[:-4].partition(b".")
    msn = _number(msn_raw, _MAX_DIGITS_MSN)
    index = _number(index_raw, _MAX_DIGITS_PART)
    if not dot or msn is None or index is None:
        return None
    return msn, index


Directives = tuple[int | None, int | None, bool]
"""(_HLS_msn, _HLS_part, _HLS_skip): a tuple, cheaper to make than a dataclass."""


def _directives(query: bytes | None) -> Directives | None:
    """(_HLS_msn, _HLS_part, _HLS_skip) of a plain query; None when anything is
    off (needs decoding, repeats a key, or is invalid)."""
    if not query:
        return _NO_DIRECTIVES
    if b"%" in query or b"+" in query:
        return None
    msn = part = None
    skip = False
    seen: set[bytes] = set()
    for item in query.split(b"&"):
        key, _, value = item.partition(b"=")
        if key in seen:
            return None
        seen.add(key)
        if key == b"_HLS_msn":
            msn = _number(value, _MAX_DIGITS_MSN)
            if msn is None:
                return None
        elif key == b"_HLS_part":
            part = _number(value, _MAX_DIGITS_MSN)
            if part is None:
                return None
        elif key == b"_HLS_skip":
            if value not in (b"YES", b"v2"):
                return None
            skip = True
    if part is not None and msn is None:
        return None
    return msn, part, skip


_NO_DIRECTIVES: Directives = (None, None, False)


def _strict_directives(query: bytes | None) -> Directives | Problem:
    """A query :func:`_directives` refused, decoded as the router does (the
    last of repeated keys counts): its directives, or its 400."""
    from urllib.parse import parse_qsl

    from townhall.origin.playlist import parse_blocking_query

    values = dict(parse_qsl((query or b"").decode("latin-1"), keep_blank_values=True))
    try:
        parsed = parse_blocking_query(
            values.get("_HLS_msn"), values.get("_HLS_part"), values.get("_HLS_skip")
        )
    except BadRequest as error:
        return Problem(error)
    return parsed.msn, parsed.part, parsed.skip


def _media(data: bytes, media_type: str, cache: str, kind: str) -> Rendered:
    return Rendered.of(media_response(data, media_type, cache), kind)


def _part_after(window: LiveWindow, msn: int, index: int) -> Rendered | Problem:
    data = window.part(msn, index)
    if data is None:
        return _not_found(
            f"Part {msn}.{index} is not in the live window; fetch its segment seg/{msn}.m4s."
        )
    return window.memo(("part", index), partial(_media, data, MP4, IMMUTABLE, "part"), msn=msn)


def _init(window: LiveWindow) -> Rendered | None:
    data = window.init_segment
    if data is None:
        return None
    return window.memo("init", partial(_media, data, MP4, IMMUTABLE, "init"))


def _init_or_disk(window: LiveWindow, space_id: str) -> Rendered | FromDisk:
    found = _init(window)
    return found if found is not None else FromDisk("latest-init", space_id)


def _playlist(
    window: LiveWindow, kind: str, blocking: bool, asked: tuple[int, int] | None = None
) -> Rendered:
    cache = playlist_cache(window, blocking=blocking, asked=asked)
    return window.memo_versioned(
        (kind, cache),
        lambda: _media(window.playlist(kind).encode(), M3U8, cache, "playlist"),
    )


# -- after a disk read (pure: the driver read the bytes) -------------------------------


def disk_playlist(
    settings: Settings,
    want: FromDisk,
    found: tuple[Manifest, dict[str, Rendered]] | None,
) -> Rendered | Problem:
    """The playlist of a space not running here, from its manifest (and the
    manifest's cache of rendered playlists); complete segments only."""
    if found is None:
        return _not_found("This space is not live and has no recording; check the link.")
    manifest, rendered = found
    if not manifest.ended and want.blocking:
        return Problem(
            ServiceUnavailable(
                "This space is not producing audio on this server right now; try again shortly.",
                retry_after_s=2,
            )
        )
    kind = "plain" if want.plain else "ll"
    hit = rendered.get(kind)
    if hit is None:
        part_s = part_frames(settings.part_ms, settings.sample_rate_hz) * AAC_FRAME_SAMPLES
        view = records_view(
            manifest.segments,
            sample_rate_hz=manifest.sample_rate_hz,
            part_target_s=part_s / manifest.sample_rate_hz,
            segment_target_s=part_s * settings.segment_parts / manifest.sample_rate_hz,
            ended=manifest.ended,
        )
        # not running here: no parts, hints or blocking
        text = render_ll(view) if manifest.ended else render_plain(view)
        cache = ENDED_PLAYLIST if manifest.ended else LIVE_PLAYLIST
        hit = rendered[kind] = _media(text.encode(), M3U8, cache, "playlist")
    return tokened_playlist(hit, want.token)


def latest_epoch(manifest: Manifest | None) -> int | Problem:
    """The epoch whose init ``init.mp4`` names, for a space not running here."""
    if manifest is None or not manifest.epochs:
        return _not_found("This space has no audio yet; load live.m3u8 first.")
    return manifest.epochs[-1]


def disk_media(want: FromDisk, data: bytes | None) -> Rendered | Problem:
    """A segment or init read from the recording (None: it was not there)."""
    if want.what == "segment":
        if data is None:
            return _not_found(f"Segment {want.number} does not exist (yet); reload the playlist.")
        return _media(data, MP4, IMMUTABLE, "segment")
    if data is None:
        return _not_found(f"There is no init segment {want.number} for this space.")
    return _media(data, MP4, IMMUTABLE, "init")
