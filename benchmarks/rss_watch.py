"""RSS over time of a server's process tree (the HTTP process, its workers and
the media process), one JSON line per sample, for the memory-under-churn
figures in docs/BENCHMARKS.md ("Memory under an attacker that reconnects").

    python benchmarks/rss_watch.py PID --interval-s 1 --duration-s 120 > rss.jsonl

Each line: ``{"t": seconds since start, "procs": [{"pid", "name", "rss_mb",
"anon_mb", "fds"}, ...], "total_mb"}``. ``anon_mb`` is the process's anonymous
memory (smaps_rollup): the heap and arenas, not the shared libraries; ``fds`` its open descriptors
(about one per open connection).
Bounded: stops after ``--duration-s`` or when PID is gone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import psutil


def anon_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Anonymous:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def label(proc: psutil.Process) -> str:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    text = " ".join(cmd)
    for word in ("media", "worker", "serve"):
        if word in text:
            return word
    return proc.name()


def sample(root: psutil.Process) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            if proc.name() == "timeout":
                continue
            rss = proc.memory_info().rss
            fds = proc.num_fds()
        except psutil.Error:
            continue
        rows.append(
            {
                "pid": proc.pid,
                "name": label(proc),
                "rss_mb": round(rss / 2**20, 1),
                "anon_mb": anon_mb(proc.pid),
                "fds": fds,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pid", type=int)
    parser.add_argument("--interval-s", type=float, default=1.0)
    parser.add_argument("--duration-s", type=float, default=600.0)
    args = parser.parse_args()
    root = psutil.Process(args.pid)
    start = time.monotonic()
    while (now := time.monotonic()) - start < args.duration_s and root.is_running():
        rows = sample(root)
        total = round(sum(float(r["rss_mb"]) for r in rows), 1)  # type: ignore[arg-type]
        print(json.dumps({"t": round(now - start, 1), "procs": rows, "total_mb": total}))
        sys.stdout.flush()
        time.sleep(args.interval_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
