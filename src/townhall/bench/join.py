"""`townhall bench join`: how many listeners per second can join a space?

A flash crowd is mostly joins: each one is ``POST /api/spaces/{id}/join`` and
gets a signed listener token back. This load generator keeps ``--concurrency``
HTTP/1.1 keep-alive connections busy with joins (raw asyncio streams on uvloop
when available, so the generator itself stays cheap) until ``--requests`` joins
or ``--duration-s`` seconds, whichever comes first, and reports joins/s,
latency percentiles, errors by kind and its own CPU use.

Traffic goes only to the --target named, which must be a loopback address
unless --allow-remote is given.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import secrets
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import click
import httpx
import orjson

MAX_REQUESTS = 10_000_000
MAX_DURATION_S = 600.0
MAX_CONCURRENCY = 4096


@dataclass
class Tally:
    """What the workers record (latencies in seconds, errors by kind)."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    issued: int = 0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(tally: Tally, wall_s: float, cpu_s: float, concurrency: int) -> dict[str, Any]:
    """The report: rates, latency percentiles (ms), errors, generator CPU."""
    ordered = sorted(tally.latencies_s)
    ok = len(ordered)
    return {
        "joins_ok": ok,
        "errors": dict(tally.errors),
        "error_count": sum(tally.errors.values()),
        "wall_s": round(wall_s, 3),
        "joins_per_s": round(ok / wall_s, 1) if wall_s > 0 else 0.0,
        "concurrency": concurrency,
        "latency_ms": {
            "p50": round(percentile(ordered, 50) * 1000, 2),
            "p90": round(percentile(ordered, 90) * 1000, 2),
            "p99": round(percentile(ordered, 99) * 1000, 2),
            "max": round((ordered[-1] if ordered else 0.0) * 1000, 2),
        },
        "generator_cpu_s": round(cpu_s, 2),
        "generator_cpu_percent": round(100 * cpu_s / wall_s, 1) if wall_s > 0 else 0.0,
    }


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) resolves only to loopback addresses."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


async def _worker(
    host: str,
    port: int,
    request: bytes,
    tally: Tally,
    budget: list[int],
    deadline: float,
    timeout_s: float,
) -> None:
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    clock = time.perf_counter
    try:
        while budget[0] > 0 and clock() < deadline:
            budget[0] -= 1
            tally.issued += 1
            try:
                if connection is None:
                    connection = await asyncio.wait_for(
                        asyncio.open_connection(host, port), timeout_s
                    )
                reader, writer = connection
                started = clock()
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
                status, length, close = _parse_head(head)
                if length:
                    await asyncio.wait_for(reader.readexactly(length), timeout_s)
                elapsed = clock() - started
                if status == 200:
                    tally.latencies_s.append(elapsed)
                else:
                    tally.errors[f"http_{status}"] += 1
                if close:
                    _close(connection)
                    connection = None
            except TimeoutError:
                tally.errors["timeout"] += 1
                _close(connection)
                connection = None
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                tally.errors[type(exc).__name__] += 1
                _close(connection)
                connection = None
            except ValueError:
                tally.errors["bad_response"] += 1
                _close(connection)
                connection = None
    finally:
        _close(connection)


def _close(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
    if connection is not None:
        connection[1].close()


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, content length, server closes) of an HTTP/1.1 response head."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            raise ValueError("chunked responses are not expected from join")
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    return status, length, close


def prepare_space(target: str, title: str = "bench join") -> str:
    """Create a throwaway account and a live unlisted space to join; its id."""
    name = "bench_" + secrets.token_hex(4)
    password = secrets.token_urlsafe(16)
    with httpx.Client(base_url=target, timeout=30) as client:
        client.post(
            "/api/accounts", json={"username": name, "password": password}
        ).raise_for_status()
        session = client.post("/api/sessions", json={"username": name, "password": password})
        session.raise_for_status()
        space = client.post(
            "/api/spaces",
            json={"title": title, "visibility": "unlisted"},
            headers={"Authorization": f"Bearer {session.json()['token']}"},
        )
        space.raise_for_status()
        return str(space.json()["id"])


async def run_join(
    target: str,
    space_id: str,
    *,
    concurrency: int,
    duration_s: float,
    requests: int,
    timeout_s: float = 10.0,
    progress: Any = None,
) -> tuple[Tally, float]:
    """Run the load; (tally, wall seconds). Bounded by ``requests`` and ``duration_s``."""
    parts = urlsplit(target)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme != "http":
        raise click.UsageError("only http:// targets are supported (put TLS in front separately)")
    path = f"{parts.path.rstrip('/')}/api/spaces/{space_id}/join"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: 0\r\n"
        "User-Agent: townhall-bench-join\r\n\r\n"
    ).encode()
    tally = Tally()
    budget = [requests]
    started = time.perf_counter()
    deadline = started + duration_s
    workers = [
        asyncio.create_task(_worker(host, port, request, tally, budget, deadline, timeout_s))
        for _ in range(concurrency)
    ]
    done = 0
    try:
        while not all(w.done() for w in workers):
            await asyncio.sleep(0.25)
            if progress is not None:
                now_done = len(tally.latencies_s) + sum(tally.errors.values())
                progress.update(now_done - done)
                done = now_done
    finally:
        await asyncio.gather(*workers, return_exceptions=True)
    return tally, time.perf_counter() - started


def _table(report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    rows = [
        ("joins ok", f"{report['joins_ok']}"),
        ("joins/s", f"{report['joins_per_s']:.1f}"),
        (
            "latency p50 / p90 / p99 / max",
            f"{lat['p50']} / {lat['p90']} / {lat['p99']} / {lat['max']} ms",
        ),
        ("errors", ", ".join(f"{k}: {v}" for k, v in sorted(report["errors"].items())) or "none"),
        ("concurrency", f"{report['concurrency']}"),
        ("wall time", f"{report['wall_s']} s"),
        (
            "generator CPU",
            f"{report['generator_cpu_s']} s ({report['generator_cpu_percent']}% of one core)",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@click.command("join")
@click.option(
    "--target", required=True, help="Base URL of the townhall to load, e.g. http://127.0.0.1:8000"
)
@click.option("--space", "space_id", default=None, help="Space id to join; default: create one.")
@click.option(
    "--concurrency",
    default=64,
    show_default=True,
    type=click.IntRange(1, MAX_CONCURRENCY),
    help="Connections kept busy at once.",
)
@click.option(
    "--duration-s",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1, MAX_DURATION_S),
    help="Stop after this long.",
)
@click.option(
    "--requests",
    "requests_",
    default=100_000,
    show_default=True,
    type=click.IntRange(1, MAX_REQUESTS),
    help="Stop after this many joins.",
)
@click.option(
    "--timeout-s",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1, 120),
    help="Per-request timeout.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--allow-remote", is_flag=True, help="Allow a target that is not a loopback address.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar on stderr.")
def join_command(
    target: str,
    space_id: str | None,
    concurrency: int,
    duration_s: float,
    requests_: int,
    timeout_s: float,
    as_json: bool,
    allow_remote: bool,
    progress: bool,
) -> None:
    """Load-test joins: POST /api/spaces/{id}/join on keep-alive connections."""
    import psutil
    from tqdm import tqdm

    host = urlsplit(target).hostname or ""
    if not allow_remote and not is_loopback(host):
        raise click.UsageError(
            f"--target {target} is not a loopback address; pass --allow-remote to load a server you run elsewhere."
        )
    if space_id is None:
        space_id = prepare_space(target)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    process = psutil.Process()
    cpu_before = sum(process.cpu_times()[:2])
    bar = tqdm(total=requests_, unit="join", disable=not progress, leave=False)
    try:
        tally, wall_s = runner(
            run_join(
                target,
                space_id,
                concurrency=concurrency,
                duration_s=duration_s,
                requests=requests_,
                timeout_s=timeout_s,
                progress=bar,
            )
        )
    finally:
        bar.close()
    cpu_s = sum(process.cpu_times()[:2]) - cpu_before
    report = summarize(tally, wall_s, cpu_s, concurrency)
    report["target"] = target
    report["space_id"] = space_id
    if as_json:
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(_table(report))
