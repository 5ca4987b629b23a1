"""Where a server process's memory goes, for an operator or a benchmark that
asks (``memory_report_on_sigusr2``, off by default): Python's own objects
against what the allocators keep.

With the setting on, each HTTP process and the media process log one report
on SIGUSR2 (on ``townhall.memory``, at warning level so that ``--log-level
warning`` shows it): the process's RSS, the blocks CPython's small-object
allocator holds and how many of its arenas are in use, glibc's heaps (bytes in
use and free inside them), the live objects by type; with
``memory_trace_frames`` above 0 also what ``tracemalloc`` traces and the
allocation sites holding the most; then RSS after a full collection and after
glibc's ``malloc_trim(0)``. Python objects small while glibc reports most of
its heap free and the trim gives it back: the memory is the allocator's
retention, not a table of ours. The report itself costs a few milliseconds to
a second of the event loop (it walks every object); tracing makes every
allocation 2-4 times slower: debugging tools, not production settings.
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import signal
import sys
import tempfile
import tracemalloc
from types import FrameType

from townhall import allocator

log = logging.getLogger("townhall.memory")

TOP_SITES = 25
TOP_TYPES = 20


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MB"


def _heaps() -> str:
    stats = allocator.statistics()
    if stats is None:
        return "glibc heaps: - (not glibc 2.33+)"
    return (
        f"glibc heaps: {_mb(stats.heap)} ({_mb(stats.in_use)} in use, {_mb(stats.free)} free),"
        f" {_mb(stats.mmapped)} mmapped"
    )


def pymalloc_arenas() -> str:
    """The summary lines of ``sys._debugmallocstats()`` (CPython writes it to the
    C stderr, so it is caught through a file): arenas allocated and in use."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            sys.stderr.flush()
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    keep = (
        "# arenas allocated current",
        "# arenas highwater mark",
        "# bytes in allocated blocks",
        "# bytes in available blocks",
    )
    return "; ".join(
        " ".join(line.lstrip("# ").split()) for line in text.splitlines() if line.startswith(keep)
    )


def report(top_sites: int = TOP_SITES, top_types: int = TOP_TYPES) -> str:
    """The report described above, as text. Runs a full collection and a
    trim, so it changes what it measures after the first lines."""
    lines = [f"RSS {_mb(allocator.rss_bytes())}", _heaps()]
    lines.append(f"pymalloc: {sys.getallocatedblocks()} blocks; {pymalloc_arenas()}")
    if tracemalloc.is_tracing():
        now, peak = tracemalloc.get_traced_memory()
        lines.append(f"tracemalloc: {_mb(now)} traced now, {_mb(peak)} at peak")
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    lines.append(f"objects the collector tracks: {sum(counts.values())}; by type:")
    lines += [f"  {n:>9} {name}" for name, n in counts.most_common(top_types)]
    del counts
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot().filter_traces(
            (tracemalloc.Filter(False, tracemalloc.__file__),)
        )
        key = "traceback" if tracemalloc.get_traceback_limit() > 1 else "lineno"
        lines.append(f"allocation sites holding the most (by {key}):")
        for stat in snapshot.statistics(key)[:top_sites]:
            lines.append(f"  {_mb(stat.size):>10} in {stat.count:>8} blocks")
            lines += [f"      {frame}" for frame in stat.traceback.format()[-6:]]
        del snapshot
    unreachable = gc.collect()
    rss = _mb(allocator.rss_bytes())
    lines.append(f"after a full collection ({unreachable} unreachable): RSS {rss}")
    if allocator.trim():
        lines.append(f"after malloc_trim(0): RSS {_mb(allocator.rss_bytes())}; {_heaps()}")
    else:
        lines.append("malloc_trim: not available (not glibc)")
    return "\n".join(lines)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    log.warning("memory report (SIGUSR2):\n%s", report())


def install(on_sigusr2: bool, trace_frames: int) -> bool:
    """Report on SIGUSR2 when ``on_sigusr2``, tracing allocations with
    ``trace_frames`` frames each when that is above 0. Call from the main
    thread. True when installed."""
    if not on_sigusr2:
        return False
    if trace_frames > 0:
        tracemalloc.start(trace_frames)
    signal.signal(signal.SIGUSR2, _on_signal)
    log.warning(
        "memory report on SIGUSR2 (tracemalloc: %s)",
        f"{trace_frames} frames" if trace_frames > 0 else "off",
    )
    return True
