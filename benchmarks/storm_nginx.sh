#!/bin/bash
# Issue 9's bar through nginx: the storm of storm_bar.sh (cap 1,000, 10,000
# arrivals in 10 s) sent to Debian's nginx running deploy/nginx-cache.conf
# (media gate on: nginx checks the link cookies join sets) in front of one
# node. Every waiting listener fetches queue.json for itself (--poll each),
# through nginx; the origin's queue.json answers per second are counted from
# its /metrics (townhall_queue_documents_total) and reported in probe.
# Server and nginx on core 0, `townhall bench storm` on core 1, loopback only,
# bounded. CAP, ARRIVALS, LISTEN, DUR and SERVE_ARGS override.
#   benchmarks/storm_nginx.sh [PORT] [OUT.json]   (nginx listens on PORT+1)
set -u
cd "$(dirname "$0")/.."
PORT=${1:-18995}
EDGE=$((PORT + 1))
OUT=${2:-storm-nginx.json}
CAP=${CAP:-1000} ARRIVALS=${ARRIVALS:-10000} LISTEN=${LISTEN:-20} DUR=${DUR:-150}
PY=${PYTHON:-.venv/bin/python}
SECRET=storm-bench-$RANDOM$RANDOM
export TOWNHALL_JOINS_PER_NETWORK_PER_10S=1000000 TOWNHALL_REFUSALS_PER_NETWORK_PER_10S=1000000 \
  TOWNHALL_STATE_PER_NETWORK_PER_10S=1000000 TOWNHALL_PLAYLISTS_PER_NETWORK_PER_10S=1000000 \
  TOWNHALL_HTTP_MAX_CONNECTIONS_PER_NETWORK=100000 TOWNHALL_CHALLENGE_JOINS_PER_S=1000000 \
  TOWNHALL_CHALLENGE_UNSOLVED_JOINS_PER_S=1000000 TOWNHALL_PROGRAM_WAITS_FOR_HOST=false \
  TOWNHALL_EDGE_LINK_SECRET=$SECRET
DATA=$(mktemp -d)
mkdir -p "$DATA/nginx/cache"
sed -e "s|@ORIGIN@|127.0.0.1:$PORT|" -e "s|@LISTEN@|127.0.0.1:$EDGE|" -e "s|@CACHE_DIR@|$DATA/nginx/cache|" \
  -e "s|@MEDIA_GATE@|on|" -e "s|@LINK_SECRET@|$SECRET|" deploy/nginx-cache.conf > "$DATA/nginx/nginx.conf"
taskset -c 0 "$PY" -m townhall serve --port "$PORT" --data-dir "$DATA/data" --max-listeners "$CAP" ${SERVE_ARGS:-} \
  --log-level warning > "$DATA/serve.log" 2>&1 &
SERVER=$!
taskset -c 0 nginx -p "$DATA/nginx" -c "$DATA/nginx/nginx.conf" \
  -g "daemon off; pid $DATA/nginx/nginx.pid; error_log $DATA/nginx/error.log; user root;" &
NGINX=$!
trap 'kill $NGINX $SERVER 2>/dev/null; wait $NGINX $SERVER 2>/dev/null; cp "$DATA/serve.log" "$OUT.serve.log"; cp "$DATA/nginx/error.log" "$OUT.nginx-error.log" 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$EDGE/healthz" >/dev/null && break; sleep 0.5; done
timeout $((DUR + 120)) taskset -c 1 "$PY" -m townhall bench storm --target "http://127.0.0.1:$EDGE" \
  --origin "http://127.0.0.1:$PORT" --server-pid "$SERVER" --poll each \
  --arrivals "$ARRIVALS" --over-s 10 --pre-s 3 --listen-s "$LISTEN" --give-up 0.05 --duration-s "$DUR" --plot "$OUT.png" --records "$OUT.records" \
  --json --no-progress > "$OUT"
"$PY" -c "import json, sys; d = json.load(open(sys.argv[1])); p = d['probe']; print({k: d.get(k) for k in ('start_delay_s', 'stall_ratio', 'shown_eta_error_p90', 'admitted_beyond_cap', 'client_cpu_percent')}, {k: p.get(k) for k in ('origin_queue_docs_per_s_p50', 'origin_queue_docs_per_s_max', 'generator_cpu_max_percent')})" "$OUT"
