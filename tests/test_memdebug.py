"""The memory report (memdebug.py, off by default) and glibc's allocator from
Python (allocator.py)."""

from __future__ import annotations

import os
import signal
import tracemalloc

import pytest

from townhall import allocator, memdebug
from townhall.config import Settings


def test_off_by_default_and_installs_nothing() -> None:
    settings = Settings()
    assert not settings.memory_report_on_sigusr2 and settings.memory_trace_frames == 0
    before = signal.getsignal(signal.SIGUSR2)
    assert memdebug.install(False, 5) is False
    assert signal.getsignal(signal.SIGUSR2) is before and not tracemalloc.is_tracing()


def test_the_report_tells_python_objects_from_the_allocators() -> None:
    text = memdebug.report()
    assert text.startswith("RSS ")
    assert "arenas allocated current" in text  # CPython's own allocator
    assert "objects the collector tracks" in text and " dict\n" in text
    assert "after a full collection" in text
    if allocator.available():
        assert "glibc heaps:" in text and "after malloc_trim(0)" in text


def test_sigusr2_logs_a_report_with_the_sites_when_tracing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = signal.getsignal(signal.SIGUSR2)
    try:
        assert memdebug.install(True, 2)
        kept = [bytearray(1000) for _ in range(2000)]  # 2 MB from one line, to be found
        with caplog.at_level("WARNING", logger="townhall.memory"):
            os.kill(os.getpid(), signal.SIGUSR2)
        text = caplog.text
        assert "memory report (SIGUSR2)" in text and "tracemalloc:" in text
        assert "test_memdebug.py" in text.split("allocation sites")[1]
        del kept
    finally:
        tracemalloc.stop()
        signal.signal(signal.SIGUSR2, before)


def test_trim_and_the_heaps_on_glibc() -> None:
    if not allocator.available():
        pytest.skip("not glibc")
    assert allocator.trim() is True
    stats = allocator.statistics()
    assert stats is not None and stats.in_use > 0 and stats.heap >= stats.in_use
    rss = allocator.rss_bytes()
    assert rss is not None and rss > stats.in_use / 2
