"""hls.js travels inside the built package: a wheel built from this tree,
installed into a fresh virtualenv and served with no npm (and nothing else)
on PATH, gives a listener page that plays in Chromium through hls.js."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.web.browser import chromium, spectrum, write_voice_wav

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TONE_HZ = 440.0
PASSWORD = "correct horse battery"
BUILD_TIMEOUT_S = 240
UI_TIMEOUT_MS = 30_000


def build_wheel(out: Path) -> Path:
    if not (ROOT / "node_modules" / "hls.js" / "dist" / "hls.min.js").is_file():
        pytest.skip(
            "node_modules/hls.js is missing: run `npm ci` (scripts/setup.sh) to build a wheel"
        )
    # builds in a copy, so the tree under test (src/) is not touched
    tree = out / "tree"
    shutil.copytree(
        ROOT,
        tree,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", "test-artifacts", "docs"
        ),
    )
    # the wheel must not depend on the copy setup.sh left in the source tree
    (tree / "src/townhall/web/static/vendor/hls.min.js").unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(tree), "--no-deps", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = out.glob("townhall-*.whl")
    return wheel


def fresh_venv(root: Path, wheel: Path) -> Path:
    """A new virtualenv with only this wheel installed; the dependencies are
    reached through a plain path entry (their .pth files, such as the editable
    install of the tree under test, are not processed)."""
    venv = root / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return python


def test_wheel_without_npm_plays_in_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        assert "townhall/web/static/vendor/hls.min.js" in archive.namelist()
    python = fresh_venv(tmp_path, wheel)
    env = {
        "PATH": str(python.parent),  # no npm, no node: nothing but this venv
        "HOME": str(tmp_path),
        "TOWNHALL_ARGON2_TIME_COST": "1",
        "TOWNHALL_ARGON2_MEMORY_KIB": "1024",
    }
    where = subprocess.run(
        [str(python), "-c", "import townhall; print(townhall.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert where.startswith(str(tmp_path / "venv")), where
    assert shutil.which("npm", path=env["PATH"]) is None
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [str(python), "-m", "townhall", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(tmp_path / "data")],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    bot: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        assert "hls.js is not installed" not in (tmp_path / "server.log").read_text()
        vendor = httpx.get(url + "/static/vendor/hls.min.js", timeout=10)
        assert vendor.status_code == 200 and len(vendor.content) > 100_000
        with httpx.Client(base_url=url, timeout=10) as client:
            client.post("/api/accounts", json={"username": "wheelhost", "password": PASSWORD})
            session = client.post(
                "/api/sessions", json={"username": "wheelhost", "password": PASSWORD}
            ).json()
            space = client.post(
                "/api/spaces",
                json={"title": "Wheel check"},
                headers={"Authorization": f"Bearer {session['token']}"},
            ).json()
        wav = write_voice_wav(tmp_path / "tone.wav", TONE_HZ, seconds=3.0)
        bot = subprocess.Popen(
            [sys.executable, "-m", "townhall", "speak", str(wav), "--server", url,
             "--space", space["id"], "--username", "wheelhost", "--password", PASSWORD,
             "--loop", "--duration-s", "90"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        with sync_playwright() as playwright, chromium(playwright, tmp_path / "profile") as browser:
            browser.set_default_timeout(UI_TIMEOUT_MS)
            page = browser.new_page()
            page.goto(f"{url}/spaces/{space['id']}")
            assert page.evaluate("() => Boolean(window.Hls && window.Hls.isSupported())")
            page.click("#play-button")
            page.locator("#join-status").filter(has_text="listening live").wait_for()
            page.wait_for_function(
                "() => document.querySelector('#player').currentTime > 1.5", timeout=UI_TIMEOUT_MS
            )
            heard = spectrum(page, "#player")
            deadline = time.monotonic() + 40  # the bot's audio may come a moment later
            while not heard.has_tone(TONE_HZ) and time.monotonic() < deadline:
                heard = spectrum(page, "#player")
            assert heard.has_tone(TONE_HZ), heard
    finally:
        if bot is not None:
            bot.terminate()
            bot.wait(timeout=20)
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
        log.close()
