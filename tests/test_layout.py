"""The package's layout rules, checked on the source: the core never imports
the adapters, every module imports on its own, files stay small, and nothing
leans on uvicorn's internals."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import townhall

SRC = Path(townhall.__file__).parent
CORE = ("media", "policy", "live", "origin", "store")
MAX_LINES = 600


def modules() -> list[str]:
    names = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        if "migrations" in rel.parts:
            continue  # alembic scripts: run by alembic, not imported
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        names.append(".".join(parts))
    return names


def imported(path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names (any depth)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_core_never_imports_the_adapters() -> None:
    offenders = []
    for package in CORE:
        for path in sorted((SRC / package).rglob("*.py")):
            bad = sorted(
                n
                for n in imported(path)
                if n == "townhall.server" or n.startswith("townhall.server.")
            )
            if bad:
                offenders.append(f"{path.relative_to(SRC)}: {', '.join(bad)}")
    assert offenders == []


def test_no_file_is_over_600_lines() -> None:
    long = [
        f"{path.relative_to(SRC)}: {n}"
        for path in sorted(SRC.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert long == []


def uvicorn_internals(path: Path) -> list[str]:
    """Imports of uvicorn.protocols, and uvicorn names starting with '_'."""
    found = []
    for name in imported(path):
        if not name.startswith("uvicorn"):
            continue
        if name.startswith("uvicorn.protocols") or any(p.startswith("_") for p in name.split(".")):
            found.append(name)
    return found


def test_nothing_imports_uvicorns_protocols() -> None:
    offenders = {
        str(path.relative_to(SRC)): names
        for path in sorted(SRC.rglob("*.py"))
        if (names := uvicorn_internals(path))
    }
    assert offenders == {}


def test_the_uvicorn_check_can_fail(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol\n"
        "import uvicorn.config\n"
        "from uvicorn import _types\n"
    )
    assert sorted(uvicorn_internals(sample)) == [
        "uvicorn._types",
        "uvicorn.protocols.http.httptools_impl",
        "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol",
    ]


CHECKER = Path(__file__).with_name("layout_imports.py")


def imports_alone(package: str, names: list[str], path: Path) -> list[str]:
    """Each of ``names`` imported first, with no module of ``package`` loaded
    (tests/layout_imports.py: one interpreter, the libraries imported once, a
    forked child per module): ``name: error`` for each that failed."""
    env = {**os.environ, "PYTHONPATH": str(path), "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(CHECKER), package, *names],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout.splitlines()


def test_every_module_imports_on_its_own() -> None:
    """Every module imported first (a partially initialised module, an import
    cycle, shows up only when that module is imported first)."""
    names = modules()
    assert "townhall.origin.rules" in names and "townhall.cli.demo" in names
    assert imports_alone("townhall", names, SRC.parent) == []


def test_the_import_check_can_fail(tmp_path: Path) -> None:
    """Modules that import only after another of the package was imported: one
    that finds its partner in a cycle half made (``second`` imported before
    ``first``), one that reaches an attribute of the package only another
    module's import sets. Both import when their partner comes first (``ok``
    imports them all, in that order), so only importing each first catches them."""
    pkg = tmp_path / "sample"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "first.py").write_text("from sample.second import late\n\nearly = 1\n")
    (pkg / "second.py").write_text("import sample.first\n\nlate = 2\n")
    (pkg / "helper.py").write_text("VALUE = 3\n")
    (pkg / "leans.py").write_text("import sample\n\nVALUE = sample.helper.VALUE\n")
    (pkg / "ok.py").write_text(
        "import sample.first\nimport sample.helper\nimport sample.leans\nimport sample.second\n"
    )
    names = [
        "sample",
        "sample.first",
        "sample.helper",
        "sample.leans",
        "sample.ok",
        "sample.second",
    ]
    failed = imports_alone("sample", names, tmp_path)
    assert [line.split(":")[0] for line in failed] == ["sample.leans", "sample.second"]
    assert "has no attribute 'helper'" in failed[0]
    assert "partially initialized" in failed[1]
