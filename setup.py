"""Build step: put hls.js (pinned by package.json / package-lock.json) inside the
package, so a wheel built here serves a listener page that plays in every
browser, not only in Safari. Everything else is declared in pyproject.toml."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
VENDORED = Path("townhall", "web", "static", "vendor", "hls.min.js")


def _pinned_hls_version() -> str:
    return str(json.loads((ROOT / "package.json").read_text())["dependencies"]["hls.js"])


def _hls_source() -> Path:
    """node_modules (after `npm ci`), else the copy scripts/setup.sh made; checked against the pin."""
    from_npm = ROOT / "node_modules" / "hls.js"
    if (from_npm / "dist" / "hls.min.js").is_file():
        installed = json.loads((from_npm / "package.json").read_text())["version"]
        if installed != _pinned_hls_version():
            raise SystemExit(
                f"node_modules has hls.js {installed} but package.json pins {_pinned_hls_version()}: run `npm ci`."
            )
        return from_npm / "dist" / "hls.min.js"
    copied = ROOT / "src" / VENDORED
    if copied.is_file():
        return copied
    raise SystemExit(
        "hls.js is missing: run `npm ci` (or scripts/setup.sh) before building, so the "
        "listener page can play in browsers without native HLS. "
        "Set TOWNHALL_BUILD_WITHOUT_HLSJS=1 to build without it anyway."
    )


class BuildPyWithHls(build_py):
    def run(self) -> None:
        super().run()
        if os.environ.get("TOWNHALL_BUILD_WITHOUT_HLSJS") == "1":
            return
        target = Path(self.build_lib) / VENDORED
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_hls_source(), target)


setup(cmdclass={"build_py": BuildPyWithHls})
