#!/bin/bash
# Issue 9 bar, full size: cap 1,000, 10,000 arrivals in 10 s (the first 3 s
# before the host goes live), server on core 0, `townhall bench storm` on core 1,
# loopback only, bounded. CAP, ARRIVALS, LISTEN, DUR and SERVE_ARGS override.
#   benchmarks/storm_bar.sh [PORT] [OUT.json]
# The per-network limits are lifted because every simulated listener is
# 127.0.0.1 (one network), and the program starts at go-live without a speaker.
set -u
cd "$(dirname "$0")/.."
PORT=${1:-18997}
OUT=${2:-storm-bar.json}
CAP=${CAP:-1000} ARRIVALS=${ARRIVALS:-10000} LISTEN=${LISTEN:-20} DUR=${DUR:-150}
PY=${PYTHON:-.venv/bin/python}
export TOWNHALL_JOINS_PER_NETWORK_PER_10S=1000000 TOWNHALL_REFUSALS_PER_NETWORK_PER_10S=1000000 \
  TOWNHALL_STATE_PER_NETWORK_PER_10S=1000000 TOWNHALL_PLAYLISTS_PER_NETWORK_PER_10S=1000000 \
  TOWNHALL_HTTP_MAX_CONNECTIONS_PER_NETWORK=100000 TOWNHALL_CHALLENGE_JOINS_PER_S=1000000 \
  TOWNHALL_CHALLENGE_UNSOLVED_JOINS_PER_S=1000000 TOWNHALL_PROGRAM_WAITS_FOR_HOST=false
DATA=$(mktemp -d)
taskset -c 0 "$PY" -m townhall serve --port "$PORT" --data-dir "$DATA/data" --max-listeners "$CAP" ${SERVE_ARGS:-} \
  --log-level warning > "$DATA/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; cp "$DATA/serve.log" "$OUT.serve.log"; rm -rf "$DATA"' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.5; done
# PYSPY=DIR: py-spy samples both processes (20 Hz, without pausing them) into DIR
if [ -n "${PYSPY:-}" ]; then
  mkdir -p "$PYSPY"
  timeout $((DUR + 60)) py-spy record --nonblocking --subprocesses -r 20 -d "$DUR" -f raw \
    -o "$PYSPY/server.txt" -p "$SERVER" > "$PYSPY/server.log" 2>&1 &
fi
timeout $((DUR + 120)) taskset -c 1 "$PY" -m townhall bench storm --target "http://127.0.0.1:$PORT" --server-pid "$SERVER" \
  --arrivals "$ARRIVALS" --over-s 10 --pre-s 3 --listen-s "$LISTEN" --give-up 0.05 --duration-s "$DUR" --plot "$OUT.png" --records "$OUT.records" \
  --json --no-progress > "$OUT" &
GEN=$!
if [ -n "${PYSPY:-}" ]; then
  sleep 1
  timeout $((DUR + 60)) py-spy record --nonblocking -r 20 -d "$DUR" -f raw \
    -o "$PYSPY/generator.txt" -p "$(pgrep -P "$(pgrep -P $GEN)" || pgrep -P $GEN)" > "$PYSPY/generator.log" 2>&1 &
fi
wait $GEN
"$PY" -c "import json, sys; d = json.load(open(sys.argv[1])); print({k: d.get(k) for k in ('start_delay_s', 'ttfa_p50_s', 'ttfa_p99_s', 'mixer_clock_late_p99_s', 'shown_eta_error_p90', 'admitted_beyond_cap', 'client_cpu_percent')})" "$OUT"
