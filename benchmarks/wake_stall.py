#!/usr/bin/env python3
"""Does answering a crowd of parked LL-HLS requests hold up the mixer clock?

    .venv/bin/python benchmarks/wake_stall.py --listeners 3000 --batch 256,1000000

A server process (core 0) runs a live program fed by a 20 ms clock on an
absolute schedule, as the stage's mixer clock is, behind the fast protocol; a
client process (core 1) keeps N connections doing blocking playlist reloads for
the next part, as LL-HLS players do. Every publish wakes all N at once. The
clock records how late each tick ran; the report compares wake-up batch sizes
(``listener_wake_batch``; a batch >= N means "all in one go"). Traffic stays on
127.0.0.1; both child processes are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SPACE = "wakestall234"


async def serve(port: int, batch: int, data_dir: str, seconds: float, freeze: bool) -> None:
    import gc

    import numpy as np
    import uvicorn
    from fastapi import FastAPI

    from townhall import problems
    from townhall.config import Settings
    from townhall.live.program import Program
    from townhall.origin import asgi as hls
    from townhall.origin.http1 import protocol_for
    from townhall.origin.rules import FastPath, programs_of

    settings = Settings(data_dir=Path(data_dir), listener_wake_batch=batch)
    app = FastAPI()
    problems.install(app)
    app.include_router(hls.router)
    program = Program(SPACE, settings)
    await program.start()
    app.state.settings = settings
    app.state.services = SimpleNamespace(
        settings=settings, rooms={SPACE: SimpleNamespace(program=program)}
    )
    t = np.arange(960) / 48000
    frame = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    late_ms: list[float] = []
    gc_ms: list[float] = []  # full (generation 2) collections: they stop the loop too
    started = [0.0]

    def gc_timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif info["generation"] == 2:
            gc_ms.append(1000 * (time.perf_counter() - started[0]))

    gc.callbacks.append(gc_timer)
    if freeze:  # what is loaded by now is never scanned again
        gc.collect()
        gc.freeze()

    async def clock() -> None:  # the stage's schedule: start + n * 20 ms
        loop = asyncio.get_running_loop()
        start, n = loop.time(), 0
        while True:
            n += 1
            delay = start + n * 0.02 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            late_ms.append(1000 * (loop.time() - (start + n * 0.02)))
            program.push_frame(frame)

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        loop="uvloop",
        http=protocol_for(FastPath(settings, programs_of(app)), settings),
    )
    server = uvicorn.Server(config)
    ticking = asyncio.create_task(clock())
    serving = asyncio.create_task(server.serve())
    await asyncio.sleep(seconds)
    ticking.cancel()
    server.should_exit = True
    await serving
    await program.suspend()
    late_ms.sort()
    print(
        json.dumps(
            {
                "ticks": len(late_ms),
                "late_p50_ms": round(late_ms[len(late_ms) // 2], 2),
                "late_p99_ms": round(late_ms[int(len(late_ms) * 0.99)], 2),
                "late_max_ms": round(late_ms[-1], 2),
                "ticks_over_20ms_late": sum(1 for x in late_ms if x > 20),
                "spreader_turns": program.spreader.statistics().turns,
                "full_gc": len(gc_ms),
                "full_gc_max_ms": round(max(gc_ms, default=0.0), 1),
            }
        ),
        flush=True,
    )


async def listen(port: int, listeners: int, seconds: float) -> None:
    from townhall.bench.hlsplaylist import parse_playlist

    answered = 0
    deadline = time.monotonic() + seconds

    async def one() -> None:
        nonlocal answered
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        query = ""
        while time.monotonic() < deadline:
            writer.write(
                f"GET /spaces/{SPACE}/live.m3u8{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            answered += 1
            if b" 200 " not in head[:16]:
                await asyncio.sleep(0.5)
                continue
            playlist = parse_playlist(body.decode())
            part = playlist.all_parts()[-1]
            msn, index = (int(x) for x in part.uri[5:-4].split("."))
            query = f"?_HLS_msn={msn}&_HLS_part={index + 1}"
        writer.close()

    results = await asyncio.gather(*(one() for _ in range(listeners)), return_exceptions=True)
    errors = sum(1 for r in results if isinstance(r, BaseException))
    print(json.dumps({"answered": answered, "errors": errors}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--listeners", type=int, default=3000)
    ap.add_argument("--batch", default="256,1000000", help="listener_wake_batch values to compare")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() in the server after start-up"
    )
    ap.add_argument("--role", default="", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "server":
        import uvloop

        uvloop.run(serve(args.port, int(args.batch), args.data_dir, args.seconds, args.gc_freeze))
        return 0
    if args.role == "client":
        asyncio.run(listen(args.port, args.listeners, args.seconds))
        return 0
    import socket

    rows = []
    for batch in (int(b) for b in args.batch.split(",")):
        with socket.socket() as sock, tempfile.TemporaryDirectory() as tmp:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.close()
            me = [sys.executable, __file__, "--port", str(port), "--batch", str(batch)]
            me += ["--gc-freeze"] if args.gc_freeze else []
            server = subprocess.Popen(
                ["taskset", "-c", "0", *me, "--role", "server", "--data-dir", tmp,
                 "--seconds", str(args.seconds + 4)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                time.sleep(3)
                client = subprocess.run(
                    ["taskset", "-c", "1", *me, "--role", "client", "--listeners",
                     str(args.listeners), "--seconds", str(args.seconds)],
                    capture_output=True, text=True, timeout=args.seconds + 60, check=False,
                )  # fmt: skip
                out, _ = server.communicate(timeout=60)
            finally:
                if server.poll() is None:
                    server.kill()
                    server.wait()
            row = {"batch": batch, "listeners": args.listeners, "gc_freeze": args.gc_freeze}
            row.update(json.loads(out.strip().splitlines()[-1]))
            row.update(json.loads(client.stdout.strip().splitlines()[-1]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
