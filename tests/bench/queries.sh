#!/usr/bin/env bash
# tests/bench/queries.sh: live queries and osquery polling (issue 10,
# "Performance"). Not run in CI. Merges its figures into
# docs/performance.json (its own keys: live_query_* and osquery_*) and its
# section between the `<!-- queries:begin -->` / `<!-- queries:end -->`
# markers of docs/performance.md; tests/bench/report.py keeps both.

set -euo pipefail

readonly PROG="tests/bench/queries.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly ROOT

usage() {
    cat <<'EOF_USAGE'
Usage: tests/bench/queries.sh [--quick] [--out DIR] [--keep]

Builds release binaries (the same build command as tests/bench/run.sh),
starts the release server on a fresh Postgres database and runs with
mobius-loadgen:

  live-query    N simulated agents hold their work streams (and a report
                connection each); the admin starts ONE runLiveQuery to all
                of them and follows liveQueryResults over graphql-ws; each
                agent answers three rows when its query frame arrives.
                Figures: the time from runLiveQuery until 99% and 100% of
                the results reached the admin's subscription
                (live_query_p99_s, live_query_all_s; targets 2 s and 5 s),
                server and Postgres CPU.
  osquery-poll  N osquery-protocol clients enroll on the admin listener
                (POST /api/osquery/enroll, an enroll secret made through
                createOsqueryEnrollSecret), then each POSTs
                /api/osquery/distributed/read every 10 s (±10%, open loop).
                Figures: enrollments/s, reads served/s, read p50/p99,
                errors (osquery_read_per_s, osquery_read_p99_ms, ...).

Options:
  --quick      1,000 agents and 1,000 osquery clients (default 10,000 each)
  --out DIR    merge the figures into DIR/performance.{md,json} (default docs/)
  --keep       keep the work directory (logs, raw reports)
  -h, --help   this text

Environment:
  MOBIUS_TEST_DATABASE_URL   Postgres superuser URL (default
                             postgres://postgres@127.0.0.1:5432/postgres); a
                             database mobius_queries_<time> is made and dropped
  BENCH_LQ_AGENTS            live-query agents (overrides the scale)
  BENCH_OSQ_CLIENTS          osquery clients (overrides the scale)
  BENCH_OSQ_INTERVAL         seconds between one client's polls (default 10)
  BENCH_OSQ_SECS             polling time (default 60; quick 30)
  CARGO_TARGET_DIR           respected as usual

Example:
  tests/bench/queries.sh --quick --out /tmp/bench
EOF_USAGE
}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    log "$*"
    exit 1
}

OUT_DIR="$ROOT/docs"
KEEP=0
SCALE=full
while [[ $# -gt 0 ]]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --quick) SCALE=quick ;;
    --out)
        [[ $# -ge 2 ]] || die "--out needs a directory"
        OUT_DIR="$2"
        shift
        ;;
    --keep) KEEP=1 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
if [[ "$SCALE" == quick ]]; then
    : "${BENCH_LQ_AGENTS:=1000}" "${BENCH_OSQ_CLIENTS:=1000}" "${BENCH_OSQ_SECS:=30}"
else
    : "${BENCH_LQ_AGENTS:=10000}" "${BENCH_OSQ_CLIENTS:=10000}" "${BENCH_OSQ_SECS:=60}"
fi
: "${BENCH_OSQ_INTERVAL:=10}"

for tool in python3 jq; do command -v "$tool" >/dev/null || die "$tool is needed"; done
PSQL="$(command -v psql || true)"
[[ -n "$PSQL" ]] || die "psql is needed (apt-get install postgresql-client)"

# Build: the same command as run.sh, so one build serves both.
cd "$ROOT"
log "building release binaries (mobius-server, mobius-loadgen)"
cargo build --release --locked -p mobius-oss -p mobius-loadgen >&2
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SERVER_BIN="$TARGET_DIR/release/mobius-server"
LOADGEN="$TARGET_DIR/release/mobius-loadgen"
[[ -x "$SERVER_BIN" && -x "$LOADGEN" ]] || die "release binaries not found in $TARGET_DIR/release"

# Work directory, database, cleanup
ADMIN_URL="${MOBIUS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
STAMP="$(date -u +%Y%m%d%H%M%S)"
DB_NAME="mobius_queries_${STAMP}"
APP_ROLE="mobius_queries_app_${STAMP}"
WORK="$(mktemp -d /tmp/mobius-queries.XXXXXX)"
SERVER_PID=""
DB_CREATED=0

psql_admin() { PGCONNECT_TIMEOUT=5 "$PSQL" -X -w -q -At -v ON_ERROR_STOP=1 "$ADMIN_URL" "$@"; }
DB_URL="$(python3 - "$ADMIN_URL" "$DB_NAME" <<'PY'
import sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
print(urllib.parse.urlunsplit(url._replace(path="/" + sys.argv[2])))
PY
)"

stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || return 0
    for _ in $(seq 1 300); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    local rc=$?
    if [[ -n "$SERVER_PID" ]]; then stop_server; fi
    if [[ "$DB_CREATED" -eq 1 ]]; then
        psql_admin -c "DROP DATABASE IF EXISTS ${DB_NAME} WITH (FORCE)" >/dev/null 2>&1 ||
            log "warning: could not drop database ${DB_NAME}"
        psql_admin -c "DROP ROLE IF EXISTS ${APP_ROLE}" >/dev/null 2>&1 ||
            log "warning: could not drop role ${APP_ROLE}"
    fi
    if [[ "$KEEP" -eq 1 ]]; then log "work directory kept: $WORK"; else rm -rf -- "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

psql_admin -c "SELECT 1" >/dev/null ||
    die "no Postgres superuser at ${ADMIN_URL%%@*}@...: set MOBIUS_TEST_DATABASE_URL"
# Names are made of a fixed prefix and digits: safe to splice.
psql_admin -c "CREATE DATABASE ${DB_NAME}" >/dev/null
DB_CREATED=1
log "created database ${DB_NAME}"

# Two descriptors per live-query agent in the server and in the simulator:
# ask for that much (root may raise the hard limit), else take the hard limit.
ulimit -n "$((BENCH_LQ_AGENTS * 2 + 1000))" 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
FD_LIMIT="$(ulimit -n)"
# Two connections per live-query agent, both ends on this machine.
MAX_LQ_AGENTS=$(((FD_LIMIT - 500) / 2))
if [[ "$BENCH_LQ_AGENTS" -gt "$MAX_LQ_AGENTS" ]]; then
    log "open-file limit $FD_LIMIT: live-query capped at $MAX_LQ_AGENTS agents"
    BENCH_LQ_AGENTS="$MAX_LQ_AGENTS"
fi

mkdir -p "$WORK/data" "$WORK/results"
SERVER_LOG="$WORK/server.log"
log "starting the release server (logs: $SERVER_LOG)"
MOBIUS_DATABASE_APP_ROLE="$APP_ROLE" MOBIUS_HEARTBEAT_INTERVAL_SECS=15 \
    "$SERVER_BIN" serve --listen 127.0.0.1:0 --device-listen 127.0.0.1:0 \
    --data-dir "$WORK/data" --database-url "$DB_URL" --log-format json \
    >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
ADMIN_ADDR=""
for _ in $(seq 1 600); do
    kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited at start-up: $(tail -5 "$SERVER_LOG")"
    ADMIN_ADDR="$(jq -rR 'fromjson? | select(.message == "admin API listening") | .address' "$SERVER_LOG" | head -1)"
    [[ -n "$ADMIN_ADDR" ]] && break
    sleep 0.1
done
[[ -n "$ADMIN_ADDR" ]] || die "the server did not start listening within 60 s"
DEVICE_ADDR="$(jq -rR 'fromjson? | select(.message == "device listener listening") | .address' "$SERVER_LOG" | head -1)"
log "server pid $SERVER_PID: admin http://$ADMIN_ADDR, devices https://$DEVICE_ADDR"
SETUP_CODE="$(jq -rR 'fromjson? | select(.setup_code != null) | .setup_code' "$SERVER_LOG" | head -1)"
[[ -n "$SETUP_CODE" ]] || die "the fresh server printed no setup code"
CREATED="$("$LOADGEN" --json token --admin "http://$ADMIN_ADDR" --setup-code "$SETUP_CODE")"
export MOBIUS_LOADGEN_TOKEN
MOBIUS_LOADGEN_TOKEN="$(jq -r .token <<<"$CREATED")"
ACCESS_TOKEN="$(jq -r .access_token <<<"$CREATED")"

postgres_cpu() { python3 "$ROOT/tests/bench/cpu.py" "$DB_NAME"; }

# scenario NAME LOADGEN-ARGS...: runs mobius-loadgen, keeps its JSON report
# in results/NAME.json and the CPU seconds Postgres used in results/NAME.pg.
scenario() {
    local name="$1" status=0 pg_before pg_after
    shift
    log "scenario $name: mobius-loadgen $*"
    pg_before="$(postgres_cpu)"
    "$LOADGEN" --server "https://$DEVICE_ADDR" --server-ca "$WORK/data/device-ca.pem" \
        --identities "$WORK/identities.json" --server-pid "$SERVER_PID" --json \
        --admin "http://$ADMIN_ADDR" --admin-token "$ACCESS_TOKEN" "$@" \
        >"$WORK/results/$name.json" 2>>"$WORK/loadgen.log" || status=$?
    pg_after="$(postgres_cpu)"
    python3 -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 2))' \
        "$pg_before" "$pg_after" >"$WORK/results/$name.pg"
    # 3: the run completed with failed requests, which the report counts.
    if [[ "$status" -ne 0 && "$status" -ne 3 ]]; then
        die "scenario $name failed (status $status): $(tail -3 "$WORK/loadgen.log")"
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || die "the server died during $name: $(tail -5 "$SERVER_LOG")"
}

date -u +%Y-%m-%dT%H:%M:%SZ >"$WORK/measured_at"
git -C "$ROOT" rev-parse --short HEAD >"$WORK/commit" 2>/dev/null || echo unknown >"$WORK/commit"
cut -d' ' -f1-3 /proc/loadavg >"$WORK/loadavg_before"
scenario live-query live-query --agents "$BENCH_LQ_AGENTS"
scenario osquery osquery-poll --clients "$BENCH_OSQ_CLIENTS" --interval "$BENCH_OSQ_INTERVAL" \
    --duration "$BENCH_OSQ_SECS"
cut -d' ' -f1-3 /proc/loadavg >"$WORK/loadavg_after"

# What dominated, if the targets were missed: the server's slow warnings.
jq -rR 'fromjson? | select(.level == "WARN") | .message' "$SERVER_LOG" | sort | uniq -c |
    sort -rn >"$WORK/server_warnings" || true

# Pool waits over sqlx's 2 s slow-acquire threshold: count and longest.
jq -rR 'fromjson? | select(.message | test("time to acquire exceeded")) | .acquired_after_secs' \
    "$SERVER_LOG" | awk '{n++; if ($1 > m) m = $1} END {printf "%d %.2f\n", n, m}' >"$WORK/slow_acquires"
echo "$FD_LIMIT" >"$WORK/fd_limit"

mkdir -p "$OUT_DIR"
python3 "$ROOT/tests/bench/queries_report.py" "$WORK" "$OUT_DIR" "$SCALE" "$BENCH_OSQ_INTERVAL"
log "merged the figures into $OUT_DIR/performance.md and $OUT_DIR/performance.json"
