#!/bin/bash
# Issue 10's attack table at full size: every shape of `townhall bench attack`
# against a fresh `townhall serve` each, 1,000 legitimate LL-HLS listeners
# (each from its own loopback address, 250 /24s), the floods at 10 x the
# listeners' own request rate from 1,000 sources in 1,000 /24s; once with the
# rooms in the HTTP process and once with --media-process. Server on core 0,
# load generator on core 1, each in a session of its own (setsid: with the
# kernel's autogroup scheduling a session shares the CPU as one, so neither
# waits behind the other or behind this shell). Loopback only, bounded: each
# bench stops after DURATION_S, each server is stopped after its bench.
#   benchmarks/attack_full.sh [OUT_DIR]
# Environment: MODES="inproc media", SHAPES="control replay ...", LISTENERS, CHURN_S (floods
# drop a connection the server stopped answering after this many seconds and reconnect),
# RATE_X, DURATION_S, ATTACK_START_S, PORT, BENCH_LOCK (a file held with
# flock(1) while a run goes, so benchmarks on a shared machine take turns),
# LOCK_PER=shape (one turn per run) or mode (one turn per mode's shapes).
# Prints the Markdown table (python -m townhall.bench.attack_table).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-attack-full}
PY=${PYTHON:-.venv/bin/python}
MODES=${MODES:-inproc media}
SHAPES=${SHAPES:-control replay playlist forged ticket join state page reload signin headers slowloris}
LISTENERS=${LISTENERS:-1000}
RATE_X=${RATE_X:-10}
DURATION_S=${DURATION_S:-45}
ATTACK_START_S=${ATTACK_START_S:-18}
PORT=${PORT:-18960}
BENCH_LOCK=${BENCH_LOCK:-}
LOCK_PER=${LOCK_PER:-shape}
mkdir -p "$OUT"
export TOWNHALL_PROGRAM_WAITS_FOR_HOST=false  # the space publishes its program without a speaker

shape_args() {
  case $1 in
    control) echo "--shape join --rate 1 --connections 1" ;;
    slowloris) echo "--shape slowloris --slow-connections 10000" ;;
    headers) echo "--shape headers --slow-connections 200 --header-rate 4000000" ;;
    *) echo "--shape $1 --rate-x $RATE_X${CHURN_S:+ --churn-s $CHURN_S}" ;;
  esac
}

run_one() {  # MODE SHAPE
  local mode=$1 shape=$2 data server
  data=$(mktemp -d)
  local serve_args=(--port "$PORT" --data-dir "$data/data" --log-level warning)
  [ "$mode" = media ] && serve_args+=(--media-process)
  [ "$mode" = inproc ] && serve_args+=(--no-media-process)  # the media process is the default
  setsid timeout $((DURATION_S + 120)) taskset -c 0 "$PY" -m townhall serve "${serve_args[@]}" \
    > "$OUT/$mode-$shape.serve.log" 2>&1 &
  server=$!
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.5; done
  # shellcheck disable=SC2046
  setsid timeout $((DURATION_S + 90)) taskset -c 1 "$PY" -m townhall bench attack \
    --target "http://127.0.0.1:$PORT" --listeners "$LISTENERS" --sources 1000 --networks 1000 \
    --duration-s "$DURATION_S" --attack-start-s "$ATTACK_START_S" --json --no-progress \
    $(shape_args "$shape") > "$OUT/$mode-$shape.json" 2> "$OUT/$mode-$shape.err"
  kill "$server" 2>/dev/null
  wait "$server" 2>/dev/null
  rm -rf "$data"
}

take() { [ -n "$BENCH_LOCK" ] && exec 9> "$BENCH_LOCK" && flock 9; }
give() { [ -n "$BENCH_LOCK" ] && flock -u 9 && exec 9>&-; }

for mode in $MODES; do
  [ "$LOCK_PER" = mode ] && take
  for shape in $SHAPES; do
    [ "$LOCK_PER" = mode ] || take
    echo "$(date -u +%H:%M:%S) $mode $shape (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    run_one "$mode" "$shape"
    [ "$LOCK_PER" = mode ] || give
    PORT=$((PORT + 1))
  done
  [ "$LOCK_PER" = mode ] && give
done
files=()
for mode in $MODES; do for shape in $SHAPES; do files+=("$OUT/$mode-$shape.json"); done; done
"$PY" -m townhall.bench.attack_table "${files[@]}"
