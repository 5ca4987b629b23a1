"""glibc's allocator from Python: ``malloc_trim(0)``, ``mallinfo2``, and this
process's RSS.

CPython's small objects live in its own arenas, but the bigger buffers (a
request's bytes, a socket's read buffer, a dict's table past a size) come
from ``malloc``; glibc keeps what was freed in its heaps and per-thread
arenas for reuse and gives back to the system only the top of the main heap.
``malloc_trim(0)`` walks every arena and returns the free pages inside them
(``madvise``), so RSS falls back to what is in use. Only on glibc; elsewhere
``trim`` does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from dataclasses import dataclass


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes of the heaps (main heap and thread arenas), not mmapped
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in mmapped chunks (large allocations)
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes in use in the heaps
            "fordblks",  # bytes free in the heaps: kept by malloc, counted in RSS if touched
            "keepcost",  # bytes free at the top of the main heap (what a plain free gives back)
        )
    ]


@dataclass(frozen=True, slots=True)
class MallocStatistics:
    """glibc's view of its heaps (bytes): ``in_use`` by the program, ``free``
    inside the heaps (kept for reuse, not given back), ``mmapped`` (large
    allocations, given back on free)."""

    heap: int
    in_use: int
    free: int
    mmapped: int


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        if hasattr(libc, "mallinfo2"):  # glibc 2.33 and later
            libc.mallinfo2.argtypes = []
            libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    return libc


def available() -> bool:
    return _libc() is not None


def trim() -> bool:
    """Give the allocator's free pages back to the system; False when not
    glibc (nothing done). Takes a few milliseconds per hundred MB of heap."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def statistics() -> MallocStatistics | None:
    """glibc's ``mallinfo2`` summed over its arenas; None when not glibc 2.33+."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    info = libc.mallinfo2()
    return MallocStatistics(info.arena, info.uordblks, info.fordblks, info.hblkhd)


def rss_bytes() -> int | None:
    """This process's resident set, from /proc (None without it)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
