#!/usr/bin/env bash
# tests/bench/run.sh: the performance benchmark of the Mobius control plane.
#
# Builds release binaries, starts the release server on a fresh Postgres
# database, runs the scenarios of docs/performance.md in sequence with
# mobius-loadgen (simulated agents), and writes docs/performance.md and
# docs/performance.json from what it measured. Run `tests/bench/run.sh
# --help` for details. It is not run in CI (tests/tests/loadgen.rs is the
# CI smoke run of the simulator).

set -euo pipefail

readonly PROG="tests/bench/run.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly ROOT

usage() {
    cat <<'EOF'
Usage: tests/bench/run.sh [--quick] [--out DIR] [--keep]

Runs the benchmark and writes DIR/performance.md and DIR/performance.json
(DIR defaults to docs/ in the repository). Everything runs on this machine:
server, Postgres and simulator share its cores, and every connection stays
on 127.0.0.0/8.

Scenarios, in order:
  enroll     new agents enroll as fast as they can for 60 s (32 at once)
  idle       100,000 agents connect and hold their connections; server RSS
  latency    heartbeats at 3,500 per second (open loop): p99 latency
  heartbeat  heartbeats at 7,500 per second (open loop) for 5 minutes
  baseline   HEAD ping at the same rate over the same connections
  capacity   heartbeat and baseline closed loop (as fast as answered)
  fanout     10,000 agents hold the push stream; one plan (a no-op
             operation) targets them all: time until 99% and 100% are
             SUCCEEDED, server and Postgres CPU, server memory per stream
  reconnect  the server restarts, then 100,000 enrolled agents reconnect at
             the same moment, each with facts on its first ping: how long
             until all are served, and the errors

Connections are capped by the open-file limit (`ulimit -Hn`, which both the
server and the simulator need one descriptor per connection under): where
it is below a scenario's size, the scenario runs at the largest size it
allows, and the report says so.

Options:
  --quick      a reduced run of about 10 minutes (BENCH_SCALE=quick)
  --out DIR    write performance.md and performance.json there
  --keep       keep the work directory (logs, raw JSON reports)
  -h, --help   this text

Environment:
  BENCH_SCALE=full|quick       default full
  MOBIUS_TEST_DATABASE_URL     a Postgres superuser URL (default
                               postgres://postgres@127.0.0.1:5432/postgres);
                               a database mobius_bench_<time> is created
                               on it and dropped at exit
  CARGO_TARGET_DIR             respected as usual
  BENCH_ENROLL_SECS, BENCH_ENROLL_CONCURRENCY,
  BENCH_IDLE_AGENTS, BENCH_IDLE_HOLD_SECS,
  BENCH_AGENTS (heartbeat connections), BENCH_LATENCY_RATE,
  BENCH_LATENCY_SECS, BENCH_HEARTBEAT_RATE, BENCH_HEARTBEAT_SECS,
  BENCH_BASELINE_SECS, BENCH_CAPACITY_SECS,
  BENCH_RECONNECT_AGENTS, BENCH_FANOUT_AGENTS
                               override one scenario's size

Example:
  tests/bench/run.sh --quick --out /tmp/bench
EOF
}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    log "$*"
    exit 1
}

OUT_DIR="$ROOT/docs"
KEEP=0
SCALE="${BENCH_SCALE:-full}"
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
REPRODUCE="tests/bench/run.sh"
if [[ "$SCALE" == quick ]]; then REPRODUCE+=" --quick"; fi

case "$SCALE" in
full)
    : "${BENCH_ENROLL_SECS:=60}" "${BENCH_IDLE_AGENTS:=100000}" "${BENCH_IDLE_HOLD_SECS:=60}"
    : "${BENCH_AGENTS:=100000}" "${BENCH_LATENCY_SECS:=120}" "${BENCH_HEARTBEAT_SECS:=300}"
    : "${BENCH_BASELINE_SECS:=60}" "${BENCH_CAPACITY_SECS:=60}" "${BENCH_RECONNECT_AGENTS:=100000}"
    : "${BENCH_FANOUT_AGENTS:=10000}"
    ;;
quick)
    : "${BENCH_ENROLL_SECS:=30}" "${BENCH_IDLE_AGENTS:=5000}" "${BENCH_IDLE_HOLD_SECS:=15}"
    : "${BENCH_AGENTS:=5000}" "${BENCH_LATENCY_SECS:=30}" "${BENCH_HEARTBEAT_SECS:=60}"
    : "${BENCH_BASELINE_SECS:=30}" "${BENCH_CAPACITY_SECS:=20}" "${BENCH_RECONNECT_AGENTS:=5000}"
    : "${BENCH_FANOUT_AGENTS:=2000}"
    ;;
*) die "BENCH_SCALE must be full or quick, not $SCALE" ;;
esac
: "${BENCH_ENROLL_CONCURRENCY:=32}" "${BENCH_LATENCY_RATE:=3500}" "${BENCH_HEARTBEAT_RATE:=7500}"

command -v python3 >/dev/null || die "python3 is needed to write the report"
PSQL="$(command -v psql || true)"
[[ -n "$PSQL" ]] || die "psql is needed (apt-get install postgresql-client)"

# ---------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------

cd "$ROOT"
log "building release binaries (mobius-server, mobius-loadgen)"
cargo build --release --locked -p mobius-oss -p mobius-loadgen >&2
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SERVER_BIN="$TARGET_DIR/release/mobius-server"
LOADGEN="$TARGET_DIR/release/mobius-loadgen"
[[ -x "$SERVER_BIN" && -x "$LOADGEN" ]] || die "release binaries not found in $TARGET_DIR/release"

# ---------------------------------------------------------------------------
# Work directory, database, cleanup
# ---------------------------------------------------------------------------

ADMIN_URL="${MOBIUS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
STAMP="$(date -u +%Y%m%d%H%M%S)"
DB_NAME="mobius_bench_${STAMP}"
APP_ROLE="mobius_bench_app_${STAMP}"
WORK="$(mktemp -d /tmp/mobius-bench.XXXXXX)"
SERVER_PID=""
DB_CREATED=0

psql_admin() { PGCONNECT_TIMEOUT=5 "$PSQL" -X -w -q -At -v ON_ERROR_STOP=1 "$ADMIN_URL" "$@"; }

# The database URL for the server: the admin URL with another database.
DB_URL="$(python3 - "$ADMIN_URL" "$DB_NAME" <<'PY'
import sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
print(urllib.parse.urlunsplit(url._replace(path="/" + sys.argv[2])))
PY
)"

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
    if [[ "$KEEP" -eq 1 ]]; then
        log "work directory kept: $WORK"
    else
        rm -rf -- "$WORK"
    fi
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

# ---------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------

# Every connection costs the server and the simulator one descriptor each;
# both inherit this soft limit, raised as far as the hard limit allows.
ulimit -n "$(ulimit -Hn)" || true
FD_LIMIT="$(ulimit -n)"
# The server keeps some descriptors for itself (listeners, database pool,
# log), the simulator too: leave them room.
MAX_CONNECTIONS=$((FD_LIMIT - 500))

mkdir -p "$WORK/data" "$WORK/results"
SERVER_LOG=""

# start_server LOG ADMIN DEVICE: starts the release server on the work
# directory's data and database, listening on ADMIN and DEVICE (host:port;
# port 0 picks one), and waits until it listens. Sets SERVER_PID,
# ADMIN_ADDR and DEVICE_ADDR.
start_server() {
    SERVER_LOG="$1"
    log "starting the release server (logs: $SERVER_LOG)"
    MOBIUS_DATABASE_APP_ROLE="$APP_ROLE" \
        MOBIUS_HEARTBEAT_INTERVAL_SECS=15 \
        "$SERVER_BIN" serve \
        --listen "$2" --device-listen "$3" \
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
}

# stop_server: SIGTERM, as systemd stops the unit; SIGKILL after 30 s.
stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || return 0
    for _ in $(seq 1 300); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}

start_server "$WORK/server.log" 127.0.0.1:0 127.0.0.1:0
SETUP_CODE="$(jq -rR 'fromjson? | select(.setup_code != null) | .setup_code' "$SERVER_LOG" | head -1)"
[[ -n "$SETUP_CODE" ]] || die "the fresh server printed no setup code"

CREATED="$("$LOADGEN" --json token --admin "http://$ADMIN_ADDR" --setup-code "$SETUP_CODE")"
TOKEN="$(jq -r .token <<<"$CREATED")"
# The owner's access token, for the plan fan-out's applyPlan (it runs first,
# while the token is fresh).
ACCESS_TOKEN="$(jq -r .access_token <<<"$CREATED")"
export MOBIUS_LOADGEN_TOKEN="$TOKEN"

# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------

capped() { # capped N: N, or the largest connection count this machine allows
    if [[ "$1" -gt "$MAX_CONNECTIONS" ]]; then echo "$MAX_CONNECTIONS"; else echo "$1"; fi
}
IDLE_AGENTS="$(capped "$BENCH_IDLE_AGENTS")"
AGENTS="$(capped "$BENCH_AGENTS")"
RECONNECT_AGENTS="$(capped "$BENCH_RECONNECT_AGENTS")"
# Two connections per agent (the push stream and one for reports).
FANOUT_AGENTS="$(capped "$((BENCH_FANOUT_AGENTS * 2))")"
FANOUT_AGENTS=$((FANOUT_AGENTS / 2))

postgres_cpu() { python3 "$ROOT/tests/bench/cpu.py" "$DB_NAME"; }

# scenario NAME LOADGEN-ARGS...: runs mobius-loadgen, keeps its JSON report
# in results/NAME.json and the CPU time Postgres used in results/NAME.pg.
scenario() {
    local name="$1" status=0 pg_before pg_after
    shift
    log "scenario $name: mobius-loadgen $*"
    pg_before="$(postgres_cpu)"
    "$LOADGEN" --server "https://$DEVICE_ADDR" --server-ca "$WORK/data/device-ca.pem" \
        --identities "$WORK/identities.json" --server-pid "$SERVER_PID" --json "$@" \
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
# What was measured and in what company, for the report.
git -C "$ROOT" rev-parse --short HEAD >"$WORK/commit" 2>/dev/null || echo unknown >"$WORK/commit"
git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | wc -l >"$WORK/dirty"
cut -d' ' -f1-3 /proc/loadavg >"$WORK/loadavg_before"
scenario plan-fanout plan-fanout --agents "$FANOUT_AGENTS" --admin "http://$ADMIN_ADDR" \
    --admin-token "$ACCESS_TOKEN"
scenario enroll enroll --duration "$BENCH_ENROLL_SECS" --concurrency "$BENCH_ENROLL_CONCURRENCY"
scenario idle connect --agents "$IDLE_AGENTS" --hold "$BENCH_IDLE_HOLD_SECS"
scenario latency heartbeat --agents "$AGENTS" --rate "$BENCH_LATENCY_RATE" --duration "$BENCH_LATENCY_SECS"
scenario heartbeat heartbeat --agents "$AGENTS" --rate "$BENCH_HEARTBEAT_RATE" --duration "$BENCH_HEARTBEAT_SECS"
scenario baseline baseline --agents "$AGENTS" --rate "$BENCH_HEARTBEAT_RATE" --duration "$BENCH_BASELINE_SECS"
scenario capacity-heartbeat heartbeat --agents "$AGENTS" --closed-loop --duration "$BENCH_CAPACITY_SECS"
scenario capacity-baseline baseline --agents "$AGENTS" --closed-loop --duration "$BENCH_CAPACITY_SECS"

# Reconnect after a restart: the agents are enrolled beforehand (the
# scenarios above enrolled most or all of them), the server restarts on the
# same addresses (the identities file names the device listener's), and
# only then do they all reconnect at once.
enrolled="$(jq '.agents | length' "$WORK/identities.json")"
if [[ "$enrolled" -lt "$RECONNECT_AGENTS" ]]; then
    scenario reconnect-enroll enroll --count "$((RECONNECT_AGENTS - enrolled))" \
        --concurrency "$BENCH_ENROLL_CONCURRENCY"
fi
log "restarting the server"
restart_began="$(date +%s.%N)"
stop_server
start_server "$WORK/server-restarted.log" "$ADMIN_ADDR" "$DEVICE_ADDR"
python3 -c 'import sys, time; print(round(time.time() - float(sys.argv[1]), 2))' \
    "$restart_began" >"$WORK/restart_secs"
scenario reconnect reconnect --agents "$RECONNECT_AGENTS"

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

cut -d' ' -f1-3 /proc/loadavg >"$WORK/loadavg_after"
free -h >"$WORK/free"

# report.py reads the machine's description itself; it gets the rest here.
export BENCH_SCALE="$SCALE" BENCH_REPRODUCE="$REPRODUCE" BENCH_FD_LIMIT="$FD_LIMIT" \
    BENCH_MAX_CONNECTIONS="$MAX_CONNECTIONS" BENCH_SERVER_BIN="$SERVER_BIN" \
    BENCH_ADMIN_URL="$ADMIN_URL" BENCH_ROOT="$ROOT" BENCH_ENROLL_SECS BENCH_ENROLL_CONCURRENCY \
    BENCH_IDLE_AGENTS BENCH_IDLE_HOLD_SECS BENCH_AGENTS BENCH_LATENCY_RATE BENCH_LATENCY_SECS \
    BENCH_HEARTBEAT_RATE BENCH_HEARTBEAT_SECS BENCH_BASELINE_SECS BENCH_CAPACITY_SECS \
    BENCH_RECONNECT_AGENTS BENCH_FANOUT_AGENTS

# Kept with the results, so the report can be written again from them
# (`set -a; . WORK/params.env; python3 tests/bench/report.py WORK DIR`).
env | grep '^BENCH_' | sed "s/=\(.*\)/='\1'/" >"$WORK/params.env"
mkdir -p "$OUT_DIR"
python3 "$ROOT/tests/bench/report.py" "$WORK" "$OUT_DIR"
log "wrote $OUT_DIR/performance.md and $OUT_DIR/performance.json"
