#!/usr/bin/env bash
# Run the HTTP driver's tests against several uvicorn versions, each in a
# throwaway venv (not CI; needs the package index). Usage:
#
#   scripts/uvicorn_matrix.sh                 # the pin (0.54.0), 0.45.0, 0.50.2
#   scripts/uvicorn_matrix.sh 0.45.0 0.52.4   # any versions
#
# Each venv gets the project (no deps) and the wanted uvicorn; every other
# dependency comes from the shared venv (BASE_VENV, default /work/main/.venv)
# through a .pth file placed after the venv's own site-packages, so the venv's
# uvicorn wins. Prints one line per version: passed / FAILED (and the log).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_VENV=${BASE_VENV:-/work/main/.venv}
PY=$BASE_VENV/bin/python
VERSIONS=("$@")
[ ${#VERSIONS[@]} -eq 0 ] && VERSIONS=(0.54.0 0.45.0 0.50.2)
TESTS=(tests/origin/test_http1.py tests/origin/test_http1_limits.py
       tests/server/test_fastproto.py tests/server/test_fast_stream.py)
WORK=$(mktemp -d /tmp/uvicorn-matrix.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
base_site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
declare -A RESULT
for version in "${VERSIONS[@]}"; do
    venv=$WORK/venv-$version
    log=$WORK/$version.log
    "$PY" -m venv "$venv"
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$base_site" > "$site/zz_base_venv.pth"
    if ! "$venv/bin/pip" install -q --no-deps "uvicorn==$version" >"$log" 2>&1; then
        RESULT[$version]="install failed"
        continue
    fi
    got=$("$venv/bin/python" -c 'import uvicorn; print(uvicorn.__version__)')
    # older uvicorn imports websockets.legacy, deprecated: not our warning to fail on
    if (cd "$ROOT" && PYTHONPATH=$ROOT/src "$venv/bin/python" -m pytest -q -p no:cacheprovider \
            -W "ignore:websockets.legacy is deprecated:DeprecationWarning" \
            -W "ignore:websockets.server.WebSocketServerProtocol is deprecated:DeprecationWarning" \
            "${TESTS[@]}" >>"$log" 2>&1); then
        RESULT[$version]="passed (uvicorn $got): $(tail -1 "$log")"
    else
        RESULT[$version]="FAILED (uvicorn $got): $(tail -1 "$log")"
        cp "$log" "/tmp/uvicorn-matrix-$version.log"
        RESULT[$version]+=" - log in /tmp/uvicorn-matrix-$version.log"
    fi
done
for version in "${VERSIONS[@]}"; do
    echo "uvicorn $version: ${RESULT[$version]}"
done
