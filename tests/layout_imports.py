"""Import each of a package's modules on its own, in one interpreter started
for the purpose: tests/test_layout.py runs this as a script.

    python tests/layout_imports.py PACKAGE MODULE...

The check is "each module imports first, with none of PACKAGE's modules
loaded": a partially initialised module or an import cycle shows up only when
that module is imported first. A fresh interpreter per module gives that, but
pays for the third-party libraries (fastapi, aiortc, av, sqlalchemy, ...) 170
times over. Here one interpreter imports those libraries once and forks a
child per module; every child starts with no module of PACKAGE in
``sys.modules`` (checked), imports its one module and exits. What the
libraries are is found, not listed: a first child imports all the modules and
reports every other module that came in with them.

What a child shares with a fresh interpreter: no module of PACKAGE loaded, the
same sys.path. What differs: the third-party modules are already imported, so
a module of PACKAGE that reaches a library's submodule as an attribute
without importing it (``import sqlalchemy`` then ``sqlalchemy.ext.asyncio``)
would pass here. Prints one line per module that failed, ``name: last line of
the error``; exits 0 when the checks ran (whatever they found).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

WORKERS = 2  # two cores, shared


def _forked(target: str, fd: int) -> None:
    """In a forked child: import ``target``, write what failed to ``fd``; never returns."""
    code = 0
    try:
        importlib.import_module(target)
    except BaseException as exc:  # whatever it is, it is the finding
        lines = traceback.format_exception_only(type(exc), exc)
        os.write(fd, (lines[-1].strip() if lines else repr(exc)).encode())
        code = 1
    os._exit(code)


def _mine(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def survey(package: str, names: list[str]) -> list[str]:
    """In a child: import every module of ``names`` (failures are the checks'
    business, not this one's) and return the other modules then loaded."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        for name in names:
            try:
                importlib.import_module(name)
            except BaseException:  # reported by the checks
                continue
        found = "\n".join(n for n in list(sys.modules) if not _mine(n, package))
        os.write(write, found.encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 1 << 16):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode().split("\n")


def preload(package: str, others: list[str]) -> None:
    for name in others:
        if name in sys.modules or name == "__main__":
            continue
        try:
            importlib.import_module(name)
        except BaseException:  # a child then imports it itself
            continue
    # A library that imported a module of the package would spoil the check: drop it
    for name in [n for n in sys.modules if _mine(n, package)]:
        del sys.modules[name]


def check(package: str, names: list[str]) -> list[str]:
    failed: list[str] = []
    running: dict[int, tuple[str, int]] = {}

    def reap() -> None:
        pid, status = os.wait()
        name, fd = running.pop(pid)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        os.close(fd)
        if os.waitstatus_to_exitcode(status) != 0:
            said = b"".join(chunks).decode(errors="replace") or f"exit status {status}"
            failed.append(f"{name}: {said}")

    assert not [n for n in sys.modules if _mine(n, package)], "a module of the package is loaded"
    for name in names:
        while len(running) >= WORKERS:
            reap()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            _forked(name, write)
        os.close(write)
        running[pid] = (name, read)
    while running:
        reap()
    return sorted(failed)


def main() -> None:
    # as `python -c` would have it: the current directory first, not this file's
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        sys.path[0] = ""
    package, names = sys.argv[1], sys.argv[2:]
    preload(package, survey(package, names))
    for line in check(package, names):
        print(line)


if __name__ == "__main__":
    main()
