"""`townhall speak`: publish an audio file into a space as a speaker, and
optionally record what the speaker hears back (their mix-minus).

The pieces are importable for tests, the demo and the latency benchmark:

- ``PcmTrack`` sends int16 mono PCM (numpy) paced in real time, optionally
  looping; ``FileTrack`` does the same for any file PyAV can decode.
- ``ReturnRecorder`` collects the audio the server sends back, with the
  arrival time of every frame.
- ``SpeakerClient`` owns one aiortc peer: ``connect(post_offer)`` with any
  signalling function (HTTP, or a Stage in the same process in tests).
- ``publish(...)`` does the whole thing over HTTP.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import click
import httpx
import numpy as np
import numpy.typing as npt
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from townhall.live.ice import loopback_for, restrict_host_addresses
from townhall.media import signals

log = logging.getLogger("townhall.client")

SAMPLE_RATE_HZ = 48000
FRAME_SAMPLES = 960
FRAME_S = FRAME_SAMPLES / SAMPLE_RATE_HZ

Pcm = npt.NDArray[np.int16]
PostOffer = Callable[[str, str], Awaitable[tuple[str, str]]]


class _PacedTrack(MediaStreamTrack):
    """An audio track that hands out 20 ms frames on a monotonic schedule.

    ``sent`` records (frame index, monotonic time handed to the sender) for
    the first frames, so benchmarks can tell when a sample left.
    """

    kind = "audio"

    def __init__(self, *, keep_send_times: bool = False) -> None:
        super().__init__()
        self._index = 0
        self._start_s: float | None = None
        self._time_base = fractions.Fraction(1, SAMPLE_RATE_HZ)
        self.keep_send_times = keep_send_times
        self.send_times_s: list[float] = []  # monotonic time frame i was handed out

    def _next_pcm(self) -> Pcm | None:
        raise NotImplementedError

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start_s is None:
            self._start_s = now
        due = self._start_s + self._index * FRAME_S
        if due > now:
            await asyncio.sleep(due - now)
        pcm = self._next_pcm()
        if pcm is None:
            self.stop()
            raise MediaStreamError
        if self.keep_send_times:
            self.send_times_s.append(time.monotonic())
        # stereo with both channels equal: aiortc's Opus encoder takes stereo, and
        # libswresample's mono->stereo upmix would cost 3 dB
        frame = av.AudioFrame.from_ndarray(
            np.repeat(pcm, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = SAMPLE_RATE_HZ
        frame.pts = self._index * FRAME_SAMPLES
        frame.time_base = self._time_base
        self._index += 1
        return frame

    @property
    def frames_sent(self) -> int:
        return self._index


class PcmTrack(_PacedTrack):
    """Send int16 mono 48 kHz PCM in real time; ends after the last frame
    unless ``loop``."""

    def __init__(self, pcm: npt.ArrayLike, *, loop: bool = False, keep_send_times: bool = False):
        super().__init__(keep_send_times=keep_send_times)
        data = np.asarray(pcm, dtype=np.int16).reshape(-1)
        pad = (-len(data)) % FRAME_SAMPLES
        self._pcm = np.concatenate([data, np.zeros(pad, dtype=np.int16)])
        self._frames = len(self._pcm) // FRAME_SAMPLES
        self.loop = loop

    def _next_pcm(self) -> Pcm | None:
        if self._frames == 0:
            return None
        i = self._index
        if i >= self._frames:
            if not self.loop:
                return None
            i %= self._frames
        return self._pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]


def _mono_s16(frame: av.AudioFrame) -> Pcm:
    """The samples of a packed s16 mono frame as a flat int16 array."""
    pcm: Pcm = frame.to_ndarray().astype(np.int16, copy=False).reshape(-1)
    return pcm


def decode_file(path: str | Path) -> Iterator[Pcm]:
    """Decode any audio file PyAV reads into 20 ms frames of 48 kHz mono int16."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise click.UsageError(f"{path} has no audio stream.")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(
            format="s16", layout="mono", rate=SAMPLE_RATE_HZ, frame_size=FRAME_SAMPLES
        )
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                yield _mono_s16(out)
        for out in resampler.resample(None):
            pcm = _mono_s16(out)
            if len(pcm) < FRAME_SAMPLES:
                pcm = np.concatenate([pcm, np.zeros(FRAME_SAMPLES - len(pcm), dtype=np.int16)])
            yield pcm


class FileTrack(_PacedTrack):
    """Send an audio file (WAV or anything PyAV decodes) in real time,
    decoding as it goes; ``loop`` starts over at the end."""

    def __init__(self, path: str | Path, *, loop: bool = False, keep_send_times: bool = False):
        super().__init__(keep_send_times=keep_send_times)
        self.path = Path(path)
        self.loop = loop
        self._frames = decode_file(self.path)
        self._yielded_any = False

    def _next_pcm(self) -> Pcm | None:
        for _attempt in range(2):
            pcm = next(self._frames, None)
            if pcm is not None:
                self._yielded_any = True
                return pcm
            if not (self.loop and self._yielded_any):
                return None
            self._frames = decode_file(self.path)
        return None


@dataclass
class ReturnRecorder:
    """Audio received from the server: 48 kHz mono int16 frames and the
    monotonic time each arrived (decoded)."""

    frames: list[Pcm] = field(default_factory=list)
    arrival_s: list[float] = field(default_factory=list)
    max_frames: int = 50 * 3600  # an hour; older frames are dropped past it

    def add(self, pcm: Pcm, at_s: float) -> None:
        if len(self.frames) >= self.max_frames:
            del self.frames[0]
            del self.arrival_s[0]
        self.frames.append(pcm)
        self.arrival_s.append(at_s)

    def pcm(self) -> Pcm:
        if not self.frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self.frames)

    def write_wav(self, path: str | Path) -> None:
        signals.write_wav(path, self.pcm(), SAMPLE_RATE_HZ)


class SpeakerClient:
    """One speaker's WebRTC peer: sends ``source``, records what comes back.

    Use as ``async with SpeakerClient(track) as client: await client.connect(post_offer)``;
    leaving the block closes the peer.
    """

    def __init__(self, source: MediaStreamTrack, *, record: bool = True) -> None:
        self.source = source
        self.recorder = ReturnRecorder()
        self.record = record
        # no ICE servers: host candidates only (aiortc's default would contact a public STUN server)
        self.pc = RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()

    async def __aenter__(self) -> SpeakerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, post_offer: PostOffer) -> None:
        """Offer (non-trickle), hand the offer to ``post_offer``, apply the answer."""
        pc = self.pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                task = asyncio.create_task(self._record_main(track), name="speak-record")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                self.connected.set()
            elif pc.connectionState in ("failed", "closed"):
                self.failed.set()

        pc.addTransceiver(self.source, direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        local = pc.localDescription
        answer_sdp, answer_type = await post_offer(local.sdp, local.type)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type=answer_type))

    async def _record_main(self, track: MediaStreamTrack) -> None:
        resampler = av.AudioResampler(
            format="s16", layout="mono", rate=SAMPLE_RATE_HZ, frame_size=FRAME_SAMPLES
        )
        try:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                if not self.record or not isinstance(frame, av.AudioFrame):
                    continue
                now = time.monotonic()
                for out in resampler.resample(frame):
                    self.recorder.add(_mono_s16(out), now)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recording the return audio failed")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.source.stop()
        await self.pc.close()


# -- HTTP ---------------------------------------------------------------------------


class SpeakError(click.ClickException):
    """A failure the person running `townhall speak` can act on."""


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict) and "detail" in body:
        return f"HTTP {response.status_code}: {body['detail']}"
    return f"HTTP {response.status_code}"


async def speaker_token(
    http: httpx.AsyncClient, space_id: str, username: str, password: str
) -> str:
    """Sign in and get a speaker token for ``space_id``."""
    r = await http.post("/api/sessions", json={"username": username, "password": password})
    if r.status_code != 200:
        raise SpeakError(f"Signing in as {username} failed: {_problem_detail(r)}")
    session = r.json()["token"]
    r = await http.post(
        f"/api/spaces/{space_id}/speaker-token", headers={"Authorization": f"Bearer {session}"}
    )
    if r.status_code != 200:
        raise SpeakError(f"Getting a speaker token failed: {_problem_detail(r)}")
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
            raise SpeakError(f"The server refused the offer: {_problem_detail(r)}")
        body = r.json()
        return str(body["sdp"]), str(body["type"])

    return post


@dataclass(frozen=True, slots=True)
class PublishResult:
    frames_sent: int
    frames_received: int
    duration_s: float


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
) -> PublishResult:
    """Publish ``source`` (a file path, int16 PCM, or a track) as a speaker.

    Runs until the source ends (not ``loop``), ``duration_s`` passes, ``stop``
    is set, or the connection fails. ``record_to`` (a WAV path or a
    ReturnRecorder) receives what the speaker hears back.
    """
    if isinstance(source, MediaStreamTrack):
        track: MediaStreamTrack = source
    elif isinstance(source, (str, Path)):
        track = FileTrack(source, loop=loop)
    else:
        track = PcmTrack(source, loop=loop)
    stop = stop or asyncio.Event()
    started = time.monotonic()
    # a server on loopback is reached over loopback only (aioice skips it otherwise)
    restrict_host_addresses(loopback_for(httpx.URL(server_url).host))
    async with (
        httpx.AsyncClient(base_url=server_url, timeout=timeout_s) as http,
        SpeakerClient(track, record=record_to is not None) as client,
    ):
        if isinstance(record_to, ReturnRecorder):
            client.recorder = record_to
        ended = asyncio.Event()
        track.on("ended", ended.set)
        await client.connect(http_offer(http, space_id, token))
        waits = [
            asyncio.create_task(ended.wait()),
            asyncio.create_task(stop.wait()),
            asyncio.create_task(client.failed.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if client.failed.is_set() and not ended.is_set():
            log.warning("the connection to %s failed", server_url)
        await asyncio.sleep(0.2)  # let the last frames of the return arrive
        if isinstance(record_to, (str, Path)):
            client.recorder.write_wav(record_to)
        sent = track.frames_sent if isinstance(track, _PacedTrack) else 0
        return PublishResult(
            frames_sent=sent,
            frames_received=len(client.recorder.frames),
            duration_s=time.monotonic() - started,
        )


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
) -> None:
    """Publish FILE (WAV or any audio PyAV reads) into a live space as a speaker."""
    if token is None and (username is None or password is None):
        raise click.UsageError("Give --token, or both --username and --password.")

    async def main() -> PublishResult:
        nonlocal token
        if token is None:
            assert username is not None and password is not None
            async with httpx.AsyncClient(base_url=server_url, timeout=20.0) as http:
                token = await speaker_token(http, space_id, username, password)
        return await publish(
            server_url,
            space_id,
            token,
            file,
            loop=loop,
            duration_s=duration_s,
            record_to=record_return,
        )

    try:
        result = asyncio.run(main())
    except KeyboardInterrupt:
        return
    except (httpx.HTTPError, OSError) as exc:
        raise SpeakError(f"Could not reach {server_url}: {exc}") from None
    click.echo(
        f"sent {result.frames_sent * FRAME_S:.1f} s of audio, "
        f"received {result.frames_received * FRAME_S:.1f} s back, in {result.duration_s:.1f} s"
    )
