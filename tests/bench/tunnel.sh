#!/usr/bin/env bash
# tests/bench/tunnel.sh: the backbone (reverse tunnel) benchmark, side by
# side with a direct connection and rathole, through one parked connection
# to a local HTTP service. Not run in CI. It merges its figures into
# docs/performance.json (its own keys only: read, modify, write) and its
# table between the `<!-- tunnel:begin -->` / `<!-- tunnel:end -->`
# markers of docs/performance.md; tests/bench/run.sh owns the rest.

set -euo pipefail

readonly PROG="tests/bench/tunnel.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly ROOT

usage() {
    cat <<'EOF'
Usage: tests/bench/tunnel.sh [--quick] [--out DIR] [--keep]

Everything runs on this machine over 127.0.0.1, in plain HTTP (the
backbone without TLS, rathole without its noise/TLS transport), so the
three paths differ only by the tunnel:

  direct    client -> local service
  backbone  client -> mobius-server (backbone) -> HTTP/2 tunnel -> mobius-agent -> service
  rathole   client -> rathole server -> rathole tunnel -> rathole client -> service

Scenarios:
  latency   open loop at 1,000 and 4,000 requests/s (latency from the
            scheduled send time): p50, p99 for each path
  max       closed loop, 64 concurrent clients: requests/s per path
  transfer  BENCH_TUNNEL_TRANSFER_BYTES down and up through backbone and
            rathole, with the tunnel server's RSS growth
  websocket one WebSocket through the backbone echoing every 100 ms for
            BENCH_TUNNEL_WS_SECS
  failover  two backbone nodes, the agent parked on both; a client sends
            every 5 ms to node A and switches to B when A fails; A is
            killed: time from the first failure to the first success

Options:
  --quick      short runs: 10 s per latency point, 256 MiB transfers, 30 s WebSocket
  --out DIR    write performance.md/performance.json there (default docs/)
  --keep       keep the work directory
  -h, --help   this text

Environment:
  MOBIUS_TEST_DATABASE_URL       Postgres superuser URL (default postgres://postgres@127.0.0.1:5432/postgres)
  BENCH_TUNNEL_SECS              seconds per latency point (default 20)
  BENCH_TUNNEL_MAX_SECS          seconds of the closed loop (default 15)
  BENCH_TUNNEL_TRANSFER_BYTES    default 2147483648 (2 GiB)
  BENCH_TUNNEL_WS_SECS           default 600
  RATHOLE_BIN                    a rathole binary (`none`: leave rathole out); else $RATHOLE_ROOT/bin/rathole, else
                                 `cargo install rathole --root $RATHOLE_ROOT`
                                 (RATHOLE_ROOT default /var/cache/mobius/rathole)
  BENCH_TUNNEL_PROFILE           release (default) or dev: unoptimized builds, for a
                                 dry run only (the table says which)
  CARGO_TARGET_DIR               respected as usual
EOF
}

die() { echo "$PROG: $*" >&2; exit 1; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

OUT="$ROOT/docs"
KEEP=0
SCALE=full
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) SCALE=quick ;;
        --out) OUT="$2"; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
    shift
done

if [[ "$SCALE" == quick ]]; then
    : "${BENCH_TUNNEL_SECS:=10}" "${BENCH_TUNNEL_MAX_SECS:=10}"
    : "${BENCH_TUNNEL_TRANSFER_BYTES:=268435456}" "${BENCH_TUNNEL_WS_SECS:=30}"
fi
SECS="${BENCH_TUNNEL_SECS:-20}"
MAX_SECS="${BENCH_TUNNEL_MAX_SECS:-15}"
TRANSFER="${BENCH_TUNNEL_TRANSFER_BYTES:-2147483648}"
WS_SECS="${BENCH_TUNNEL_WS_SECS:-600}"
ADMIN_URL="${MOBIUS_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
RATHOLE_ROOT="${RATHOLE_ROOT:-/var/cache/mobius/rathole}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
DOMAIN=backbone.localhost

for tool in jq curl psql python3; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done

PROFILE="${BENCH_TUNNEL_PROFILE:-release}"
log "building $PROFILE binaries (mobius-server, mobius-agent, tunnel_bench)"
if [[ "$PROFILE" == release ]]; then
    # One set of packages for this and tests/bench/replicas.sh, so neither
    # rebuilds the other's dependencies with other features; `--bins
    # --examples` (an `--example` alone would leave the binaries unbuilt).
    (cd "$ROOT" && cargo build --release --locked -q -p mobius-oss -p mobius-agent -p mobius-loadgen \
        -p mobius-tests --bins --examples)
    BIN="$TARGET_DIR/release"
else
    (cd "$ROOT" && cargo build --locked -q -p mobius-oss -p mobius-agent -p mobius-loadgen \
        -p mobius-tests --bins --examples)
    BIN="$TARGET_DIR/debug"
fi
BENCH="$BIN/examples/tunnel_bench"

RATHOLE="${RATHOLE_BIN:-}"
if [[ "$RATHOLE" == none ]]; then
    RATHOLE=""
    log "RATHOLE_BIN=none: rathole is left out"
elif [[ -z "$RATHOLE" ]]; then
    if [[ -x "$RATHOLE_ROOT/bin/rathole" ]]; then
        RATHOLE="$RATHOLE_ROOT/bin/rathole"
    elif command -v rathole >/dev/null; then
        RATHOLE="$(command -v rathole)"
    else
        log "installing rathole into $RATHOLE_ROOT (a benchmark peer, outside the repository)"
        if cargo install rathole --root "$RATHOLE_ROOT" >&2; then
            RATHOLE="$RATHOLE_ROOT/bin/rathole"
        else
            log "rathole did not build: its columns will say so"
        fi
    fi
fi

WORK="$(mktemp -d /tmp/mobius-tunnel-bench.XXXXXX)"
PIDS=()
DB="mobius_tunnel_bench_$(date +%s)"
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -X -q -At "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    if [[ "$KEEP" == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 200); do
        (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    die "nothing listens on port $1"
}

psql -X -q -At "$ADMIN_URL" -c "CREATE DATABASE $DB" >/dev/null
DB_URL="$(python3 -c "import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p._replace(path='/$DB').geturl())" "$ADMIN_URL")"

TARGET_PORT="$(free_port)"
"$BENCH" target "$TARGET_PORT" & PIDS+=($!)
wait_port "$TARGET_PORT"

start_node() { # name -> sets NODE_PID, NODE_ADMIN, NODE_BACKBONE
    local name="$1" admin backbone device
    admin="$(free_port)"; backbone="$(free_port)"; device="$(free_port)"
    mkdir -p "$WORK/$name"
    MOBIUS_BACKBONE_LISTEN="127.0.0.1:$backbone" MOBIUS_BACKBONE_DOMAIN="$DOMAIN" \
    MOBIUS_MASTER_KEY="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" MOBIUS_LOG_FILTER=warn,mobius_server=info \
        "$BIN/mobius-server" serve --data-dir "$WORK/$name" --listen "127.0.0.1:$admin" \
        --device-listen "127.0.0.1:$device" --database-url "$DB_URL" --log-format json \
        >"$WORK/$name.log" 2>&1 &
    NODE_PID=$!; PIDS+=("$NODE_PID")
    for _ in $(seq 1 400); do grep -qs '"admin API listening"' "$WORK/$name.log" && break; sleep 0.05; done
    grep -q '"admin API listening"' "$WORK/$name.log" || die "server $name did not start: $(tail -5 "$WORK/$name.log")"
    NODE_ADMIN="$admin"; NODE_BACKBONE="$backbone"
}

log "starting backbone node A on Postgres ($DB)"
start_node a
A_PID="$NODE_PID"; A_ADMIN="$NODE_ADMIN"; A_BB="$NODE_BACKBONE"
CODE="$(grep -o '"setup_code":"[^"]*"' "$WORK/a.log" | head -1 | cut -d'"' -f4)"
ACCESS="$(curl -sf "http://127.0.0.1:$A_ADMIN/api/graphql" -H 'content-type: application/json' \
    -d "$(jq -nc --arg c "$CODE" '{query:"mutation($i: SetupInput!) { setup(input: $i) { accessToken } }",variables:{i:{code:$c,email:"bench@example.com",password:"correct horse battery staple",displayName:"Bench"}}}')" \
    | jq -r '.data.setup.accessToken')"
[[ -n "$ACCESS" && "$ACCESS" != null ]] || die "setup failed"
TOKEN="$(curl -sf "http://127.0.0.1:$A_BB/admin/api/tokens" -H "host: $DOMAIN" -H "authorization: Bearer $ACCESS" \
    -H 'content-type: application/json' -d '{"service_name":"myapp"}' | jq -r .token)"
log "starting backbone node B"
start_node b
B_PID="$NODE_PID"; B_BB="$NODE_BACKBONE"

# One parked connection per node: the latency figures go through exactly one.
MOBIUS_TUNNEL_TOKEN="$TOKEN" "$BIN/mobius-agent" tunnel --server "http://127.0.0.1:$A_BB,http://127.0.0.1:$B_BB" \
    --service myapp --to "http://127.0.0.1:$TARGET_PORT" --connections 1 2>"$WORK/agent.log" & PIDS+=($!)
for _ in $(seq 1 200); do
    n="$(curl -s "http://127.0.0.1:$A_BB/healthz" | jq -r .parked_connections)"
    [[ "$n" == 1 ]] && break; sleep 0.05
done
[[ "$n" == 1 ]] || die "the agent did not park on node A"

RH_PORT=""
RH_PID=""
if [[ -n "$RATHOLE" ]]; then
    RH_CTRL="$(free_port)"; RH_PORT="$(free_port)"
    cat >"$WORK/rathole-server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$RH_CTRL"
[server.services.myapp]
token = "bench"
bind_addr = "127.0.0.1:$RH_PORT"
EOF
    cat >"$WORK/rathole-client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$RH_CTRL"
[client.services.myapp]
token = "bench"
local_addr = "127.0.0.1:$TARGET_PORT"
EOF
    "$RATHOLE" --server "$WORK/rathole-server.toml" >"$WORK/rathole-server.log" 2>&1 & RH_PID=$!; PIDS+=($!)
    "$RATHOLE" --client "$WORK/rathole-client.toml" >"$WORK/rathole-client.log" 2>&1 & PIDS+=($!)
    wait_port "$RH_PORT"
    sleep 1
fi

RESULTS="$WORK/results.jsonl"
record() { # path scenario json
    jq -c --arg p "$1" --arg s "$2" '. + {path:$p, scenario:$s}' <<<"$3" >>"$RESULTS"
}
url_of() {
    case "$1" in
        direct) echo "http://127.0.0.1:$TARGET_PORT" ;;
        backbone) echo "http://127.0.0.1:$A_BB" ;;
        rathole) echo "http://127.0.0.1:$RH_PORT" ;;
    esac
}
PATHS=(direct backbone)
[[ -n "$RH_PORT" ]] && PATHS+=(rathole)
HOST="myapp.$DOMAIN"

for rate in 1000 4000; do
    for p in "${PATHS[@]}"; do
        log "latency: $p at $rate/s for $SECS s"
        "$BENCH" load "$(url_of "$p")/" "$HOST" 200 2 >/dev/null   # warm the connections
        record "$p" "load_$rate" "$("$BENCH" load "$(url_of "$p")/" "$HOST" "$rate" "$SECS")"
    done
done
for p in "${PATHS[@]}"; do
    log "max: $p, 64 concurrent, $MAX_SECS s"
    record "$p" max "$("$BENCH" max "$(url_of "$p")/" "$HOST" "$MAX_SECS" 64)"
done
log "transfer: $TRANSFER bytes down and up through the backbone"
record backbone transfer "$("$BENCH" transfer "$(url_of backbone)" "$HOST" "$TRANSFER" "$A_PID")"
if [[ -n "$RH_PID" ]]; then
    log "transfer: $TRANSFER bytes through rathole"
    record rathole transfer "$("$BENCH" transfer "$(url_of rathole)" "$HOST" "$TRANSFER" "$RH_PID")"
fi
log "websocket: $WS_SECS s through the backbone"
record backbone ws "$("$BENCH" ws "ws://127.0.0.1:$A_BB/ws" "$HOST" "$WS_SECS")"

log "failover: killing node A under a probing client"
"$BENCH" probe "http://127.0.0.1:$A_BB/" "http://127.0.0.1:$B_BB/" "$HOST" 30 >"$WORK/probe.json" &
PROBE=$!
sleep 2
kill -9 "$A_PID"
wait "$PROBE" || true
record backbone failover "$(cat "$WORK/probe.json")"

log "writing $OUT/performance.json and $OUT/performance.md"
python3 "$ROOT/tests/bench/tunnel_report.py" "$RESULTS" "$OUT" "$SCALE" "$SECS" "$MAX_SECS" "$TRANSFER" "$WS_SECS" "${RATHOLE:-}" "$PROFILE"
