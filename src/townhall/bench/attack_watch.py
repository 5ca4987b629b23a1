"""`townhall bench attack`'s watchers: the server's /metrics, the load
generator's own CPU and event-loop lateness, and the PNG plot."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

GOODPUT_BAR = 0.95
LAG_PROBE_S = 0.05
MAX_LAG_SAMPLES = 20_000
METRICS_TIMEOUT_S = 5.0  # a server starved of CPU answers /metrics late


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(" ", 1)[1])
    return total


async def server_metrics(client: httpx.AsyncClient) -> tuple[float, float, float, str] | None:
    """(CPU seconds, mixer frames skipped, RSS bytes, the whole text) or None."""
    try:
        text = (await client.get("/metrics", timeout=METRICS_TIMEOUT_S)).text
    except httpx.HTTPError:
        return None
    return (
        metric(text, "process_cpu_seconds_total"),
        metric(text, "townhall_mixer_skipped_frames_total"),
        metric(text, "process_resident_memory_bytes"),
        text,
    )


@dataclass
class Clock:
    """The load generator's own health: its CPU per interval and how late its
    event loop wakes (a saturated generator makes listeners look stalled)."""

    proc: psutil.Process = field(default_factory=psutil.Process)
    lags_ms: list[float] = field(default_factory=list)
    cpu_percent: list[float] = field(default_factory=list)

    def cpu_s(self) -> float:
        return float(sum(self.proc.cpu_times()[:2]))

    async def watch_lag(self, deadline_s: float) -> None:
        while (before := time.monotonic()) < deadline_s:
            await asyncio.sleep(LAG_PROBE_S)
            self.lags_ms.append(1000 * (time.monotonic() - before - LAG_PROBE_S))
            del self.lags_ms[:-MAX_LAG_SAMPLES]


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1)


async def metrics_loop(
    http: httpx.AsyncClient, deadline_s: float, rss: list[float], latest: list[Any]
) -> None:
    """The server's /metrics every second into ``latest`` [(t, metrics)]; its RSS."""
    while time.monotonic() < deadline_s:
        m = await server_metrics(http)
        if m is not None:
            rss.append(m[2])
            latest[:] = [(time.monotonic(), m), *latest[:1]]
        await asyncio.sleep(1.0)


def windows(cpu: list[float], n: int = 4) -> list[float]:
    """Mean CPU over each run of ``n`` samples (2 s)."""
    return [round(sum(cpu[i : i + n]) / n, 1) for i in range(max(0, len(cpu) - n + 1))]


def mb(value: float | None) -> float | None:
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
        [p.get("server_cpu_percent", float("nan")) for p in result["timeline"]],
        color="orange",
        label="server CPU %",
    )
    ax2.plot(
        t,
        [p["client_cpu_percent"] for p in result["timeline"]],
        color="green",
        label="load generator CPU %",
    )
    ax.set_title(f"bench attack: {result['shape']} from {result['sources']} sources")
    fig.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
