"""`townhall speak`: publish an audio file into a space as a speaker, and
optionally record what the speaker hears back (their mix-minus).

The pieces are importable for tests, the demo and the latency benchmark:

- ``PcmTrack`` sends int16 mono PCM (numpy) paced in real time, optionally
  looping; ``FileTrack`` does the same for any file PyAV can decode.
- ``ReturnRecorder`` collects the audio the server sends back, with the
  arrival time of every frame.
- ``SpeakerClient`` owns one aiortc peer: ``connect(post_offer)`` with any
  signalling function (HTTP, or a Stage in the same process in tests).
- ``publish(...)`` does the whole thing over HTTP, and with ``reconnect``
  comes back by itself after the server goes away (a restart), counting only
  audio the server acknowledged.

The WebRTC pieces live in ``townhall.client.peer`` and are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
import numpy.typing as npt
from aiortc import MediaStreamTrack

from townhall.client.peer import (
    FRAME_S,
    FRAME_SAMPLES,
    SAMPLE_RATE_HZ,
    FileTrack,
    PacedTrack,
    PcmTrack,
    PostOffer,
    ReturnRecorder,
    SourceLeg,
    SpeakerClient,
    decode_file,
)
from townhall.live.ice import loopback_for, restrict_host_addresses

__all__ = [
    "FRAME_S",
    "FRAME_SAMPLES",
    "SAMPLE_RATE_HZ",
    "FileTrack",
    "PcmTrack",
    "PublishResult",
    "Reconnect",
    "ReturnRecorder",
    "SpeakError",
    "SpeakerClient",
    "decode_file",
    "http_offer",
    "publish",
    "speak_command",
    "speaker_token",
]

log = logging.getLogger("townhall.client")
# the watchdog looks every 0.1 s; a longer gap means our own loop was busy
_OWN_LAG_S = 0.5


# -- HTTP ---------------------------------------------------------------------------


class SpeakError(click.ClickException):
    """A failure the person running `townhall speak` can act on. ``retryable``:
    the server may accept the same request later (it is restarting, busy)."""

    def __init__(self, message: str, *, retryable: bool = False, status: int = 0) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict) and "detail" in body:
        return f"HTTP {response.status_code}: {body['detail']}"
    return f"HTTP {response.status_code}"


def _refused(message: str, response: httpx.Response) -> SpeakError:
    status = response.status_code
    return SpeakError(
        f"{message}: {_problem_detail(response)}",
        retryable=status >= 500 or status == 429,
        status=status,
    )


async def speaker_token(
    http: httpx.AsyncClient, space_id: str, username: str, password: str
) -> str:
    """Sign in and get a speaker token for ``space_id``."""
    r = await http.post("/api/sessions", json={"username": username, "password": password})
    if r.status_code != 200:
        raise _refused(f"Signing in as {username} failed", r)
    session = r.json()["token"]
    r = await http.post(
        f"/api/spaces/{space_id}/speaker-token", headers={"Authorization": f"Bearer {session}"}
    )
    if r.status_code != 200:
        raise _refused("Getting a speaker token failed", r)
    return str(r.json()["token"])


def http_offer(http: httpx.AsyncClient, space_id: str, token: str) -> PostOffer:
    """A ``post_offer`` that POSTs to /api/spaces/{id}/webrtc/offer."""

    async def post(sdp: str, type_: str) -> tuple[str, str]:
        r = await http.post(
            f"/api/spaces/{space_id}/webrtc/offer",
            json={"sdp": sdp, "type": type_},
            headers={"Authorization": f"Bearer {token}"},
        )
        if r.status_code != 200:
            raise _refused("The server refused the offer", r)
        body = r.json()
        return str(body["sdp"]), str(body["type"])

    return post


@dataclass(frozen=True, slots=True)
class PublishResult:
    frames_sent: int  # acknowledged by the server (its RTCP receiver reports)
    frames_received: int
    duration_s: float
    frames_pushed: int = 0  # handed to the network, heard or not
    reconnects: int = 0
    lost: bool = False  # ended because the server was lost (and did not come back)


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How ``publish`` comes back after losing the server: retry for up to
    ``for_s`` seconds (0: never) with exponential backoff from ``first_s`` to
    ``max_s``; the server counts as lost when its connection fails, the
    return audio (sent every frame) stops for ``return_stall_s`` while its
    receiver reports have not grown for ``confirm_s`` either (one signal
    alone may be a busy client), or the reports stop for ``stall_s``. A server that answers but
    refuses for now (503: the room is moving to another node, 429) is asked
    again after ``refused_s`` instead: the room is about to be back, and
    behind a load balancer the next offer may reach the node that runs it."""

    for_s: float = 0.0
    first_s: float = 0.5
    max_s: float = 4.0
    stall_s: float = 5.0
    return_stall_s: float = 1.5
    confirm_s: float = 2.0
    refused_s: float = 0.2

    def delay_s(self, attempt: int) -> float:
        base: float = min(self.max_s, self.first_s * 2.0 ** min(attempt, 30))
        return base * (0.5 + random.random() / 2)  # jitter: bots do not return in step

    def refused_delay_s(self) -> float:
        return self.refused_s * (0.5 + random.random())


def _patient(post: PostOffer, policy: Reconnect, until_s: float, stop: asyncio.Event) -> PostOffer:
    """``post`` that asks again with the same offer after a refusal that may
    pass (503: the room is moving to another node), until ``until_s``: an
    offer stays valid, so a retry costs one request, not a new peer."""

    async def again(sdp: str, type_: str) -> tuple[str, str]:
        while True:
            try:
                return await post(sdp, type_)
            except SpeakError as exc:
                delay_s = policy.refused_delay_s()
                if not exc.retryable or time.monotonic() + delay_s > until_s:
                    raise
                log.warning("%s; asking again in %.2f s", exc.message, delay_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay_s)
                if stop.is_set():
                    raise

    return again


@dataclass
class _Run:
    track: MediaStreamTrack
    recorder: ReturnRecorder
    record: bool
    stop: asyncio.Event
    ended: asyncio.Event
    duration_s: float | None
    deadline_s: float | None = None  # duration_s after the first connection
    pushed: int = 0
    acked: int = 0


async def _one_connection(
    run: _Run,
    http: httpx.AsyncClient,
    space_id: str,
    token: str,
    policy: Reconnect,
    timeout_s: float,
    *,
    first: bool,
    retry_until_s: float = 0.0,
) -> str:
    """One peer connection until the source ends ("ended"), ``stop`` or the
    deadline ("done"), or the server is lost ("lost"; "refused" when it
    answered that it cannot take us now). Adds the frames pushed
    and those the server acknowledged to ``run``. The ``first`` connection's
    errors are raised: a server that was never there is not waited for."""
    first_frame = run.track.frames_sent if isinstance(run.track, PacedTrack) else 0
    client = SpeakerClient(SourceLeg(run.track), record=run.record)
    client.recorder = run.recorder
    outcome = "lost"
    connected_at = time.monotonic()
    try:
        try:
            post = http_offer(http, space_id, token)
            if not first:
                post = _patient(post, policy, retry_until_s, run.stop)
            patience_s = max(0.0, retry_until_s - time.monotonic())
            await asyncio.wait_for(client.connect(post), timeout_s + patience_s)
            await asyncio.wait_for(client.connected.wait(), timeout_s)
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            if first:
                raise
            log.warning("could not connect to the server: %s", exc or type(exc).__name__)
            return outcome
        except SpeakError as exc:
            if first or not exc.retryable:
                raise
            log.warning("%s", exc.message)
            return "refused"
        connected_at = time.monotonic()
        if not first:
            log.warning("connected to the server again")
        if run.deadline_s is None and run.duration_s is not None:
            run.deadline_s = connected_at + run.duration_s
        looked_at, blind_until = time.monotonic(), 0.0
        while True:
            now = time.monotonic()
            if now - looked_at > _OWN_LAG_S:
                # this process's own loop was held up (a busy machine, a host
                # program blocking it): what it did not get to read is not the
                # server's silence, so look again for a confirmation period
                blind_until = now + policy.confirm_s
            looked_at = now
            judging = now >= blind_until
            if run.ended.is_set():
                outcome = "ended"
            elif run.stop.is_set() or (
                run.deadline_s is not None and time.monotonic() >= run.deadline_s
            ):
                outcome = "done"
            elif client.failed.is_set():
                log.warning("lost the server: connection failed")
                break
            elif (
                judging
                and client.return_stalled(policy.return_stall_s)
                and client.reports_stalled(policy.confirm_s, connected_at)
            ):
                log.warning(
                    "lost the server: no return audio for %.1f s, no receiver report for %.1f s",
                    policy.return_stall_s,
                    policy.confirm_s,
                )
                break
            elif judging and client.reports_stalled(policy.stall_s, connected_at):
                log.warning("lost the server: no receiver report for %.0f s", policy.stall_s)
                break
            if outcome != "lost":
                await asyncio.sleep(0.2)  # let the last frames of the return arrive
                break
            await asyncio.sleep(0.1)
        return outcome
    finally:
        pushed = (run.track.frames_sent if isinstance(run.track, PacedTrack) else 0) - first_frame
        healthy = outcome in ("ended", "done") and not client.reports_stalled(
            policy.stall_s, connected_at
        )
        run.pushed += pushed
        # a healthy end: the server heard it all but the last report's worth;
        # a lost server: only what its last report acknowledged
        run.acked += pushed if healthy else min(pushed, client.acked_packets)
        await client.close()


async def publish(
    server_url: str,
    space_id: str,
    token: str,
    source: str | Path | npt.ArrayLike | MediaStreamTrack,
    *,
    loop: bool = False,
    duration_s: float | None = None,
    record_to: str | Path | ReturnRecorder | None = None,
    stop: asyncio.Event | None = None,
    timeout_s: float = 20.0,
    reconnect: Reconnect | None = None,
    renew_token: Callable[[], Awaitable[str]] | None = None,
) -> PublishResult:
    """Publish ``source`` (a file path, int16 PCM, or a track) as a speaker.

    Runs until the source ends (not ``loop``), ``duration_s`` passes (counted
    from the first connection), ``stop`` is set, or the server is lost; with ``reconnect``, a lost server is
    retried with backoff (``renew_token`` gives a fresh speaker token for each
    attempt, else ``token`` is reused). ``record_to`` (a WAV path or a
    ReturnRecorder) receives what the speaker hears back. ``frames_sent`` of
    the result counts only audio the server acknowledged.
    """
    if isinstance(source, MediaStreamTrack):
        track: MediaStreamTrack = source
    elif isinstance(source, (str, Path)):
        track = FileTrack(source, loop=loop)
    else:
        track = PcmTrack(source, loop=loop)
    policy = reconnect or Reconnect()
    started = time.monotonic()
    run = _Run(
        track=track,
        recorder=record_to if isinstance(record_to, ReturnRecorder) else ReturnRecorder(),
        record=record_to is not None,
        stop=stop or asyncio.Event(),
        ended=asyncio.Event(),
        duration_s=duration_s,
    )
    track.on("ended", run.ended.set)
    # a server on loopback is reached over loopback only (aioice skips it otherwise)
    restrict_host_addresses(loopback_for(httpx.URL(server_url).host))
    reconnects = attempt = 0
    lost = False
    lost_since: float | None = None
    try:
        async with httpx.AsyncClient(base_url=server_url, timeout=timeout_s) as http:
            while True:
                acked_before = run.acked
                outcome = await _one_connection(
                    run,
                    http,
                    space_id,
                    token,
                    policy,
                    timeout_s,
                    first=reconnects == 0,
                    retry_until_s=(lost_since or time.monotonic()) + policy.for_s,
                )
                lost = outcome in ("lost", "refused")
                if not lost:
                    break
                now = time.monotonic()
                if run.acked > acked_before:
                    attempt, lost_since = 0, None  # that connection worked for a while
                lost_since = lost_since if lost_since is not None else now
                if now - lost_since >= policy.for_s:
                    if policy.for_s > 0:
                        log.warning("gave up: no server for %.0f s", now - lost_since)
                    break
                if outcome == "refused":
                    delay_s = policy.refused_delay_s()
                elif attempt == 0:
                    # soon the first time: behind a balancer another node may
                    # run the room already (a takeover)
                    delay_s = policy.refused_delay_s()
                    attempt = 1
                else:
                    delay_s = policy.delay_s(attempt)
                    attempt += 1
                log.warning("reconnecting to %s in %.2f s", server_url, delay_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.stop.wait(), delay_s)
                if run.stop.is_set() or (
                    run.deadline_s is not None and time.monotonic() >= run.deadline_s
                ):
                    lost = False
                    break
                reconnects += 1
                if isinstance(track, PacedTrack):
                    track.resync()
                if renew_token is not None:
                    try:
                        token = await renew_token()
                    except (httpx.HTTPError, OSError) as exc:
                        log.warning("could not renew the speaker token: %s", exc)
                    except SpeakError as exc:
                        if not exc.retryable:
                            raise
                        log.warning("%s", exc.message)
    finally:
        track.stop()
    if isinstance(record_to, (str, Path)):
        run.recorder.write_wav(record_to)
    return PublishResult(
        frames_sent=run.acked,
        frames_received=len(run.recorder.frames),
        duration_s=time.monotonic() - started,
        frames_pushed=run.pushed,
        reconnects=reconnects,
        lost=lost,
    )


_DEFAULT = Reconnect()


@click.command("speak")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--server", "server_url", required=True, help="Base URL of the townhall server.")
@click.option("--space", "space_id", required=True, help="Id of the live space.")
@click.option("--token", default=None, help="A speaker token for the space.")
@click.option("--username", default=None, help="Sign in with this account instead of --token.")
@click.option("--password", default=None, help="Password for --username.")
@click.option("--loop", is_flag=True, help="Start the file over when it ends.")
@click.option("--duration-s", type=float, default=None, help="Stop after this many seconds.")
@click.option(
    "--record-return",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write what this speaker hears (the others) to a WAV file.",
)
@click.option(
    "--reconnect-for-s",
    type=float,
    default=60.0,
    show_default=True,
    help="When the server goes away (a restart), keep reconnecting with backoff for this long; 0 stops at once.",
)
@click.option(
    "--return-stall-s",
    type=float,
    default=_DEFAULT.return_stall_s,
    show_default=True,
    help="The server counts as lost when the audio it sends back stops for this long.",
)
@click.option(
    "--confirm-stall-s",
    type=float,
    default=_DEFAULT.confirm_s,
    show_default=True,
    help="... and its receiver reports have not grown for this long either (both must stop).",
)
@click.option(
    "--stall-s",
    type=float,
    default=_DEFAULT.stall_s,
    show_default=True,
    help="The server counts as lost when its receiver reports stop growing for this long.",
)
@click.option(
    "--reconnect-first-s",
    type=float,
    default=_DEFAULT.first_s,
    show_default=True,
    help="First backoff after losing the server (doubles up to --reconnect-max-s).",
)
@click.option(
    "--reconnect-max-s",
    type=float,
    default=_DEFAULT.max_s,
    show_default=True,
    help="Longest backoff between two reconnection attempts.",
)
@click.option(
    "--refused-retry-s",
    type=float,
    default=_DEFAULT.refused_s,
    show_default=True,
    help="After a server answers 503 or 429 (the room is moving to another node), ask again after about this long.",
)
def speak_command(
    file: Path,
    server_url: str,
    space_id: str,
    token: str | None,
    username: str | None,
    password: str | None,
    loop: bool,
    duration_s: float | None,
    record_return: Path | None,
    reconnect_for_s: float,
    return_stall_s: float,
    confirm_stall_s: float,
    stall_s: float,
    reconnect_first_s: float,
    reconnect_max_s: float,
    refused_retry_s: float,
) -> None:
    """Publish FILE (WAV or any audio PyAV reads) into a live space as a speaker."""
    if token is None and (username is None or password is None):
        raise click.UsageError("Give --token, or both --username and --password.")

    async def fresh_token() -> str:
        assert username is not None and password is not None
        async with httpx.AsyncClient(base_url=server_url, timeout=20.0) as http:
            return await speaker_token(http, space_id, username, password)

    async def main() -> PublishResult:
        return await publish(
            server_url,
            space_id,
            token if token is not None else await fresh_token(),
            file,
            loop=loop,
            duration_s=duration_s,
            record_to=record_return,
            reconnect=Reconnect(
                for_s=reconnect_for_s,
                first_s=reconnect_first_s,
                max_s=reconnect_max_s,
                stall_s=stall_s,
                return_stall_s=return_stall_s,
                confirm_s=confirm_stall_s,
                refused_s=refused_retry_s,
            ),
            renew_token=fresh_token if token is None else None,
        )

    try:
        result = asyncio.run(main())
    except KeyboardInterrupt:
        return
    except (httpx.HTTPError, OSError) as exc:
        raise SpeakError(f"Could not reach {server_url}: {exc}") from None
    again = f", {result.reconnects} reconnect(s)" if result.reconnects else ""
    click.echo(
        f"sent {result.frames_sent * FRAME_S:.1f} s of audio the server acknowledged "
        f"(of {result.frames_pushed * FRAME_S:.1f} s pushed), "
        f"received {result.frames_received * FRAME_S:.1f} s back, in {result.duration_s:.1f} s{again}"
    )
    if result.lost:
        raise SpeakError(
            f"Lost the server at {server_url} and it did not come back within "
            f"{reconnect_for_s:.0f} s (--reconnect-for-s)."
        )
