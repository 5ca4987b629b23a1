#!/usr/bin/env bash
# Set up townhall on a fresh machine: a virtualenv with the pinned Python
# packages, and hls.js (pinned by package-lock.json) copied into the static files.
#   scripts/setup.sh          what `make run` needs
#   scripts/setup.sh --test   also what the tests need: Debian packages (chromium,
#                             ffmpeg, nginx, icecast2, wrk, redis-server, espeak-ng) and the test extras
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PY=${PYTHON:-python3}
# this machine's pip config names extra local indexes that may be absent: hush that noise only
pip_quiet() { "$@" 2> >(grep -v "^WARNING: Location 'file://" >&2); }
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# hls.js from npm, pinned by the lockfile (first: the package's build step needs it). A built wheel carries it by itself
# (setup.py's build step copies it from node_modules); the editable install used
# here serves src/, so it is copied there too.
if command -v npm >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  mkdir -p src/townhall/web/static/vendor
  cp node_modules/hls.js/dist/hls.min.js src/townhall/web/static/vendor/hls.min.js
else
  echo "warning: npm not found; the listener page falls back to native HLS only" >&2
  export TOWNHALL_BUILD_WITHOUT_HLSJS=1
fi

pip_quiet .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
if [ "$want_test" = 1 ]; then
  pip_quiet .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock -e ".[test]"
else
  pip_quiet .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock -e .
fi


if [ "$want_test" = 1 ]; then
  need=()
  # gstreamer: tests/players/test_gstreamer.py plays live.m3u8 with hlsdemux (issue 12)
  for pkg in chromium ffmpeg nginx-light icecast2 wrk fonts-noto-color-emoji redis-server espeak-ng \
    gstreamer1.0-tools gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  fi
fi
