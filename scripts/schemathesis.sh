#!/usr/bin/env bash
# Fuzz the whole documented API of a throwaway `townhall serve` with
# schemathesis (the release pinned in pyproject.toml): every answer must be
# documented and match the OpenAPI schema, and nothing may answer 500.
#
#   scripts/schemathesis.sh            # 30 examples per operation
#   EXAMPLES=200 scripts/schemathesis.sh
#
# The server runs on a free loopback port with its own data directory
# (removed afterwards); the requests carry a real session (-H), so they get
# past authentication into the handlers. The sign-out operations would revoke
# that session for the rest of the run: they are fuzzed in a second run with
# a session of their own. Exit status: non-zero when either run fails.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-/work/main/.venv}"
PY="$VENV/bin/python"
ST="$VENV/bin/schemathesis"
EXAMPLES="${EXAMPLES:-30}"
export PYTHONPATH="$HERE/src${PYTHONPATH:+:$PYTHONPATH}"

DATA="$(mktemp -d /tmp/townhall-st.XXXXXX)"
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
TOWNHALL_ARGON2_TIME_COST=1 TOWNHALL_ARGON2_MEMORY_KIB=1024 \
TOWNHALL_SIGNIN_PER_NETWORK_PER_MIN=100000 \
  "$PY" -m townhall serve --port "$PORT" --data-dir "$DATA" >"$DATA/server.log" 2>&1 &
SERVER=$!
cleanup() {
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT

for _ in $(seq 1 100); do
  curl -fsS "$URL/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done

TOKEN="$("$PY" - "$URL" <<'PY'
import sys, httpx
url = sys.argv[1]
body = {"username": "fuzzer", "password": "correct horse 1"}
httpx.post(f"{url}/api/accounts", json=body).raise_for_status()
token = httpx.post(f"{url}/api/sessions", json=body).json()["token"]
httpx.post(f"{url}/api/spaces", json={"title": "fuzz"},
           headers={"Authorization": f"Bearer {token}"}).raise_for_status()
print(token)
PY
)"

SIGN_OUT='^/api/sessions/(current|current/revoke|revoke-all)$'
run() {
  "$ST" --config-file "$HERE/scripts/schemathesis.toml" run "$URL/api/openapi.json" \
    --checks all \
    --max-examples "$EXAMPLES" \
    --phases examples,coverage,fuzzing \
    --request-timeout 10 \
    --workers 1 \
    --seed "${SEED:-14}" \
    --no-color \
    "$@"
}
status=0
run --header "Authorization: Bearer $TOKEN" --exclude-path-regex "$SIGN_OUT" "$@" || status=$?
SIGN_OUT_TOKEN="$("$PY" -c '
import sys, httpx
r = httpx.post(sys.argv[1] + "/api/sessions", json={"username": "fuzzer", "password": "correct horse 1"})
print(r.json()["token"])' "$URL")"
run --header "Authorization: Bearer $SIGN_OUT_TOKEN" --include-path-regex "$SIGN_OUT" "$@" || status=$?
if grep -q "Traceback" "$DATA/server.log"; then
  echo "the server logged a traceback:" >&2
  grep -B2 -A20 "Traceback" "$DATA/server.log" | head -60 >&2
  status=1
fi
exit "$status"
