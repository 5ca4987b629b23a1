"""`townhall bench latency`: how long a word takes to reach an ear.

(a) speaker to speaker (mouth-to-ear over WebRTC): bot A publishes tone
    bursts, bot B records its return audio (the mix-minus), and each burst's
    onset in B's audio is matched to the moment A handed it to its sender.
(b) speaker to listener through LL-HLS: a player that fetches like hls.js
    (blocking playlist reload with _HLS_msn/_HLS_part, every part, playout
    starting PART-HOLD-BACK behind the live edge) decodes the parts; each
    burst's latency is the time the part holding it would be played minus
    the time A sent it.
(c) with ``--cpu-speakers 2,13``: the server process's CPU while N bots talk
    in one space (psutil, on the server's own process).

The pure measurement (burst plans, onset matching) is in ``bench/bursts.py``.
All bots run in this process; the target must be on this machine for (c).
Traffic goes only to ``--target`` (loopback unless ``--allow-remote``).
"""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import av
import click
import httpx
import numpy as np
import numpy.typing as npt

from townhall.bench.bursts import (
    BAR_CPU_13_CORES,
    BAR_LISTENER_P50_S,
    BAR_SPEAKER_P50_S,
    BURST_FREQS_HZ,
    DETECT_THRESHOLD,
    PERIOD_MS,
    SAMPLE_RATE_HZ,
    PartTimeline,
    match_latencies,
    onset_arrival_times,
    onset_send_times,
    plan_bursts,
    stats_row,
)
from townhall.bench.bus_delay import part_delays
from townhall.bench.hlsplaylist import (
    MediaPlaylist,
    Part,
    live_start_parts,
    next_part_after,
    parse_playlist,
)
from townhall.client.speak import FRAME_SAMPLES, PcmTrack, SpeakerClient, http_offer
from townhall.media import signals

# -- HTTP setup ----------------------------------------------------------------------


async def _post(http: httpx.AsyncClient, url: str, **kw: Any) -> httpx.Response:
    """POST, waiting out a 429 (sign-up and sign-in are rate limited) once or twice."""
    for _ in range(4):
        r = await http.post(url, **kw)
        if r.status_code != 429:
            return r
        await asyncio.sleep(min(60.0, float(r.headers.get("retry-after", "5"))))
    return r


def _check(r: httpx.Response, what: str, ok: tuple[int, ...] = (200, 201)) -> dict[str, Any]:
    if r.status_code not in ok:
        raise click.ClickException(f"{what} failed: HTTP {r.status_code} {r.text[:300]}")
    body: dict[str, Any] = r.json()
    return body


@dataclass
class BenchStage:
    space_id: str
    host_session: dict[str, str]
    tokens: list[str]


async def create_stage(http: httpx.AsyncClient, speakers: int, title: str) -> BenchStage:
    """A new unlisted live space with ``speakers`` bench accounts on stage
    (host, up to two co-hosts, then speakers); returns their speaker tokens."""
    tag = secrets.token_hex(4)
    password = secrets.token_urlsafe(16)
    sessions = []
    names = [f"bench_{tag}_{i}" for i in range(speakers)]
    for name in names:
        _check(
            await _post(http, "/api/accounts", json={"username": name, "password": password}),
            f"creating account {name}",
        )
        body = _check(
            await _post(http, "/api/sessions", json={"username": name, "password": password}),
            f"signing in as {name}",
        )
        sessions.append({"Authorization": f"Bearer {body['token']}"})
    space = _check(
        await _post(
            http,
            "/api/spaces",
            json={"title": title, "visibility": "unlisted"},
            headers=sessions[0],
        ),
        "creating the space",
    )
    sid = str(space["id"])
    for i, name in enumerate(names[1:], start=1):
        role = "cohost" if i <= 2 else "speaker"
        _check(
            await _post(
                http,
                f"/api/spaces/{sid}/invites",
                json={"username": name, "role": role},
                headers=sessions[0],
            ),
            f"inviting {name}",
        )
    tokens = []
    for session in sessions:
        body = _check(
            await _post(http, f"/api/spaces/{sid}/speaker-token", headers=session),
            "getting a speaker token",
        )
        tokens.append(str(body["token"]))
    return BenchStage(sid, sessions[0], tokens)


async def end_stage(http: httpx.AsyncClient, stage: BenchStage) -> None:
    await http.post(f"/api/spaces/{stage.space_id}/end", headers=stage.host_session)


# -- (b) the LL-HLS player -------------------------------------------------------------


@dataclass
class HlsCapture:
    timeline: PartTimeline = field(default_factory=PartTimeline)
    data: bytearray = field(default_factory=bytearray)
    startup_parts: int = 0
    part_hold_back_s: float | None = None
    error: str | None = None


async def follow_llhls(
    http: httpx.AsyncClient, space_id: str, stop: asyncio.Event, capture: HlsCapture
) -> None:
    """Fetch like hls.js until ``stop``: join PART-HOLD-BACK behind the edge,
    then blocking reloads for the next part, and every part."""
    base = f"/spaces/{space_id}/"
    try:
        r = await http.get(base + "live.m3u8")
        r.raise_for_status()
        playlist = parse_playlist(r.text)
        hold_back = playlist.part_hold_back_s or 3 * (playlist.part_target_s or 1.0)
        capture.part_hold_back_s = hold_back
        start = live_start_parts(playlist, hold_back)
        if not start or playlist.map_uri is None:
            capture.error = "the live playlist lists no parts or no init segment"
            return
        capture.data += (await http.get(base + playlist.map_uri)).content
        for part in start:
            await _fetch_part(http, base, part, capture)
        capture.startup_parts = len(start)
        last = start[-1]
        while not stop.is_set():
            msn, index = next_part_after(playlist, last.msn, last.index)
            r = await http.get(base + "live.m3u8", params={"_HLS_msn": msn, "_HLS_part": index})
            if r.status_code != 200:
                await asyncio.sleep(0.1)
                continue
            playlist = parse_playlist(r.text)
            for part in _parts_after(playlist, last):
                await _fetch_part(http, base, part, capture)
                last = part
            if playlist.ended:
                return
    except (httpx.HTTPError, ValueError) as exc:
        capture.error = f"{type(exc).__name__}: {exc}"


async def wait_for_playlist(
    http: httpx.AsyncClient, space_id: str, timeout_s: float = 30.0
) -> None:
    """Wait until the live playlist holds more than PART-HOLD-BACK plus a second
    of parts, so the player joins a steady live edge (not a new space's first part)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = await http.get(f"/spaces/{space_id}/live.m3u8")
        if r.status_code == 200:
            playlist = parse_playlist(r.text)
            listed = sum(p.duration_s for p in playlist.all_parts())
            if listed >= (playlist.part_hold_back_s or 3.0) + 1.0:
                return
        await asyncio.sleep(0.5)
    raise click.ClickException("The live playlist did not fill up; is the listener plane running?")


def _parts_after(playlist: MediaPlaylist, last: Part) -> list[Part]:
    return [p for p in playlist.all_parts() if (p.msn, p.index) > (last.msn, last.index)]


async def _fetch_part(http: httpx.AsyncClient, base: str, part: Part, capture: HlsCapture) -> None:
    r = await http.get(base + part.uri)
    r.raise_for_status()
    capture.data += r.content
    capture.timeline.add(part.duration_s, time.monotonic())


def decode_mono(data: bytes) -> npt.NDArray[np.float64]:
    """Decode fMP4/AAC bytes to mono float samples (full scale 1.0)."""
    with av.open(io.BytesIO(data), mode="r") as container:
        chunks = [f.to_ndarray().astype(np.float64) for f in container.decode(audio=0)]
    if not chunks:
        return np.zeros(0)
    if chunks[0].ndim == 2 and chunks[0].shape[0] > 1:  # planar: channels x samples
        return np.concatenate([c.mean(axis=0) for c in chunks])
    return np.concatenate([c.reshape(-1) for c in chunks])


# -- the run ---------------------------------------------------------------------------


async def run_latency(
    target: str,
    bursts: int,
    *,
    listener: bool,
    progress: bool,
    follower_target: str | None = None,
) -> dict[str, Any]:
    """``follower_target``: a second LL-HLS listener, on another node of the
    same deployment (one that follows the room over the bus), measured in the
    same run as the listener on ``target`` (the room's node)."""
    signal = plan_bursts(bursts)
    follower_capture = HlsCapture()
    async with httpx.AsyncClient(base_url=target, timeout=20.0) as http:
        stage = await create_stage(http, 2, "townhall bench latency")
        track_a = PcmTrack(signal.pcm, keep_send_times=True)
        a = SpeakerClient(track_a, record=False)
        b = SpeakerClient(PcmTrack(np.zeros(FRAME_SAMPLES, dtype=np.int16), loop=True))
        capture = HlsCapture()
        stop = asyncio.Event()
        hls_task: asyncio.Task[None] | None = None
        try:
            if listener:
                await wait_for_playlist(http, stage.space_id)
            await b.connect(http_offer(http, stage.space_id, stage.tokens[1]))
            await asyncio.wait_for(b.connected.wait(), 15)
            await a.connect(http_offer(http, stage.space_id, stage.tokens[0]))
            await asyncio.wait_for(a.connected.wait(), 15)
            bus_row: dict[str, Any] | None = None
            if listener:
                async with (
                    httpx.AsyncClient(base_url=target, timeout=20.0) as hls_http,
                    httpx.AsyncClient(
                        base_url=follower_target or target, timeout=20.0
                    ) as follower_http,
                ):
                    follower_task: asyncio.Task[None] | None = None
                    if follower_target is not None:
                        await wait_for_playlist(follower_http, stage.space_id)
                        follower_task = asyncio.create_task(
                            follow_llhls(follower_http, stage.space_id, stop, follower_capture)
                        )
                    hls_task = asyncio.create_task(
                        follow_llhls(hls_http, stage.space_id, stop, capture)
                    )
                    if follower_target is not None:
                        bus_row = await part_delays(
                            hls_http, follower_http, stage.space_id, max(10, bursts)
                        )
                    await _wait_sent(track_a, signal.pcm, progress)
                    await asyncio.sleep(max(3.0, 2 * (capture.part_hold_back_s or 1.5)))
                    stop.set()
                    await asyncio.wait_for(hls_task, 15)
                    if follower_task is not None:
                        await asyncio.wait_for(follower_task, 15)
            else:
                await _wait_sent(track_a, signal.pcm, progress)
                await asyncio.sleep(1.0)
        finally:
            stop.set()
            if hls_task is not None and not hls_task.done():
                hls_task.cancel()
            await a.close()
            await b.close()
            await end_stage(http, stage)

    window_s = PERIOD_MS / 1000 * len(BURST_FREQS_HZ)
    heard_pcm = b.recorder.pcm()
    speaker_lat: list[float] = []
    listener_lat: list[float] = []
    hls_pcm = decode_mono(bytes(capture.data)) if listener and capture.data else None
    follower_pcm = (
        decode_mono(bytes(follower_capture.data))
        if listener and follower_target and follower_capture.data
        else None
    )
    follower_lat: list[float] = []
    for freq, onsets in signal.onsets.items():
        sent = onset_send_times(onsets, track_a.send_times_s)
        heard = onset_arrival_times(
            signals.detect_onsets(heard_pcm, freq, threshold=DETECT_THRESHOLD),
            b.recorder.arrival_s,
        )
        speaker_lat += match_latencies(sent, heard, window_s)
        if hls_pcm is not None:
            played = [
                t
                for t in (
                    capture.timeline.play_time(i / SAMPLE_RATE_HZ, capture.startup_parts)
                    for i in signals.detect_onsets(hls_pcm, freq, threshold=DETECT_THRESHOLD)
                )
                if t is not None
            ]
            listener_lat += match_latencies(sent, played, window_s)
        if follower_pcm is not None:
            played = [
                t
                for t in (
                    follower_capture.timeline.play_time(
                        i / SAMPLE_RATE_HZ, follower_capture.startup_parts
                    )
                    for i in signals.detect_onsets(follower_pcm, freq, threshold=DETECT_THRESHOLD)
                )
                if t is not None
            ]
            follower_lat += match_latencies(sent, played, window_s)
    rows = [stats_row("speaker_to_speaker", speaker_lat, signal.count, BAR_SPEAKER_P50_S)]
    result: dict[str, Any] = {"target": target, "bursts": bursts, "rows": rows}
    if listener:
        # bursts sent before the player joined cannot be heard by it
        rows.append(
            stats_row("speaker_to_llhls_listener", listener_lat, signal.count, BAR_LISTENER_P50_S)
        )
        result["part_hold_back_s"] = capture.part_hold_back_s
        if capture.error:
            result["listener_error"] = capture.error
    if listener and follower_target is not None:
        # the bus's cost: the same bursts heard through a follower node
        rows.append(
            stats_row("speaker_to_llhls_follower", follower_lat, signal.count, BAR_LISTENER_P50_S)
        )
        result["follower_target"] = follower_target
        if bus_row is not None:
            rows.append(bus_row)
        if follower_capture.error:
            result["follower_error"] = follower_capture.error
        owner_p50, follower_p50 = rows[1]["p50_s"], rows[2]["p50_s"]
        if owner_p50 is not None and follower_p50 is not None:
            result["bus_added_p50_s"] = round(follower_p50 - owner_p50, 4)
    return result


async def _wait_sent(track: PcmTrack, pcm: npt.NDArray[np.int16], progress: bool) -> None:
    total_frames = len(pcm) // FRAME_SAMPLES
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total_frames * FRAME_SAMPLES // SAMPLE_RATE_HZ, unit="s", desc="bursts")
    try:
        while track.readyState == "live" and track.frames_sent < total_frames:
            await asyncio.sleep(0.25)
            if bar is not None:
                bar.n = track.frames_sent * FRAME_SAMPLES // SAMPLE_RATE_HZ
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()


def find_server_pid(target: str) -> int | None:
    """The pid listening on the target's port on this machine, if visible."""
    import psutil

    port = urlsplit(target).port or 80
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return int(conn.pid) if conn.pid is not None else None
    except psutil.AccessDenied:
        return None
    return None


async def run_cpu(
    target: str, speakers: int, pid: int, *, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """Server CPU (cores) while ``speakers`` bots talk in one space."""
    import psutil

    proc = psutil.Process(pid)
    async with httpx.AsyncClient(base_url=target, timeout=30.0) as http:
        stage = await create_stage(http, speakers, f"townhall bench cpu {speakers}")
        idle = proc.cpu_times()
        idle_at = time.monotonic()
        await asyncio.sleep(2.0)
        idle_cores = _cores(idle, proc.cpu_times(), time.monotonic() - idle_at)
        clients = [
            SpeakerClient(
                PcmTrack(signals.speech_like(10.0, seed=i, base_pitch_hz=100 + 10 * i), loop=True),
                record=False,
            )
            for i in range(speakers)
        ]
        try:
            for client, token in zip(clients, stage.tokens, strict=True):
                await client.connect(http_offer(http, stage.space_id, token))
            await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in clients)), 30)
            await asyncio.sleep(warmup_s)
            before, at = proc.cpu_times(), time.monotonic()
            await asyncio.sleep(duration_s)
            cores = _cores(before, proc.cpu_times(), time.monotonic() - at)
        finally:
            for client in clients:
                await client.close()
            await end_stage(http, stage)
    return {
        "speakers": speakers,
        "server_cpu_cores": round(cores, 3),
        "server_cpu_cores_idle_space": round(idle_cores, 3),
        "duration_s": duration_s,
        "bar_cores": BAR_CPU_13_CORES if speakers >= 13 else None,
        "pass": cores < BAR_CPU_13_CORES if speakers >= 13 else None,
    }


def _cores(before: Any, after: Any, wall_s: float) -> float:
    used = (after.user - before.user) + (after.system - before.system)
    return used / wall_s if wall_s > 0 else 0.0


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'metric':28} {'matched':>9} {'p50 s':>7} {'p90 s':>7} {'max s':>7} {'bar':>6}  ok"]
    for row in result.get("rows", []):
        lines.append(
            f"{row['metric']:28} {row['bursts_matched']:>4}/{row['bursts_sent']:<4} "
            f"{_f(row['p50_s']):>7} {_f(row['p90_s']):>7} {_f(row['max_s']):>7} "
            f"{_f(row['bar_p50_s']):>6}  {'-' if row['pass'] is None else ('yes' if row['pass'] else 'NO')}"
        )
    for cpu in result.get("cpu", []):
        lines.append(
            f"server CPU, {cpu['speakers']:2d} speakers: {cpu['server_cpu_cores']:.3f} cores "
            f"(idle space {cpu['server_cpu_cores_idle_space']:.3f})"
            + (
                ""
                if cpu["pass"] is None
                else f"  bar < {cpu['bar_cores']}: {'yes' if cpu['pass'] else 'NO'}"
            )
        )
    if "listener_error" in result:
        lines.append(f"listener: {result['listener_error']}")
    if "bus_added_p50_s" in result:
        lines.append(
            f"listener on the follower {result['follower_target']}: "
            f"{result['bus_added_p50_s']:+.3f} s at p50 vs the room's node (includes "
            "each player's start phase, up to a part; bus_part_delay is the bus alone)"
        )
    if "follower_error" in result:
        lines.append(f"follower listener: {result['follower_error']}")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@click.command("latency")
@click.option("--target", required=True, help="Base URL of the townhall server to measure.")
@click.option(
    "--bursts",
    type=click.IntRange(3, 600),
    default=20,
    show_default=True,
    help="Tone bursts sent (one per second).",
)
@click.option(
    "--listener/--no-listener",
    default=True,
    show_default=True,
    help="Also measure speaker to LL-HLS listener.",
)
@click.option(
    "--cpu-speakers",
    default="",
    help="Comma-separated speaker counts to measure server CPU for, e.g. 2,13 (server on this machine).",
)
@click.option(
    "--server-pid",
    type=int,
    default=None,
    help="Server process id for --cpu-speakers (found by port if omitted).",
)
@click.option(
    "--cpu-duration-s",
    type=click.FloatRange(2, 600),
    default=20.0,
    show_default=True,
    help="Measurement window per CPU point.",
)
@click.option(
    "--follower-target",
    default=None,
    help="Scaled out: also listen through this other node (it follows the room over the bus), in the same run, to measure what the bus adds.",
)
@click.option("--allow-remote", is_flag=True, help="Allow a target that is not a loopback address.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def latency_command(
    target: str,
    bursts: int,
    listener: bool,
    cpu_speakers: str,
    server_pid: int | None,
    cpu_duration_s: float,
    follower_target: str | None,
    allow_remote: bool,
    as_json: bool,
) -> None:
    """Measure mouth-to-ear latency (speaker to speaker over WebRTC, speaker
    to LL-HLS listener) and, optionally, server CPU per speaker count."""
    for url in (target, follower_target):
        host = urlsplit(url).hostname or "" if url else "127.0.0.1"
        if not allow_remote and host not in ("127.0.0.1", "::1", "localhost"):
            raise click.UsageError(
                f"{url} is not a loopback address; pass --allow-remote if you mean it."
            )
    try:
        counts = [int(x) for x in cpu_speakers.split(",") if x.strip()]
    except ValueError:
        raise click.UsageError("--cpu-speakers takes numbers, e.g. 2,13") from None
    if any(not 1 <= n <= 13 for n in counts):
        raise click.UsageError("--cpu-speakers: each count must be 1..13 (one space's stage).")
    pid = server_pid
    if counts and pid is None:
        pid = find_server_pid(target)
        if pid is None:
            raise click.UsageError("Could not find the server process; pass --server-pid.")

    async def main() -> dict[str, Any]:
        result = await run_latency(
            target,
            bursts,
            listener=listener,
            progress=not as_json,
            follower_target=follower_target,
        )
        if counts:
            assert pid is not None
            result["cpu"] = [
                await run_cpu(target, n, pid, warmup_s=3.0, duration_s=cpu_duration_s)
                for n in counts
            ]
        return result

    try:
        result = asyncio.run(main())
    except (httpx.HTTPError, OSError) as exc:
        raise click.ClickException(f"Could not reach {target}: {exc}") from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_table(result))
