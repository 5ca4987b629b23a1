"""`townhall bench listeners`: simulated listeners that fetch exactly as a
player does (LL-HLS, plain HLS or the progressive stream), in a steady crowd or
a join storm, with playout deadlines, stalls and time to first audio.

One event loop (uvloop where installed), one keep-alive connection per
listener, listeners as tasks. The report always includes the load generator's
own CPU, so a saturated client is never mistaken for a slow server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import click
import orjson
import psutil

from townhall.bench import report
from townhall.bench.hlsclient import (
    Client,
    ListenerConfig,
    ListenerStats,
    Mode,
    join,
    run_llhls,
    run_plain_hls,
    run_progressive,
)
from townhall.bench.hlsplaylist import BenchError
from townhall.bench.playout import Playout
from townhall.errors import BadRequest

log = logging.getLogger("townhall.bench")

MAX_LISTENERS = 16000  # one socket each; stays under common open-file limits
MAX_DURATION_S = 3600.0
STREAM_PATHS: dict[str, str] = {
    "llhls": "/spaces/{id}/live.m3u8",
    "hls": "/spaces/{id}/plain.m3u8",
    "progressive": "/spaces/{id}/live.aac",
}
RUNNERS: dict[str, Callable[[Client, str, float], Coroutine[Any, Any, None]]] = {
    "llhls": run_llhls,
    "hls": run_plain_hls,
    "progressive": run_progressive,
}


@dataclass(frozen=True, slots=True)
class RunConfig:
    listener: ListenerConfig
    listeners: int
    shape: str  # "steady" | "storm"
    ramp_s: float
    duration_s: float
    url: str


def is_loopback(host: str) -> bool:
    """True if every address ``host`` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def start_offsets_s(listeners: int, ramp_s: float) -> list[float]:
    """When each listener starts, relative to the run's start: evenly from 0 to
    ``ramp_s`` (0 to N in T seconds)."""
    if listeners <= 1 or ramp_s <= 0:
        return [0.0] * listeners
    return [ramp_s * i / (listeners - 1) for i in range(listeners)]


_crashes: list[int] = []


async def _listener(
    cfg: ListenerConfig, stats: ListenerStats, deadline_s: float, source: str | None = None
) -> None:
    client = Client(cfg, stats, source)
    path = cfg.path
    retries = 0
    try:
        if cfg.join_path:
            try:
                joined = await join(client, cfg.join_path)
                path = joined or path
            except BenchError as exc:
                stats.errors[f"join_{exc.kind}"] += 1
        while time.monotonic() < deadline_s:
            try:
                await RUNNERS[cfg.mode](client, path, deadline_s)
                return
            except BenchError as exc:
                stats.errors[exc.kind] += 1
                retries += 1
                client.close()
                if retries > cfg.max_retries:
                    stats.failed = True
                    return
                await asyncio.sleep(max(0.0, min(cfg.retry_delay_s, deadline_s - time.monotonic())))
    except asyncio.CancelledError:
        raise
    except Exception:
        # a bug in the client, not the server: count it, keep the others going
        if not _crashes:
            log.exception("listener crashed (further crashes are counted, not logged)")
        _crashes.append(1)
        stats.errors["client_bug"] += 1
        stats.failed = True
    finally:
        client.close()
        stats.ended_at_s = time.monotonic()


async def run(config: RunConfig, *, progress: bool = False) -> report.Summary:
    """Run the crowd for ``duration_s`` and summarise it. Bounded: listeners still
    waiting on an answer at the end are cancelled."""
    proc = psutil.Process()
    cpu0 = sum(proc.cpu_times()[:2])
    t0 = time.monotonic()
    deadline = t0 + config.duration_s
    stats: list[ListenerStats] = []
    tasks: set[asyncio.Task[None]] = set()
    offsets = start_offsets_s(config.listeners, config.ramp_s)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.listeners, unit="listener", file=sys.stderr, leave=False)
    started = 0
    next_tick = t0
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        while started < len(offsets) and t0 + offsets[started] <= now:
            s = ListenerStats(started_at_s=now, playout=Playout(0.0))
            stats.append(s)
            task = asyncio.create_task(_listener(config.listener, s, deadline))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            started += 1
        if bar is not None and now >= next_tick:
            playing = sum(
                1
                for s in stats
                if s.playout.play_start_s is not None and not s.playout.stalled_at(now)
            )
            bar.n = started
            bar.set_postfix(playing=playing, errors=sum(sum(s.errors.values()) for s in stats))
            next_tick = now + 0.5
        await asyncio.sleep(0.01 if started < len(offsets) else min(0.5, deadline - now))
    end = time.monotonic()
    for task in list(tasks):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)
    if bar is not None:
        bar.close()
    cpu_s = sum(proc.cpu_times()[:2]) - cpu0
    meta = {
        "url": config.url,
        "mode": config.listener.mode,
        "shape": config.shape,
        "ramp_s": config.ramp_s,
        "duration_s": config.duration_s,
    }
    return report.summarize(stats, end_s=end, wall_s=end - t0, cpu_s=cpu_s, meta=meta)


def build_config(
    *,
    target: str,
    space: str | None,
    path: str | None,
    mode: Mode,
    shape: str,
    listeners: int,
    ramp_s: float | None,
    duration_s: float,
    join: bool,
    allow_remote: bool,
    startup_s: float | None,
    request_timeout_s: float,
    preload_hint: bool,
) -> RunConfig:
    """Check the options and build the run. Raises ``BadRequest`` with a sentence
    saying what to change."""
    parts = urlsplit(target)
    if parts.scheme != "http" or not parts.hostname:
        raise BadRequest(f"--target {target!r} must be an http:// URL (https is not supported).")
    host = parts.hostname
    if not allow_remote and not is_loopback(host):
        raise BadRequest(
            f"--target {host} is not a loopback address; pass --allow-remote to load-test "
            "a server you run elsewhere."
        )
    if not 1 <= listeners <= MAX_LISTENERS:
        raise BadRequest(f"--listeners must be between 1 and {MAX_LISTENERS}.")
    if not 1 <= duration_s <= MAX_DURATION_S:
        raise BadRequest(f"--duration-s must be between 1 and {MAX_DURATION_S:g}.")
    if path is None:
        if space is None:
            raise BadRequest("Give --space ID (townhall) or --path /stream/path (any server).")
        path = STREAM_PATHS[mode].format(id=space)
    if join and space is None:
        raise BadRequest("--join needs --space: it POSTs /api/spaces/{id}/join.")
    if ramp_s is None:
        ramp_s = 10.0 if shape == "storm" else min(2.0, duration_s / 4)
    if not 0 <= ramp_s < duration_s:
        raise BadRequest("--ramp-s must be at least 0 and shorter than --duration-s.")
    base = parts.path.rstrip("/")
    listener = ListenerConfig(
        host=host,
        port=parts.port or 80,
        path=base + path,
        mode=mode,
        request_timeout_s=request_timeout_s,
        blocking_timeout_s=request_timeout_s + 6.0,
        startup_s=startup_s,
        join_path=f"{base}/api/spaces/{space}/join" if join else None,
        use_preload_hint=preload_hint,
    )
    return RunConfig(listener, listeners, shape, ramp_s, duration_s, target.rstrip("/") + path)


def run_blocking(config: RunConfig, *, progress: bool) -> report.Summary:
    """``run`` on a fresh event loop (uvloop where installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(config, progress=progress))
    result: report.Summary = uvloop.run(run(config, progress=progress))
    return result


@click.command("listeners")
@click.option("--target", required=True, help="Base URL of the server, e.g. http://127.0.0.1:8000.")
@click.option("--space", default=None, help="Space id (townhall URLs: /spaces/ID/live.m3u8 ...).")
@click.option(
    "--path",
    default=None,
    help="Stream path on the target instead of townhall's (e.g. /hls/plain.m3u8 on nginx, /live.aac on Icecast).",
)
@click.option(
    "--mode",
    type=click.Choice(["llhls", "hls", "progressive"]),
    default="llhls",
    show_default=True,
    help="How listeners fetch: LL-HLS with blocking reload, plain HLS, or the progressive ADTS stream.",
)
@click.option(
    "--shape",
    type=click.Choice(["steady", "storm"]),
    default="steady",
    show_default=True,
    help="steady: all listeners start within --ramp-s (default 2 s); storm: 0 to N evenly over --ramp-s (default 10 s).",
)
@click.option(
    "--listeners",
    type=int,
    default=100,
    show_default=True,
    help=f"Simulated listeners (1..{MAX_LISTENERS}).",
)
@click.option("--ramp-s", type=float, default=None, help="Seconds over which listeners start.")
@click.option(
    "--duration-s",
    type=float,
    default=30.0,
    show_default=True,
    help="Length of the whole run, ramp included.",
)
@click.option(
    "--join/--no-join",
    default=False,
    show_default=True,
    help="Each listener first POSTs /api/spaces/ID/join and plays the URL it hands out.",
)
@click.option(
    "--startup-s",
    type=float,
    default=None,
    help="Audio buffered before playback starts; default PART-HOLD-BACK (LL-HLS), 3 segments (HLS), 1 s (progressive).",
)
@click.option(
    "--request-timeout-s",
    type=float,
    default=10.0,
    show_default=True,
    help="Timeout of each request (blocking reloads get 6 s more).",
)
@click.option(
    "--preload-hint/--no-preload-hint",
    default=True,
    show_default=True,
    help="LL-HLS: request the preload-hinted part ahead of time, as players do.",
)
@click.option("--allow-remote", is_flag=True, help="Allow a target that is not a loopback address.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def listeners_command(
    target: str,
    space: str | None,
    path: str | None,
    mode: str,
    shape: str,
    listeners: int,
    ramp_s: float | None,
    duration_s: float,
    join: bool,
    startup_s: float | None,
    request_timeout_s: float,
    preload_hint: bool,
    allow_remote: bool,
    as_json: bool,
) -> None:
    """Simulate N listeners of a live space and report listeners held, stall
    ratio, time to first audio, errors and the load generator's own CPU."""
    try:
        config = build_config(
            target=target,
            space=space,
            path=path,
            mode=mode,  # type: ignore[arg-type]
            shape=shape,
            listeners=listeners,
            ramp_s=ramp_s,
            duration_s=duration_s,
            join=join,
            allow_remote=allow_remote,
            startup_s=startup_s,
            request_timeout_s=request_timeout_s,
            preload_hint=preload_hint,
        )
    except BadRequest as exc:
        raise click.UsageError(exc.detail) from None
    summary = run_blocking(config, progress=sys.stderr.isatty())
    if as_json:
        click.echo(orjson.dumps(summary).decode())
    else:
        click.echo(report.format_table(summary))
