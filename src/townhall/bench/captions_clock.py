"""Captions on a live room: mixer clock lateness with and without captions,
the recognizer's CPU, and how soon a line exists after its words were mixed.

    python -m townhall.bench.captions_clock [--seconds 40]

One in-process Room per run (no speakers: the program frames are replaced by
an espeak-ng clip on a loop, so the recognizer has speech to work on); the
clock's lateness is the time each tick reached the program minus its schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from townhall.bench.captions import SCRIPT, espeak_clip
from townhall.captions.engine import to_float_16k
from townhall.config import Settings
from townhall.live.room import Room


async def run(captions: bool, seconds: float, data_dir: Path) -> dict[str, float]:
    settings = Settings(data_dir=data_dir, captions=captions)
    pcm, rate = espeak_clip(SCRIPT)
    speech = (to_float_16k(pcm, rate) * 32767).astype(np.int16).repeat(3)
    frame = settings.sample_rate_hz * settings.frame_ms // 1000
    room = Room(f"bench-{int(captions)}", settings)
    ticks: list[float] = []
    pushed_at: list[float] = []
    loop = asyncio.get_running_loop()

    def sink(_program: np.ndarray) -> None:
        n = len(ticks)
        ticks.append(loop.time())
        pushed_at.append(time.monotonic())
        at = n * frame % (len(speech) - frame)
        room.program.push_frame(speech[at : at + frame])

    room.stage.sink = sink
    await room.start()
    proc = None
    if room.captions.captioner is not None:
        await asyncio.sleep(0.5)
        pid = room.captions.captioner._proc.pid if room.captions.captioner._proc else None
        proc = psutil.Process(pid) if pid else None
    seen: dict[int, float] = {}
    end = time.monotonic() + seconds
    cpu0 = proc.cpu_times() if proc else None
    t0 = time.monotonic()
    while time.monotonic() < end:
        await asyncio.sleep(0.25)
        for i in range(len(room.captions.track.lines)):
            seen.setdefault(i, time.monotonic())
    cpu1 = proc.cpu_times() if proc else None
    wall = time.monotonic() - t0
    lines = list(room.captions.track.lines)
    await room.suspend()
    period = settings.frame_ms / 1000
    # lateness of each tick against the one before (the clock skips ahead
    # after a long stall, so lateness against the first tick would keep it)
    late = np.maximum(0.0, np.diff(np.array(ticks)) - period) * 1000
    out = {
        "ticks": float(len(ticks)),
        "late_p50_ms": float(np.percentile(late, 50)),
        "late_p99_ms": float(np.percentile(late, 99)),
        "late_max_ms": float(late.max()),
        "lines": float(len(lines)),
    }
    if cpu0 and cpu1:
        out["worker_cores"] = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall
    delays = []
    for i, line in enumerate(lines):
        index = int(line.start_s * settings.sample_rate_hz) // frame
        if i in seen and index < len(pushed_at):
            delays.append(seen[i] - pushed_at[index])
    if delays:
        out["line_after_mix_p50_s"] = float(np.percentile(delays, 50))
        out["line_after_mix_max_s"] = float(max(delays))
    return out


async def main_async(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for i, captions in enumerate((False, True, False, True)):
            result = await run(captions, seconds, Path(tmp) / str(i))
            print(
                f"captions {'on ' if captions else 'off'}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in result.items())
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0)
    asyncio.run(main_async(parser.parse_args().seconds))


if __name__ == "__main__":
    main()
