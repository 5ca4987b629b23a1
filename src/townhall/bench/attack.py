"""`townhall bench attack`: attack shapes run beside a legitimate LL-HLS
population, from many loopback source addresses, bounded in count and time.

Shapes: ``join`` (join flood), ``ticket`` (forged queue tickets), ``playlist``
(playlists without delivery directives), ``state`` (state.json), ``forged``
(forged listener tokens on reactions and stall reports), ``replay`` (one real
listener token replayed from every source), ``slowloris`` (connections that
send their headers a byte at a time and hold), ``headers`` (connections
sending one endless header value, ``attack_conn.py``). Attack sockets are bound to
addresses in 127.0.0.0/8 spread over ``--networks`` /24s (127.0.0.0/24 is
left to the legitimate listeners), so per-network defenses see many clients.

It reports legitimate goodput (share of listeners playing, sampled every
0.5 s, and the stall ratio), time to mitigate (attack start until goodput is
back at >= 95 % for good), attacker success per 1,000 attempts, the server's
CPU, mixer frames skipped and clock lateness p99, its memory (RSS before the
attack, at most, and after it), the load generator's own CPU, and how long
a new listener who joins during the attack (``--probe-at-s``) takes from
its join to playing.
Traffic goes only to a loopback --target.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import httpx
import orjson
import psutil

from townhall.bench import attack_conn
from townhall.bench.hlsclient import ListenerConfig, ListenerStats
from townhall.bench.join import prepare_space
from townhall.bench.listeners import _listener, is_loopback
from townhall.bench.playout import Playout
from townhall.bench.storm import clock_late_p99

SHAPES = ("join", "ticket", "playlist", "state", "forged", "replay", "slowloris", "headers")
MAX_SOURCES = 60_000
MAX_RATE_PER_S = 50_000
MAX_DURATION_S = 600.0
MAX_SLOW_CONNECTIONS = 10_000
MAX_CONNECTIONS = 512
MAX_HEADER_RATE = 8e6
REQUESTS_PER_CONNECTION = 20
GOODPUT_BAR = 0.95
SAMPLE_S = 0.5


def source_address(i: int, networks: int) -> str:
    """The i-th attack source: 127.N.M.H with the /24 (N, M) = i mod networks
    (from 127.1.0.0 on) and the host from the quotient."""
    net = i % networks + 256  # skip 127.0.x.x
    host = 1 + (i // networks) % 254
    return f"127.{net >> 8}.{net & 255}.{host}"


@dataclass
class AttackTally:
    attempts: int = 0
    successes: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    open_slow: int = 0


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


def _request(shape: str, space_id: str, host: str, token: str | None) -> bytes:
    common = f"Host: {host}\r\nUser-Agent: townhall-bench-attack\r\n"
    if shape == "join":
        return f"POST /api/spaces/{space_id}/join HTTP/1.1\r\n{common}Content-Length: 0\r\n\r\n".encode()
    if shape == "ticket":
        body = orjson.dumps({"ticket": "t1." + secrets.token_urlsafe(24)})
        head = f"POST /api/spaces/{space_id}/join HTTP/1.1\r\n{common}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + body
    if shape == "playlist":
        return f"GET /spaces/{space_id}/live.m3u8 HTTP/1.1\r\n{common}\r\n".encode()
    if shape == "state":
        return f"GET /spaces/{space_id}/state.json HTTP/1.1\r\n{common}\r\n".encode()
    bearer = (
        token
        if shape == "replay" and token
        else "eyJhbGciOiJIUzI1NiJ9." + secrets.token_urlsafe(40)
    )
    body = orjson.dumps({"emoji": "🔥"})
    head = (
        f"POST /api/spaces/{space_id}/reactions HTTP/1.1\r\n{common}Authorization: Bearer {bearer}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    if length:
        await reader.readexactly(length)
    return status, close


SUCCESS = {"join": 200, "ticket": 200, "forged": 202, "replay": 202}


async def _attacker(
    shape: str,
    port: int,
    space_id: str,
    token: str | None,
    sources: list[str],
    start_index: int,
    interval_s: float,
    deadline_s: float,
    tally: AttackTally,
    stride: int,
) -> None:
    index = start_index
    next_at = time.monotonic()
    while time.monotonic() < deadline_s:
        src = sources[index % len(sources)]
        index += stride
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0)), 5.0
            )
        except (OSError, TimeoutError):
            tally.statuses["connect_error"] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            for _ in range(REQUESTS_PER_CONNECTION):
                now = time.monotonic()
                if now >= deadline_s:
                    break
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                next_at = max(next_at + interval_s, time.monotonic() - 1.0)
                writer.write(_request(shape, space_id, f"127.0.0.1:{port}", token))
                tally.attempts += 1
                status, close = await asyncio.wait_for(_read_response(reader), 10.0)
                tally.statuses[str(status)] += 1
                if SUCCESS.get(shape) == status:
                    tally.successes += 1
                if close:
                    break
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            tally.statuses["broken"] += 1
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def _server_metrics(client: httpx.AsyncClient) -> tuple[float, float, float, str] | None:
    """(CPU seconds, mixer frames skipped, RSS bytes, the whole text) or None."""
    try:
        text = (await client.get("/metrics", timeout=2.0)).text
    except httpx.HTTPError:
        return None
    return (
        _metric(text, "process_cpu_seconds_total"),
        _metric(text, "townhall_mixer_skipped_frames_total"),
        _metric(text, "process_resident_memory_bytes"),
        text,
    )


def _prepare(target: str) -> tuple[str, str]:
    """A throwaway account, a live space, and one real listener token."""
    space_id = prepare_space(target, "bench attack")
    with httpx.Client(base_url=target, timeout=30) as client:
        token = client.post(f"/api/spaces/{space_id}/join").json()["token"]
    return space_id, str(token)


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
) -> dict[str, Any]:
    parts = urlsplit(target)
    port = parts.port or 80
    addresses = [source_address(i, networks) for i in range(sources)]
    proc = psutil.Process()
    cpu0 = sum(proc.cpu_times()[:2])
    t0 = time.monotonic()
    deadline = t0 + duration_s
    cfg = ListenerConfig(
        host=parts.hostname or "127.0.0.1",
        port=port,
        path=f"/spaces/{space_id}/live.m3u8",
        mode="llhls",
        join_path=f"/api/spaces/{space_id}/join",
    )
    stats = [ListenerStats(started_at_s=t0, playout=Playout(0.0)) for _ in range(listeners)]
    tasks = [asyncio.create_task(_listener(cfg, s, deadline)) for s in stats]
    tally = AttackTally()
    probe = ListenerStats(started_at_s=t0, playout=Playout(0.0))
    probe_task: asyncio.Task[None] | None = None
    rss: list[float] = []
    attack_tasks: list[asyncio.Task[Any]] = []
    samples: list[tuple[float, float]] = []
    timeline: list[dict[str, float]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=round(duration_s), unit="s", file=sys.stderr, leave=False)
    async with httpx.AsyncClient(base_url=target) as http:
        m0 = await _server_metrics(http)
        last_m, last_t = m0, t0
        started = False
        while (now := time.monotonic()) < deadline:
            if not started and now - t0 >= attack_start_s:
                started = True
                if shape == "slowloris":
                    attack_tasks.append(
                        asyncio.create_task(
                            attack_conn.slowloris(
                                port, addresses, slow_connections, deadline, tally
                            )
                        )
                    )
                elif shape == "headers":
                    attack_tasks.append(
                        asyncio.create_task(
                            attack_conn.endless_headers(
                                port, addresses, slow_connections, deadline, tally, header_rate
                            )
                        )
                    )
                else:
                    interval = connections / rate_per_s
                    attack_tasks += [
                        asyncio.create_task(
                            _attacker(
                                shape,
                                port,
                                space_id,
                                token,
                                addresses,
                                i,
                                interval,
                                deadline,
                                tally,
                                connections,
                            )
                        )
                        for i in range(connections)
                    ]
            if probe_task is None and probe_at_s is not None and now - t0 >= probe_at_s:
                probe = ListenerStats(started_at_s=time.monotonic(), playout=Playout(0.0))
                probe_task = asyncio.create_task(_listener(cfg, probe, deadline))
            await asyncio.sleep(SAMPLE_S)
            now = time.monotonic()
            playing = [s for s in stats if s.playout.play_start_s is not None]
            good = (
                sum(1 for s in playing if not s.playout.stalled_at(now)) / len(playing)
                if playing
                else 0.0
            )
            samples.append((now - t0, good))
            m = await _server_metrics(http)
            if m is not None:
                rss.append(m[2])
            if m is not None and last_m is not None:
                timeline.append(
                    {
                        "t_s": round(now - t0, 2),
                        "goodput": round(good, 4),
                        "server_cpu_percent": round(100 * (m[0] - last_m[0]) / (now - last_t), 1),
                        "attack_attempts": tally.attempts,
                    }
                )
            last_m, last_t = m, now
            if bar is not None:
                bar.n = round(now - t0)
                bar.set_postfix(goodput=f"{good:.2f}", attack=tally.attempts)
        m1 = await _server_metrics(http)
        started_at = int(attack_start_s / SAMPLE_S) - 1
        rss_before = rss[max(0, started_at)] if len(rss) > started_at else None
        for task in [*tasks, *attack_tasks, *([probe_task] if probe_task else [])]:
            task.cancel()
        await asyncio.gather(*tasks, *attack_tasks, return_exceptions=True)
        end = time.monotonic()
        cpu_s = sum(proc.cpu_times()[:2]) - cpu0
        await asyncio.sleep(3.0)  # the attack's connections closed: what the server keeps
        m2 = await _server_metrics(http)
    if bar is not None:
        bar.close()
    wall = end - t0
    played = sum(s.playout.played_s(end) for s in stats)
    stalled = sum(s.playout.stalled_s for s in stats)
    during = [g for t, g in samples if t >= attack_start_s]
    return {
        "target": target,
        "shape": shape,
        "sources": sources,
        "networks": networks,
        "rate_per_s": rate_per_s,
        "listeners": listeners,
        "duration_s": duration_s,
        "attack_start_s": attack_start_s,
        "legit_goodput_min": round(min(during), 4) if during else None,
        "legit_goodput_mean": round(sum(during) / len(during), 4) if during else None,
        "legit_stall_ratio": round(stalled / played, 6) if played else None,
        "legit_joins": sum(1 for s in stats if s.join_s is not None),
        "time_to_mitigate_s": time_to_mitigate(samples, attack_start_s),
        "attack_attempts": tally.attempts,
        "attack_per_s": round(tally.attempts / max(1e-9, wall - attack_start_s), 1),
        "attacker_success_per_1000": round(1000 * tally.successes / tally.attempts, 1)
        if tally.attempts
        else None,
        "attack_statuses": dict(tally.statuses.most_common()),
        "server_cpu_percent": round(100 * (m1[0] - m0[0]) / wall, 1) if m0 and m1 else None,
        "mixer_skipped_frames": (m1[1] - m0[1]) if m0 and m1 else None,
        "mixer_clock_late_p99_s": clock_late_p99(m0[3], m1[3]) if m0 and m1 else None,
        "server_rss_mb_before_attack": _mb(rss_before),
        "server_rss_mb_max": _mb(max(rss)) if rss else None,
        "server_rss_mb_after": _mb(m2[2]) if m2 else None,
        "probe_join_s": None if probe.join_s is None else round(probe.join_s, 3),
        "probe_join_to_audio_s": None
        if probe.first_audio_s is None
        else round(probe.first_audio_s, 3),
        "client_cpu_percent": round(100 * cpu_s / wall, 1),
        "timeline": timeline,
    }


def _mb(value: float | None) -> float | None:
    return None if value is None else round(value / 1e6, 1)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p["t_s"] for p in result["timeline"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, [p["goodput"] for p in result["timeline"]], label="legit goodput")
    ax.axhline(GOODPUT_BAR, linestyle=":", color="grey")
    ax.axvline(result["attack_start_s"], linestyle="--", color="red", label="attack starts")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("s")
    ax2 = ax.twinx()
    ax2.plot(
        t,
        [p["server_cpu_percent"] for p in result["timeline"]],
        color="orange",
        label="server CPU %",
    )
    ax.set_title(f"bench attack: {result['shape']} from {result['sources']} sources")
    fig.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@click.command("attack")
@click.option("--target", required=True, help="Base URL of YOUR server (loopback only).")
@click.option("--space", default=None, help="Space id to attack; default: a new live space.")
@click.option("--shape", type=click.Choice(SHAPES), default="join", show_default=True)
@click.option("--sources", default=1000, show_default=True, help="Loopback source addresses.")
@click.option("--networks", default=1000, show_default=True, help="/24 networks they spread over.")
@click.option("--rate", "rate_per_s", default=500.0, show_default=True, help="Attack requests/s.")
@click.option("--connections", default=64, show_default=True, help="Attack connections at once.")
@click.option("--slow-connections", default=500, show_default=True, help="Slowloris connections.")
@click.option("--listeners", default=50, show_default=True, help="Legitimate LL-HLS listeners.")
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
    connections: int,
    slow_connections: int,
    listeners: int,
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
    if not 0 < rate_per_s <= MAX_RATE_PER_S or not 1 <= connections <= MAX_CONNECTIONS:
        raise click.UsageError(
            f"--rate up to {MAX_RATE_PER_S}, --connections 1..{MAX_CONNECTIONS}."
        )
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
    result = asyncio.run(
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
        )
    )
    if plot_path is not None:
        plot(result, plot_path)
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    for key, value in result.items():
        if key != "timeline":
            click.echo(f"{key:28} {value}")
