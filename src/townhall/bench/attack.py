"""`townhall bench attack`: attack shapes run beside a legitimate LL-HLS
population, from many loopback source addresses, bounded in count and time.

Shapes: ``join`` (join flood), ``ticket`` (forged queue tickets), ``playlist``
(playlists without delivery directives), ``state`` (state.json), ``forged``
(forged listener tokens on reactions and stall reports), ``replay`` (one real
listener token replayed from every source), ``page`` (the listener page's
HTML), ``reload`` (blocking reloads for a part years away: 400), ``signin``
(sign-ins to made-up accounts, each its own name), ``slowloris`` (connections that
send their headers a byte at a time and hold), ``headers`` (connections
sending one endless header value, ``attack_conn.py``). The request shapes are
pipelined floods paced open-loop (``flood.py``), cheap enough that one core
sends 10 x the request rate of 1,000 listeners. Attack sockets are bound to
addresses in 127.1.0.0 and up, spread over ``--networks`` /24s; every
legitimate listener has an address of its own in 127.0.1.0-127.0.255.255
(``--listener-networks`` /24s), so per-network defenses see many clients on
both sides and need no overrides. Listeners join ramped (``--ramp-s``) so
their own joins stay under the join gate's pressure rate.

It reports legitimate goodput (share of listeners playing, sampled every
0.5 s, and the stall ratio), time to mitigate (attack start until goodput is
back at >= 95 % for good), attacker success per 1,000 attempts, the server's
CPU, mixer frames skipped and clock lateness p99, its memory (RSS before the
attack, at most, and after it), the load generator's own CPU (the most over 2 s: ``client_saturated`` at
>= 90 % of a core; its event loop's lateness p99: ``client_starved`` when it
is late but not busy; either makes listeners look stalled), and how long a
new listener who joins during the attack (``--probe-at-s``) takes from its
join to playing.
Traffic goes only to a loopback --target.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import httpx
import orjson

from townhall.bench import attack_conn
from townhall.bench.attack_watch import (
    GOODPUT_BAR,
    Clock,
    mb,
    metrics_loop,
    p99,
    plot,
    server_metrics,
    windows,
)
from townhall.bench.flood import FLOOD_SHAPES, SUCCESS, Flood, Tally, request_maker
from townhall.bench.hlsclient import ListenerConfig, ListenerStats
from townhall.bench.join import prepare_space
from townhall.bench.listeners import _listener, is_loopback
from townhall.bench.playout import Playout
from townhall.bench.storm import clock_late_p99

SHAPES = (*FLOOD_SHAPES, "slowloris", "headers")
MAX_SOURCES = 60_000
MAX_RATE_PER_S = 50_000
MAX_DURATION_S = 600.0
MAX_SLOW_CONNECTIONS = 10_000
MAX_CONNECTIONS = 10_000
MAX_PIPELINE = 64
MAX_LISTENERS = 5_000
MAX_HEADER_RATE = 8e6
SAMPLE_S = 0.5
RAMP_PER_S = 100.0  # legitimate joins per second by default: under challenge_joins_per_s
LEGIT_RATE_WINDOW_S = 3.0
SATURATED_CPU_PERCENT = 90.0
LATE_LOOP_MS = 100.0  # loop this late (p99) but not busy: the machine did not give it the core


def listener_address(i: int, networks: int) -> str:
    """The i-th legitimate listener's address: 127.0.N.H with N = 1 + i mod
    ``networks`` (at most 255 /24s; 127.0.0.0/24 is the bench's own) and the
    host from the quotient, so every listener has an address of its own."""
    networks = max(1, min(networks, 255))
    return f"127.0.{1 + i % networks}.{1 + (i // networks) % 254}"


def source_address(i: int, networks: int) -> str:
    """The i-th attack source: 127.N.M.H with the /24 (N, M) = i mod networks
    (from 127.1.0.0 on) and the host from the quotient."""
    net = i % networks + 256  # skip 127.0.x.x
    host = 1 + (i // networks) % 254
    return f"127.{net >> 8}.{net & 255}.{host}"


def time_to_mitigate(
    samples: list[tuple[float, float]], attack_start_s: float, bar: float = GOODPUT_BAR
) -> float | None:
    """Seconds from attack start until goodput stayed >= ``bar`` for good;
    0 if it never dropped below; None if it never recovered."""
    last_bad = None
    for t, goodput in samples:
        if t >= attack_start_s and goodput < bar:
            last_bad = t
    if last_bad is None:
        return 0.0
    after = [t for t, g in samples if t > last_bad and g >= bar]
    return round(after[0] - attack_start_s, 2) if after else None


def _prepare(target: str) -> tuple[str, str]:
    """A throwaway account, a live space, and one real listener token."""
    space_id = prepare_space(target, "bench attack")
    with httpx.Client(base_url=target, timeout=30) as client:
        token = client.post(f"/api/spaces/{space_id}/join").json()["token"]
    return space_id, str(token)


async def _delayed_listener(
    cfg: ListenerConfig, stats: ListenerStats, deadline_s: float, source: str, delay_s: float
) -> None:
    await asyncio.sleep(delay_s)
    stats.started_at_s = time.monotonic()
    await _listener(cfg, stats, deadline_s, source)


def _start_attack(
    shape: str,
    *,
    port: int,
    space_id: str,
    token: str | None,
    addresses: list[str],
    connections: int,
    rate_per_s: float,
    pipeline: int,
    slow_connections: int,
    header_rate: float,
    deadline_s: float,
    churn_s: float | None = None,
    tally: Tally,
) -> tuple[asyncio.Task[Any], Flood | None]:
    if shape == "slowloris":
        slow = attack_conn.slowloris(port, addresses, slow_connections, deadline_s, tally)
        return asyncio.create_task(slow), None
    if shape == "headers":
        endless = attack_conn.endless_headers(
            port, addresses, slow_connections, deadline_s, tally, header_rate
        )
        return asyncio.create_task(endless), None
    flood = Flood(
        port=port,
        sources=addresses,
        connections=connections or min(len(addresses), MAX_CONNECTIONS),
        make=request_maker(shape, space_id, f"127.0.0.1:{port}", token),
        rate_per_s=rate_per_s,
        pipeline=pipeline,
        deadline_s=deadline_s,
        tally=tally,
        success_status=SUCCESS.get(shape),
        churn_s=churn_s,
    )
    return asyncio.create_task(flood.run()), flood


async def run_attack(
    *,
    target: str,
    space_id: str,
    token: str | None,
    shape: str,
    sources: int,
    networks: int,
    rate_per_s: float,
    connections: int,
    slow_connections: int,
    listeners: int,
    duration_s: float,
    attack_start_s: float,
    progress: bool,
    header_rate: float = 4e6,
    probe_at_s: float | None = None,
    listener_networks: int = 250,
    ramp_s: float | None = None,
    rate_x: float | None = None,
    pipeline: int = 32,
    churn_s: float | None = None,
) -> dict[str, Any]:
    """One attack shape beside ``listeners`` legitimate LL-HLS listeners, each
    bound to its own loopback address (``listener_address``); bounded by
    ``duration_s``. ``rate_x``: the attack rate is that many times the
    listeners' own request rate, measured just before the attack starts."""
    parts = urlsplit(target)
    port = parts.port or 80
    addresses = [source_address(i, networks) for i in range(sources)]
    clock = Clock()
    load_start = os.getloadavg()[0]
    cpu0 = clock.cpu_s()
    t0 = time.monotonic()
    deadline = t0 + duration_s
    cfg = ListenerConfig(
        host=parts.hostname or "127.0.0.1",
        port=port,
        path=f"/spaces/{space_id}/live.m3u8",
        mode="llhls",
        join_path=f"/api/spaces/{space_id}/join",
    )
    ramp = listeners / RAMP_PER_S if ramp_s is None else ramp_s
    stats = [ListenerStats(started_at_s=t0, playout=Playout(0.0)) for _ in range(listeners)]
    tasks = [
        asyncio.create_task(
            _delayed_listener(
                cfg, s, deadline, listener_address(i, listener_networks), i * ramp / listeners
            )
        )
        for i, s in enumerate(stats)
    ]
    tasks.append(asyncio.create_task(clock.watch_lag(deadline)))
    tally = Tally()
    flood: Flood | None = None
    probe = ListenerStats(started_at_s=t0, playout=Playout(0.0))
    rss: list[float] = []
    latest: list[Any] = []
    samples: list[tuple[float, float]] = []
    timeline: list[dict[str, float]] = []
    requests: list[tuple[float, int]] = []
    legit_rate = 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=round(duration_s), unit="s", file=sys.stderr, leave=False)
    async with httpx.AsyncClient(base_url=target) as http:
        m0 = await server_metrics(http)
        tasks.append(asyncio.create_task(metrics_loop(http, deadline, rss, latest)))
        started = False
        last_t, last_cpu = time.monotonic(), clock.cpu_s()
        while (now := time.monotonic()) < deadline:
            if not started and now - t0 >= attack_start_s:
                started = True
                window = [(t, n) for t, n in requests if t >= now - LEGIT_RATE_WINDOW_S]
                playing_now = sum(1 for s in stats if s.playout.play_start_s is not None)
                if len(window) >= 2 and window[-1][0] > window[0][0] and playing_now:
                    measured = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
                    # per playing listener, times all of them (some may still be joining)
                    legit_rate = measured / playing_now * listeners
                if rate_x is not None and legit_rate > 0:
                    rate_per_s = min(MAX_RATE_PER_S, rate_x * legit_rate)
                task, flood = _start_attack(
                    shape,
                    port=port,
                    space_id=space_id,
                    token=token,
                    addresses=addresses,
                    connections=connections,
                    rate_per_s=rate_per_s,
                    pipeline=pipeline,
                    slow_connections=slow_connections,
                    header_rate=header_rate,
                    deadline_s=deadline,
                    churn_s=churn_s,
                    tally=tally,
                )
                tasks.append(task)
            if probe_at_s is not None and now - t0 >= probe_at_s:
                probe = ListenerStats(started_at_s=time.monotonic(), playout=Playout(0.0))
                source = listener_address(listeners, listener_networks)
                tasks.append(asyncio.create_task(_listener(cfg, probe, deadline, source)))
                probe_at_s = None
            await asyncio.sleep(SAMPLE_S)
            now = time.monotonic()
            cpu = clock.cpu_s()
            client_cpu = 100 * (cpu - last_cpu) / max(1e-9, now - last_t)
            clock.cpu_percent.append(client_cpu)
            last_t, last_cpu = now, cpu
            requests.append((now, sum(s.requests for s in stats)))
            del requests[:-40]
            playing = [s for s in stats if s.playout.play_start_s is not None]
            good = (
                sum(1 for s in playing if not s.playout.stalled_at(now)) / len(playing)
                if playing
                else 0.0
            )
            samples.append((now - t0, good))
            point = {
                "t_s": round(now - t0, 2),
                "goodput": round(good, 4),
                "playing": len(playing),
                "attack_attempts": tally.attempts,
                "client_cpu_percent": round(client_cpu, 1),
            }
            if len(latest) == 2:
                (t1, m1), (t2, m2) = latest
                point["server_cpu_percent"] = round(100 * (m1[0] - m2[0]) / max(1e-9, t1 - t2), 1)
            timeline.append(point)
            if bar is not None:
                bar.n = round(now - t0)
                bar.set_postfix(
                    goodput=f"{good:.2f}", attack=tally.attempts, cpu=f"{client_cpu:.0f}"
                )
        m1 = await server_metrics(http)
        started_at = int(attack_start_s) - 1  # RSS is sampled once a second
        rss_before = rss[max(0, started_at)] if len(rss) > started_at else None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        end = time.monotonic()
        cpu_s = clock.cpu_s() - cpu0
        await asyncio.sleep(3.0)  # the attack's connections closed: what the server keeps
        m2 = await server_metrics(http)
    if bar is not None:
        bar.close()
    wall = end - t0
    attack_wall = max(1e-9, wall - attack_start_s)
    played = sum(s.playout.played_s(end) for s in stats)
    stalled = sum(s.playout.stalled_s for s in stats)
    during = [g for t, g in samples if t >= attack_start_s]
    cpu_during = [
        p["client_cpu_percent"] for p in timeline if p["t_s"] >= attack_start_s + SAMPLE_S
    ]
    client_max = max(windows(cpu_during), default=None)
    lag_p99 = p99(clock.lags_ms)
    return {
        "target": target,
        "shape": shape,
        "sources": sources,
        "networks": networks,
        "rate_per_s": round(rate_per_s, 1),
        "rate_x": rate_x,
        "churn_s": churn_s,
        "listeners": listeners,
        "listener_networks": min(listeners, listener_networks),
        "duration_s": duration_s,
        "attack_start_s": attack_start_s,
        "legit_req_per_s": round(legit_rate, 1),
        "legit_goodput_min": round(min(during), 4) if during else None,
        "legit_goodput_mean": round(sum(during) / len(during), 4) if during else None,
        "legit_stall_ratio": round(stalled / played, 6) if played else None,
        "legit_joins": sum(1 for s in stats if s.join_s is not None),
        "legit_errors": dict(sum((s.errors for s in stats), Counter()).most_common()),
        "legit_playing_at_end": sum(1 for s in stats if s.playout.play_start_s is not None),
        "time_to_mitigate_s": time_to_mitigate(samples, attack_start_s),
        "attack_attempts": tally.attempts,
        "attack_per_s": round(tally.attempts / attack_wall, 1),
        "attack_answered_per_s": round(_answered(tally) / attack_wall, 1),
        "attack_not_sent": flood.not_sent if flood else None,
        "attack_connections_peak": flood.peak_live if flood else None,
        "attacker_success_per_1000": round(1000 * tally.successes / tally.attempts, 1)
        if tally.attempts
        else None,
        "attack_statuses": dict(tally.statuses.most_common()),
        "server_cpu_percent": round(100 * (m1[0] - m0[0]) / wall, 1) if m0 and m1 else None,
        "mixer_skipped_frames": (m1[1] - m0[1]) if m0 and m1 else None,
        "mixer_clock_late_p99_s": clock_late_p99(m0[3], m1[3]) if m0 and m1 else None,
        "server_rss_mb_before_attack": mb(rss_before),
        "server_rss_mb_max": mb(max(rss)) if rss else None,
        "server_rss_mb_after": mb(m2[2]) if m2 else None,
        "probe_join_s": None if probe.join_s is None else round(probe.join_s, 3),
        "probe_join_to_audio_s": None
        if probe.first_audio_s is None
        else round(probe.first_audio_s, 3),
        "client_cpu_percent": round(100 * cpu_s / wall, 1),
        "client_cpu_us_per_request": round(
            1e6 * cpu_s / max(1, tally.attempts + sum(s.requests for s in stats)), 1
        ),
        "client_cpu_max_percent": client_max,
        "client_loop_lag_p99_ms": lag_p99,
        "client_saturated": (client_max or 0) >= SATURATED_CPU_PERCENT,
        "client_starved": (client_max or 0) < SATURATED_CPU_PERCENT
        and (lag_p99 or 0) >= LATE_LOOP_MS,
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "timeline": timeline,
    }


def _answered(tally: Tally) -> int:  # answers with a status (not errors)
    return sum(v for k, v in tally.statuses.items() if k.isdigit())


@click.command("attack")
@click.option("--target", required=True, help="Base URL of YOUR server (loopback only).")
@click.option("--space", default=None, help="Space id to attack; default: a new live space.")
@click.option("--shape", type=click.Choice(SHAPES), default="join", show_default=True)
@click.option("--sources", default=1000, show_default=True, help="Loopback source addresses.")
@click.option("--networks", default=1000, show_default=True, help="/24 networks they spread over.")
@click.option("--rate", "rate_per_s", default=500.0, show_default=True, help="Attack requests/s.")
@click.option(
    "--rate-x",
    default=None,
    type=float,
    help="Attack at this many times the listeners' own request rate (measured just before the attack); overrides --rate.",
)
@click.option(
    "--connections",
    default=0,
    show_default=True,
    help="Flood connections, each bound to one source; 0: one per source.",
)
@click.option(
    "--pipeline",
    default=32,
    show_default=True,
    help="Requests in flight per flood connection (written up to half of it at a time).",
)
@click.option(
    "--churn-s",
    default=None,
    type=float,
    help="A flood connection whose pipeline is full and that got no answer for this long is "
    "dropped and opened again (an attacker that reconnects when the server stops reading it); "
    "default: keep it.",
)
@click.option("--slow-connections", default=500, show_default=True, help="Slowloris connections.")
@click.option("--listeners", default=50, show_default=True, help="Legitimate LL-HLS listeners.")
@click.option(
    "--listener-networks",
    default=250,
    show_default=True,
    help="/24s the listeners' own addresses spread over (127.0.1-255.x).",
)
@click.option(
    "--ramp-s",
    default=None,
    type=float,
    help=f"Seconds over which the listeners join (default: {RAMP_PER_S:g} joins/s).",
)
@click.option(
    "--header-rate", default=4e6, show_default=True, help="Bytes/s per endless-header connection."
)
@click.option(
    "--probe-at-s",
    default=None,
    type=float,
    help="When a new listener joins (default: attack + 5 s).",
)
@click.option("--duration-s", default=30.0, show_default=True)
@click.option("--attack-start-s", default=8.0, show_default=True, help="When the attack starts.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None)
@click.option("--no-progress", is_flag=True)
def attack_command(
    target: str,
    space: str | None,
    shape: str,
    sources: int,
    networks: int,
    rate_per_s: float,
    rate_x: float | None,
    connections: int,
    pipeline: int,
    churn_s: float | None,
    slow_connections: int,
    listeners: int,
    listener_networks: int,
    ramp_s: float | None,
    header_rate: float,
    probe_at_s: float | None,
    duration_s: float,
    attack_start_s: float,
    as_json: bool,
    plot_path: Path | None,
    no_progress: bool,
) -> None:
    """Attack your own townhall from many loopback addresses beside legitimate
    listeners, and report what the listeners kept. Bounded in count and time."""
    host = urlsplit(target).hostname or ""
    if urlsplit(target).scheme != "http" or not is_loopback(host):
        raise click.UsageError("--target must be an http:// loopback URL (this tool attacks).")
    if not 1 <= sources <= MAX_SOURCES or not 1 <= networks <= min(sources, 65_000):
        raise click.UsageError(f"--sources 1..{MAX_SOURCES}, --networks 1..sources.")
    if not 0 < rate_per_s <= MAX_RATE_PER_S or not 0 <= connections <= MAX_CONNECTIONS:
        raise click.UsageError(
            f"--rate up to {MAX_RATE_PER_S}, --connections 0..{MAX_CONNECTIONS}."
        )
    if rate_x is not None and not 0 < rate_x <= 100:
        raise click.UsageError("--rate-x 0..100 (times the listeners' request rate).")
    if not 1 <= pipeline <= MAX_PIPELINE:
        raise click.UsageError(f"--pipeline 1..{MAX_PIPELINE}.")
    if not 0 <= listeners <= MAX_LISTENERS or not 1 <= listener_networks <= 255:
        raise click.UsageError(f"--listeners 0..{MAX_LISTENERS}, --listener-networks 1..255.")
    if ramp_s is not None and not 0 <= ramp_s < duration_s:
        raise click.UsageError("--ramp-s 0..duration.")
    if not 0 < header_rate <= MAX_HEADER_RATE:
        raise click.UsageError(f"--header-rate up to {MAX_HEADER_RATE:g} bytes/s.")
    if not 0 <= slow_connections <= MAX_SLOW_CONNECTIONS:
        raise click.UsageError(f"--slow-connections up to {MAX_SLOW_CONNECTIONS}.")
    if not 1 <= duration_s <= MAX_DURATION_S or not 0 <= attack_start_s < duration_s:
        raise click.UsageError("--duration-s 1..600 and --attack-start-s shorter than it.")
    target = target.rstrip("/")
    token: str | None = None
    if space is None:
        space, token = _prepare(target)
    if shape == "replay" and token is None:
        raise click.UsageError("--shape replay needs a space of its own (leave out --space).")
    import uvloop

    result = uvloop.run(
        run_attack(
            target=target,
            space_id=space,
            token=token,
            shape=shape,
            sources=sources,
            networks=networks,
            rate_per_s=rate_per_s,
            connections=connections,
            slow_connections=slow_connections,
            listeners=listeners,
            duration_s=duration_s,
            attack_start_s=attack_start_s,
            progress=not no_progress,
            header_rate=header_rate,
            probe_at_s=attack_start_s + 5.0 if probe_at_s is None else probe_at_s,
            listener_networks=listener_networks,
            ramp_s=ramp_s,
            rate_x=rate_x,
            pipeline=pipeline,
            churn_s=churn_s,
        )
    )
    if result["client_saturated"] or result["client_starved"]:
        why = "saturated" if result["client_saturated"] else "was starved of CPU by other programs"
        click.echo(
            f"warning: the load generator {why} (CPU up to "
            f"{result['client_cpu_max_percent']} % of a core over 2 s, event loop late "
            f"{result['client_loop_lag_p99_ms']} ms p99): some stalls may be its own.",
            err=True,
        )
    if plot_path is not None:
        plot(result, plot_path)
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    for key, value in result.items():
        if key != "timeline":
            click.echo(f"{key:28} {value}")
