"""A plain install (no bench extra) serves, and `townhall bench ...` says in
one sentence how to install the extra, with exit status 2. The extra's
packages are made unimportable by a sitecustomize in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import townhall

BLOCKER = """
import sys

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("matplotlib", "psutil", "tqdm"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
"""


def run(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    src = str(Path(townhall.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), src])}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


MAIN = "import sys; from townhall.cli.main import main; sys.argv[0] = 'townhall'; main()"


def test_bench_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    for verb in (["join", "--help"], ["listeners", "--target", "http://127.0.0.1:9"], ["latency"]):
        done = run(tmp_path, MAIN, "bench", *verb)
        assert done.returncode == 2, (verb, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert lines == [
            "townhall bench needs the bench extra (matplotlib, psutil, tqdm not installed): "
            "install it with pip install 'townhall[bench]'"
        ], verb


def test_a_plain_install_serves_without_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from townhall.server.app import create_app\n"
        "from townhall.config import Settings\n"
        f"create_app(Settings(data_dir={str(tmp_path / 'data')!r}))\n"
        "from townhall.cli.main import main\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'psutil', 'tqdm')]\n"
        "print('ok')\n"
    )
    done = run(tmp_path, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    help_text = run(tmp_path, MAIN, "--help")
    assert help_text.returncode == 0 and "serve" in help_text.stdout
