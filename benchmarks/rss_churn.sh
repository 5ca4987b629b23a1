#!/bin/bash
# Memory under an attacker that reconnects (docs/BENCHMARKS.md, "Memory under
# an attacker that reconnects"): one shape of `townhall bench attack` with
# churn against a fresh `townhall serve` (the media process is the default),
# the server's process tree sampled once a second (benchmarks/rss_watch.py)
# during the run and for AFTER_S seconds of quiet after it. Loopback only,
# bounded: the bench stops after DURATION_S, the server after AFTER_S more.
#   benchmarks/rss_churn.sh [OUT_DIR]
# Environment: SHAPE (replay), CHURN_S (0.2; empty: no churn), LISTENERS (1000),
# RATE_X (10), DURATION_S (45), ATTACK_START_S (18), AFTER_S (30), PORT,
# MEMDEBUG (1: a SIGUSR2 report from every server
# process just before the attack and at the end, in OUT/serve.log), and any
# TOWNHALL_* setting passed on to the server.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-rss-churn}
PY=${PYTHON:-.venv/bin/python}
SHAPE=${SHAPE:-replay}
CHURN_S=${CHURN_S-0.2}
LISTENERS=${LISTENERS:-1000}
RATE_X=${RATE_X:-10}
DURATION_S=${DURATION_S:-45}
ATTACK_START_S=${ATTACK_START_S:-18}
AFTER_S=${AFTER_S:-30}
PORT=${PORT:-18990}
MEMDEBUG=${MEMDEBUG:-0}
mkdir -p "$OUT"
export TOWNHALL_PROGRAM_WAITS_FOR_HOST=false
[ "$MEMDEBUG" -gt 0 ] && export TOWNHALL_MEMORY_REPORT_ON_SIGUSR2=true
data=$(mktemp -d)
setsid timeout $((DURATION_S + AFTER_S + 120)) taskset -c 0 "$PY" -m townhall serve \
  --port "$PORT" --data-dir "$data/data" --log-level warning > "$OUT/serve.log" 2>&1 &
server=$!
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.5; done
"$PY" benchmarks/rss_watch.py "$server" --duration-s $((DURATION_S + AFTER_S + 20)) > "$OUT/rss.jsonl" &
watch=$!
report() {  # a SIGUSR2 report from every Python process of the server
  [ "$MEMDEBUG" -gt 0 ] || return 0
  for pid in $(pgrep -s "$server" "^python"); do kill -USR2 "$pid" 2>/dev/null; done
}
( sleep $((ATTACK_START_S - 3)); report ) &
setsid timeout $((DURATION_S + 90)) taskset -c 1 "$PY" -m townhall bench attack \
  --target "http://127.0.0.1:$PORT" --listeners "$LISTENERS" --sources 1000 --networks 1000 \
  --duration-s "$DURATION_S" --attack-start-s "$ATTACK_START_S" --json --no-progress \
  --shape "$SHAPE" --rate-x "$RATE_X" ${CHURN_S:+--churn-s "$CHURN_S"} \
  > "$OUT/attack.json" 2> "$OUT/attack.err"
sleep "$AFTER_S"
report
sleep 5
kill "$watch" 2>/dev/null
kill "$server" 2>/dev/null
wait "$server" 2>/dev/null
rm -rf "$data"
"$PY" - "$OUT/rss.jsonl" "$ATTACK_START_S" "$DURATION_S" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
start, end = float(sys.argv[2]), float(sys.argv[3])
fds = {}
for r in rows:
    for p in r["procs"]:
        fds[p["pid"]] = max(fds.get(p["pid"], 0), p.get("fds") or 0)
names = sorted({(p["pid"], p["name"]) for r in rows for p in r["procs"]})
for pid, name in names:
    series = [(r["t"], p["rss_mb"]) for r in rows for p in r["procs"] if p["pid"] == pid]
    before = [v for t, v in series if t < start] or [0]
    print(f"{name:>6} {pid}: RSS before {before[-1]} / max {max(v for _, v in series)}"
          f" / at the end of the attack {[v for t, v in series if t <= end][-1]}"
          f" / last {series[-1][1]} MB; descriptors max {fds[pid]}")
PY
