"""The listener workers' metrics in the primary's /metrics (HTTP workers
without Redis, server/local_bus.py).

Each listener worker writes its whole Prometheus text to
``DATA_DIR/run/metrics/<node_id>.prom`` every ``WRITE_PERIOD_S`` (atomically);
the primary's /metrics adds each worker's samples to the family of the same
name, labelled ``worker="<node_id>"`` (its own samples keep no such label),
and leaves out a file not written for ``STALE_S`` (the worker is gone). A file
rather than a request: the listener workers share the public port with the
primary, so the primary cannot ask one of them in particular, and a file
costs the worker one write every few seconds whatever the scrape rate.
Figures are up to ``WRITE_PERIOD_S`` old."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from townhall.config import Settings
from townhall.metrics import text_blocks

log = logging.getLogger("townhall.http")

METRICS_DIR = Path("run") / "metrics"
WRITE_PERIOD_S = 2.0
STALE_S = 5 * WRITE_PERIOD_S


def write_once(settings: Settings) -> None:
    from prometheus_client import generate_latest

    folder = settings.data_dir / METRICS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{settings.node_id or 'listener'}.prom"
    temp = target.with_name(f".{target.name}.{os.getpid()}")
    temp.write_bytes(generate_latest())
    os.replace(temp, target)


async def keep_writing(settings: Settings) -> None:
    """A listener worker's task: write its metrics until cancelled; never raises."""
    while True:
        try:
            await asyncio.to_thread(write_once, settings)
        except OSError as exc:
            log.warning("could not write this worker's metrics (%s)", exc)
        await asyncio.sleep(WRITE_PERIOD_S)


def labelled(line: str, worker: str) -> str:
    """A sample line with ``worker="..."`` added to its labels."""
    name, brace, rest = line.partition("{")
    if brace:
        return f'{name}{{worker="{worker}",{rest}'
    name, space, value = line.partition(" ")
    return f'{name}{{worker="{worker}"}}{space}{value}'


def merged(own: str, workers: dict[str, str]) -> str:
    """``own`` (the primary's text) with every worker's samples added."""
    blocks = text_blocks(own)
    for worker, text in sorted(workers.items()):
        for family, lines in text_blocks(text).items():
            samples = [labelled(line, worker) for line in lines if not line.startswith("#")]
            if family in blocks:
                blocks[family].extend(samples)
            else:
                blocks[family] = [line for line in lines if line.startswith("#")] + samples
    return "".join("".join(lines) for lines in blocks.values())


def with_workers(own: str, data_dir: Path) -> str:
    """The primary's /metrics text plus its listener workers' fresh files."""
    folder = data_dir / METRICS_DIR
    workers: dict[str, str] = {}
    now = time.time()
    with contextlib.suppress(OSError):
        for path in folder.glob("*.prom"):
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime <= STALE_S:
                    workers[path.stem] = path.read_text()
    return merged(own, workers) if workers else own
