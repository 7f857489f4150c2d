#!/usr/bin/env bash
# tests/bench/replicas.sh: idle agents holding the push channel across
# several mobius-server replicas behind one address (issue 13, "100,000
# agents on one machine, honestly"). Not run in CI. It merges its figures
# into docs/performance.json (its own keys: idle_agents_held,
# server_rss_bytes_idle, replicas, replicas_*) and its section between the
# `<!-- replicas:begin -->` / `<!-- replicas:end -->` markers of
# docs/performance.md; tests/bench/report.py keeps both.

set -euo pipefail

readonly PROG="tests/bench/replicas.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly ROOT

usage() {
    cat <<'EOF'
Usage: tests/bench/replicas.sh [--quick] [--agents N] [--replicas N] [--hold SECS]
                               [--out DIR] [--keep]

Idle agents hold the push channel (GET /api/v1/mobius/device/work/stream,
one mutual-TLS connection each) across several `mobius-server serve --role
api` replicas on one Postgres database, behind ONE address: HAProxy in TCP
passthrough mode (mTLS ends at the replicas), as a cloud load balancer
would be. Everything runs on this machine.

  mobius-loadgen x P  ->  haproxy x H (SO_REUSEPORT, one address)  ->  mobius-server x R  ->  Postgres

The open-file limit (`ulimit -Hn`) bounds every process, so the load is
spread: each replica holds agents/R connections, each HAProxy process at
most BENCH_HAPROXY_MAXCONN (it needs two descriptors per connection), each
simulator process at most BENCH_AGENTS_PER_LOADGEN, from loadgen's
127.0.0.2.. source addresses (ephemeral ports are per source address).

Phases:
  enroll     every simulator process enrolls its agents (once; the
             identities are reused by the later phases)
  streams    every agent opens its stream; once all processes are done,
             all hold for --hold seconds together; the replicas' RSS and
             CPU and the established connections are sampled meanwhile
  heartbeat  heartbeats through the balancer to all replicas: open loop at
             the rate the whole fleet offers at the default 30 s interval,
             then closed loop (capacity)

Options:
  --quick          12,000 agents, 60 s hold, 20 s heartbeat runs
  --agents N       agents holding streams (default 100000)
  --replicas N     server replicas (default 6)
  --hold SECS      hold time once every stream is open (default 300)
  --out DIR        write performance.md/performance.json there (default docs/)
  --keep           keep the work directory (logs, raw reports)
  -h, --help       this text

Environment:
  MOBIUS_TEST_DATABASE_URL     Postgres superuser URL (default
                               postgres://postgres@127.0.0.1:5432/postgres);
                               a database mobius_replicas_<time> is made and dropped
  BENCH_AGENTS_PER_LOADGEN     agents per simulator process (default 17000)
  BENCH_HAPROXY_MAXCONN        connections per HAProxy process (default 9000)
  BENCH_HEARTBEAT_AGENTS       agents in the heartbeat runs (default 6000)
  BENCH_HEARTBEAT_SECS         seconds per heartbeat run (default 60)
  BENCH_ENROLL_CONCURRENCY     enrollments in flight per simulator process (default 16)
  BENCH_CONNECT_CONCURRENCY    streams being opened at once per simulator process (default 32)
  CARGO_TARGET_DIR             respected as usual
EOF
}

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
die() {
    log "$PROG: $*"
    exit 1
}

OUT="$ROOT/docs"
KEEP=0
SCALE=full
AGENTS=""
REPLICAS=6
HOLD=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick) SCALE=quick ;;
    --agents)
        AGENTS="$2"
        shift
        ;;
    --replicas)
        REPLICAS="$2"
        shift
        ;;
    --hold)
        HOLD="$2"
        shift
        ;;
    --out)
        OUT="$2"
        shift
        ;;
    --keep) KEEP=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
    shift
done
if [[ "$SCALE" == quick ]]; then
    : "${AGENTS:=12000}" "${HOLD:=60}" "${BENCH_HEARTBEAT_SECS:=20}"
fi
: "${AGENTS:=100000}" "${HOLD:=300}"
PER_LOADGEN="${BENCH_AGENTS_PER_LOADGEN:-17000}"
HAPROXY_MAXCONN="${BENCH_HAPROXY_MAXCONN:-9000}"
HB_AGENTS="${BENCH_HEARTBEAT_AGENTS:-6000}"
HB_SECS="${BENCH_HEARTBEAT_SECS:-60}"
ENROLL_CONCURRENCY="${BENCH_ENROLL_CONCURRENCY:-16}"
CONNECT_CONCURRENCY="${BENCH_CONNECT_CONCURRENCY:-32}"
ADMIN_URL="${MOBIUS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
REPRODUCE="tests/bench/replicas.sh"
[[ "$SCALE" == quick ]] && REPRODUCE+=" --quick"
for v in AGENTS REPLICAS HOLD PER_LOADGEN HAPROXY_MAXCONN HB_AGENTS HB_SECS; do
    [[ "${!v}" =~ ^[0-9]+$ && "${!v}" -gt 0 ]] || die "$v must be a positive number, not ${!v}"
done

for tool in jq psql python3 haproxy ss; do
    command -v "$tool" >/dev/null || die "$tool is needed (haproxy: apt-get install haproxy)"
done

FD_LIMIT="$(ulimit -Hn)"
ulimit -n "$FD_LIMIT"
# Two descriptors per proxied connection, and some for HAProxy itself.
((2 * HAPROXY_MAXCONN + 200 <= FD_LIMIT)) ||
    die "BENCH_HAPROXY_MAXCONN=$HAPROXY_MAXCONN needs $((2 * HAPROXY_MAXCONN + 200)) open files; the limit is $FD_LIMIT"
((PER_LOADGEN + 200 <= FD_LIMIT)) ||
    die "BENCH_AGENTS_PER_LOADGEN=$PER_LOADGEN needs more open files than the limit ($FD_LIMIT)"
# Each replica holds its share plus the heartbeat agents' connections.
PER_REPLICA=$(((AGENTS + HB_AGENTS + REPLICAS - 1) / REPLICAS))
((PER_REPLICA + 500 <= FD_LIMIT)) ||
    die "$AGENTS agents over $REPLICAS replicas is $PER_REPLICA connections each: more than the open-file limit ($FD_LIMIT) allows; add replicas"
LOADGENS=$(((AGENTS + PER_LOADGEN - 1) / PER_LOADGEN))
# 30% headroom: SO_REUSEPORT spreads connections by hash, not evenly.
HAPROXIES=$(((AGENTS + HB_AGENTS) * 13 / 10 / HAPROXY_MAXCONN + 1))

log "building release binaries (mobius-server, mobius-loadgen)"
# The same packages as tests/bench/tunnel.sh builds: no rebuild between the two.
(cd "$ROOT" && cargo build --release --locked -q -p mobius-oss -p mobius-agent -p mobius-loadgen \
    -p mobius-tests --bins --examples >&2)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
SERVER_BIN="$TARGET_DIR/release/mobius-server"
LOADGEN="$TARGET_DIR/release/mobius-loadgen"

STAMP="$(date -u +%Y%m%d%H%M%S)"
DB="mobius_replicas_$STAMP"
APP_ROLE="mobius_replicas_app_$STAMP"
WORK="$(mktemp -d /tmp/mobius-replicas.XXXXXX)"
PIDS=()
psql_admin() { PGCONNECT_TIMEOUT=5 psql -X -w -q -At -v ON_ERROR_STOP=1 "$ADMIN_URL" "$@"; }
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    psql_admin -c "DROP ROLE IF EXISTS $APP_ROLE" >/dev/null 2>&1 || true
    if [[ "$KEEP" == 1 ]]; then log "work directory kept: $WORK"; else rm -rf -- "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_bytes() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }

psql_admin -c "CREATE DATABASE $DB" >/dev/null
DB_URL="$(python3 -c "import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path='/'+sys.argv[2])))" "$ADMIN_URL" "$DB")"
# Every replica must open the same sealed secrets (listener CA, signing keys).
MASTER_KEY="$(python3 -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())')"
cut -d' ' -f1-3 /proc/loadavg >"$WORK/loadavg_before"

# start_replica I: replica I (1-based) on its own data directory and ports.
REPLICA_PIDS=()
REPLICA_PORTS=()
start_replica() {
    local i="$1" device
    device="$(free_port)"
    mkdir -p "$WORK/r$i"
    MOBIUS_MASTER_KEY="$MASTER_KEY" MOBIUS_DATABASE_APP_ROLE="$APP_ROLE" \
        MOBIUS_DATABASE_MAX_CONNECTIONS=8 \
        "$SERVER_BIN" serve --role api --data-dir "$WORK/r$i" --listen 127.0.0.1:0 \
        --device-listen "127.0.0.1:$device" --database-url "$DB_URL" --log-format json \
        >"$WORK/r$i.log" 2>&1 &
    REPLICA_PIDS[i]=$!
    REPLICA_PORTS[i]="$device"
    PIDS+=("$!")
}
wait_replica() {
    local i="$1"
    for _ in $(seq 1 1200); do
        kill -0 "${REPLICA_PIDS[i]}" 2>/dev/null || die "replica $i exited: $(tail -5 "$WORK/r$i.log")"
        grep -qs '"device listener listening"' "$WORK/r$i.log" && return 0
        sleep 0.1
    done
    die "replica $i did not start within 120 s: $(tail -5 "$WORK/r$i.log")"
}

log "starting replica 1 of $REPLICAS (migrations, the shared listener CA) on Postgres ($DB)"
start_replica 1
wait_replica 1
ADMIN1="$(jq -rR 'fromjson? | select(.message == "admin API listening") | .address' "$WORK/r1.log" | head -1)"
SETUP_CODE="$(jq -rR 'fromjson? | select(.setup_code != null) | .setup_code' "$WORK/r1.log" | head -1)"
[[ -n "$SETUP_CODE" ]] || die "replica 1 printed no setup code"
# The first owner, before other replicas start (each would print a new code).
# Enrollment tokens: one per simulator process (100,000 uses each at most).
CREATED="$("$LOADGEN" --json token --admin "http://$ADMIN1" --setup-code "$SETUP_CODE")"
ACCESS="$(jq -r .access_token <<<"$CREATED")"
TOKENS=("$(jq -r .token <<<"$CREATED")")
for p in $(seq 2 "$LOADGENS"); do
    TOKENS+=("$("$LOADGEN" --json token --admin "http://$ADMIN1" --admin-token "$ACCESS" | jq -r .token)")
done
for i in $(seq 2 "$REPLICAS"); do start_replica "$i"; done
for i in $(seq 2 "$REPLICAS"); do wait_replica "$i"; done
log "replicas up: pids ${REPLICA_PIDS[*]}, device ports ${REPLICA_PORTS[*]}"

# --- HAProxy: H processes on one address (SO_REUSEPORT), TCP passthrough.
LB_PORT="$(free_port)"
# haproxy_config H: the configuration of HAProxy process H. Its connections
# to replica I leave from 127.1.H.I: connect() without a bound address
# draws from the same port space as the simulator's bound sockets (bind
# buckets are per port, not per address), and past ~85,000 connections
# HAProxy found no free port ("Connect() failed ...: no free ports").
haproxy_config() {
    cat <<EOF
global
    maxconn $HAPROXY_MAXCONN
    nbthread 1
    log stderr format short local0 warning

defaults
    mode tcp
    log global
    option dontlognull
    timeout connect 5s
    # The stream carries a keep-alive frame every 15 s.
    timeout client 10m
    timeout server 10m
    maxconn $HAPROXY_MAXCONN

frontend devices
    bind 127.0.0.1:$LB_PORT
    default_backend replicas

backend replicas
    balance leastconn
EOF
    local i
    for i in $(seq 1 "$REPLICAS"); do
        echo "    server r$i 127.0.0.1:${REPLICA_PORTS[i]} source 127.1.$1.$i"
    done
}
haproxy_config 1 >"$WORK/haproxy-1.cfg"
haproxy -c -q -f "$WORK/haproxy-1.cfg" || die "haproxy rejects $WORK/haproxy-1.cfg"
HAPROXY_PIDS=()
for h in $(seq 1 "$HAPROXIES"); do
    haproxy_config "$h" >"$WORK/haproxy-$h.cfg"
    haproxy -db -f "$WORK/haproxy-$h.cfg" >"$WORK/haproxy-$h.log" 2>&1 &
    HAPROXY_PIDS+=("$!")
    PIDS+=("$!")
done
for _ in $(seq 1 100); do
    (echo >"/dev/tcp/127.0.0.1/$LB_PORT") 2>/dev/null && break
    sleep 0.1
done
sleep 1
for pid in "${HAPROXY_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || die "haproxy exited: $(cat "$WORK"/haproxy-*.log | tail -5)"
done
LB="https://127.0.0.1:$LB_PORT"
log "$HAPROXIES haproxy processes (maxconn $HAPROXY_MAXCONN each) on 127.0.0.1:$LB_PORT"

CA="$WORK/r1/device-ca.pem"
share() { # share P: the agents of simulator process P (0-based)
    local base=$((AGENTS / LOADGENS)) extra=$((AGENTS % LOADGENS))
    if (($1 < extra)); then echo $((base + 1)); else echo "$base"; fi
}
loadgen() { # loadgen P ARGS...: simulator process P with its identities
    "$LOADGEN" --server "$LB" --server-ca "$CA" --identities "$WORK/ids-$1.json" --json "${@:2}"
}

mkdir -p "$WORK/results"
sample_replicas() { # sample_replicas NAME: RSS, CPU and connections now
    local i
    {
        for i in $(seq 1 "$REPLICAS"); do
            echo "{\"replica\":$i,\"rss\":$(rss_bytes "${REPLICA_PIDS[i]}"),\"cpu_ticks\":$(cpu_ticks "${REPLICA_PIDS[i]}"),\"established\":$(established "${REPLICA_PORTS[i]}")}"
        done
        local hrss=0 pid
        for pid in "${HAPROXY_PIDS[@]}"; do hrss=$((hrss + $(rss_bytes "$pid"))); done
        echo "{\"haproxy_rss\":$hrss,\"at\":$(date +%s.%N),\"loadavg\":\"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
    } | jq -sc --arg n "$1" '{name:$n, replicas:[.[] | select(.replica)], haproxy_rss:(.[] | select(.haproxy_rss) | .haproxy_rss), at:(.[] | select(.at) | .at), loadavg:(.[] | select(.at) | .loadavg)}' \
        >>"$WORK/results/samples.jsonl"
}
sample_replicas rest

# --- Enroll.
log "enrolling $AGENTS agents in $LOADGENS simulator processes ($ENROLL_CONCURRENCY at once each)"
began="$(date +%s.%N)"
ENROLLERS=()
for p in $(seq 0 $((LOADGENS - 1))); do
    MOBIUS_LOADGEN_TOKEN="${TOKENS[p]}" loadgen "$p" enroll --count "$(share "$p")" \
        --concurrency "$ENROLL_CONCURRENCY" >"$WORK/results/enroll-$p.json" 2>>"$WORK/loadgen-$p.log" &
    ENROLLERS+=("$!")
    PIDS+=("$!")
done
for pid in "${ENROLLERS[@]}"; do wait "$pid" || [[ $? == 3 ]] || die "an enrollment process failed: $(tail -3 "$WORK"/loadgen-*.log)"; done
python3 -c 'import sys,time; print(round(time.time()-float(sys.argv[1]),2))' "$began" >"$WORK/results/enroll_secs"
log "enrolled in $(cat "$WORK/results/enroll_secs") s"
sample_replicas enrolled

# --- Streams: open, then hold together.
log "opening $AGENTS streams ($CONNECT_CONCURRENCY at once per process), then holding them $HOLD s"
began="$(date +%s.%N)"
STREAMERS=()
for p in $(seq 0 $((LOADGENS - 1))); do
    loadgen "$p" streams --agents "$(share "$p")" --hold "$HOLD" \
        --connect-concurrency "$CONNECT_CONCURRENCY" --ready-file "$WORK/ready-$p" \
        --start-file "$WORK/go" >"$WORK/results/streams-$p.json" 2>>"$WORK/loadgen-$p.log" &
    STREAMERS+=("$!")
    PIDS+=("$!")
done
for p in $(seq 0 $((LOADGENS - 1))); do
    until [[ -f "$WORK/ready-$p" ]]; do
        kill -0 "${STREAMERS[p]}" 2>/dev/null || die "simulator $p exited before its streams were open: $(tail -3 "$WORK/loadgen-$p.log")"
        sleep 1
    done
done
python3 -c 'import sys,time; print(round(time.time()-float(sys.argv[1]),2))' "$began" >"$WORK/results/open_secs"
log "streams open after $(cat "$WORK/results/open_secs") s: $(jq -s 'map(.opened) | add' "$WORK"/ready-*) of $AGENTS"
sample_replicas opened
touch "$WORK/go"
hold_began="$(date +%s)"
# Sample every 30 s; the last one just before the simulators' hold ends.
while :; do
    left=$((hold_began + HOLD - 5 - $(date +%s)))
    ((left > 0)) || break
    sleep "$((left < 30 ? left : 30))"
    sample_replicas hold
done
sample_replicas held
for pid in "${STREAMERS[@]}"; do wait "$pid" || [[ $? == 3 ]] || die "a stream process failed: $(tail -3 "$WORK"/loadgen-*.log)"; done
log "held: $(jq -s 'map(.phases[] | select(.phase == "stream-hold") | .connections_held) | add' "$WORK"/results/streams-*.json) streams"

# --- Heartbeats through the balancer to every replica.
sleep 5
sample_replicas before-heartbeat
HB_RATE=$((AGENTS / 30))
HB_N="$HB_AGENTS"
(( HB_N > $(share 0) )) && HB_N="$(share 0)"
log "heartbeat: $HB_N agents, open loop at $HB_RATE/s (the fleet at a 30 s interval), $HB_SECS s"
loadgen 0 heartbeat --agents "$HB_N" --rate "$HB_RATE" --duration "$HB_SECS" \
    >"$WORK/results/heartbeat-open.json" 2>>"$WORK/loadgen-0.log" || [[ $? == 3 ]] || die "heartbeat failed: $(tail -3 "$WORK/loadgen-0.log")"
sample_replicas after-heartbeat-open
log "heartbeat: closed loop (capacity), $HB_SECS s"
loadgen 0 heartbeat --agents "$HB_N" --closed-loop --duration "$HB_SECS" \
    >"$WORK/results/heartbeat-closed.json" 2>>"$WORK/loadgen-0.log" || [[ $? == 3 ]] || die "heartbeat failed: $(tail -3 "$WORK/loadgen-0.log")"
sample_replicas after-heartbeat-closed
cut -d' ' -f1-3 /proc/loadavg >"$WORK/loadavg_after"

log "writing $OUT/performance.json and $OUT/performance.md"
mkdir -p "$OUT"
python3 "$ROOT/tests/bench/replicas_report.py" "$WORK" "$OUT" "$SCALE" "$REPRODUCE" "$AGENTS" "$REPLICAS" \
    "$HOLD" "$LOADGENS" "$HAPROXIES" "$HAPROXY_MAXCONN" "$FD_LIMIT" "$HB_SECS" "$(getconf CLK_TCK)" "$SERVER_BIN"
