#!/usr/bin/env bash
# tests/run.sh: the project's one test command.
#
# It makes sure a PostgreSQL server is available, exports
# MOBIUS_TEST_DATABASE_URL (a superuser URL for the `postgres` database) and
# builds the binaries and runs `cargo test --workspace --locked --no-fail-fast "$@"` from the repository root. The
# exit status is cargo's. Run `tests/run.sh --help` for details.
#
# Why a script and not plain `cargo test`: the Rust test harness creates one
# database (and roles) per test on a real Postgres, and it must never skip
# those tests quietly because no server happened to be around.

set -euo pipefail

readonly PROG="tests/run.sh"
readonly OS_USER="mobius-pg"      # unprivileged user for the throwaway cluster when run as root
readonly FIRST_PORT=55432         # throwaway clusters probe upward from here
readonly PORT_ATTEMPTS=50

usage() {
    cat <<'EOF'
Usage: tests/run.sh [extra args for `cargo test`]

Runs `cargo test --workspace --locked --no-fail-fast [extra args]` from the repository root
with MOBIUS_TEST_DATABASE_URL pointing at a PostgreSQL superuser. The
PostgreSQL server is found in this order:

  1. MOBIUS_TEST_DATABASE_URL, if already set, is used as is. It must be a
     superuser URL, e.g. postgres://postgres:secret@db.example:5432/postgres
     (checked with psql when psql is installed; the script fails if it does
     not answer).
  2. A server on 127.0.0.1:5432 accepting user `postgres` without a password
     (trust auth): postgres://postgres@127.0.0.1:5432/postgres.
  3. A throwaway cluster started from the installed PostgreSQL binaries
     (initdb/pg_ctl from the highest /usr/lib/postgresql/<ver>/bin, else
     PATH) on a free port from 55432 up, in a temporary directory. It is
     stopped and deleted when the script exits, also on failure or Ctrl-C.
     When run as root, the cluster runs as the system user `mobius-pg`
     (created if missing), because PostgreSQL refuses to run as root.

If none works, the script explains how to get a PostgreSQL and exits 2.

Environment:
  MOBIUS_TEST_DATABASE_URL      use this server (step 1)
  MOBIUS_TEST_FORCE_THROWAWAY=1 skip step 2 (to exercise step 3 on a machine
                                that runs a server on 5432); an explicit
                                MOBIUS_TEST_DATABASE_URL still wins
  MOBIUS_TEST_PG_BINDIR=DIR     look for initdb/pg_ctl only in DIR
  CARGO_TARGET_DIR              respected as usual (never set here)

Examples:
  tests/run.sh
  tests/run.sh -p mobius-core
  tests/run.sh -- --nocapture
EOF
}

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
    usage
    exit 0
fi

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# Show a connection string without its password: user:secret@ becomes
# user:***@, and a password=... query parameter or keyword/value pair (libpq
# also accepts "host=... password=...") becomes password=***.
redact() {
    printf '%s' "$1" | sed -E \
        -e 's#^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@?]*):[^@/?]*@#\1:***@#' \
        -e 's#([?&]password=)[^&]*#\1***#g' \
        -e "s#(^|[[:space:]])password[[:space:]]*=[[:space:]]*('[^']*'|[^[:space:]]*)#\\1password=***#g"
}

# The repository root, computed from this script's own location so the
# script works from any working directory.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Don't let a stray psqlrc, a password prompt or an unreachable host make the
# probes below hang or behave differently.
export PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-5}"

# ---------------------------------------------------------------------------
# Locating PostgreSQL programs
# ---------------------------------------------------------------------------

# Directories holding server binaries (initdb and pg_ctl), best first:
# MOBIUS_TEST_PG_BINDIR alone if set; otherwise the Debian/Ubuntu layout
# (/usr/lib/postgresql/<ver>/bin) and the PGDG RPM layout (/usr/pgsql-<ver>/bin)
# by descending version, then whatever is on PATH.
server_bindirs() {
    if [[ -n "${MOBIUS_TEST_PG_BINDIR:-}" ]]; then
        printf '%s\n' "$MOBIUS_TEST_PG_BINDIR"
        return
    fi
    local dir
    # (An unmatched glob stays literal; the -d test skips it.)
    for dir in /usr/lib/postgresql/*/bin /usr/pgsql-*/bin; do
        if [[ -d "$dir" ]]; then printf '%s\n' "$dir"; fi
    done | sort -V -r
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

# Prints the first directory that has both initdb and pg_ctl.
find_server_bindir() {
    local dir
    while IFS= read -r dir; do
        if [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done < <(server_bindirs)
    return 1
}

# Client tools (psql, pg_isready): PATH first, then the server bin dirs, which
# on Debian also hold them even when postgresql-client-common is missing.
find_client() {
    local name="$1" dir
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return 0
    fi
    while IFS= read -r dir; do
        if [[ -x "$dir/$name" ]]; then
            printf '%s\n' "$dir/$name"
            return 0
        fi
    done < <(server_bindirs)
    return 1
}

PSQL="$(find_client psql || true)"
PG_ISREADY="$(find_client pg_isready || true)"

# psql_q ARGS...: runs a one-line probe query quietly and unaligned;
# -X ignores ~/.psqlrc, -w never prompts for a password (no stdin in CI).
psql_q() { "$PSQL" -X -w -q -At "$@"; }

# ---------------------------------------------------------------------------
# Throwaway cluster (step 3): state and cleanup
# ---------------------------------------------------------------------------

PG_TMPDIR=""     # temporary directory holding data dir, socket and log
PG_BINDIR=""
RUN_AS=()        # command prefix that runs a program as the cluster's owner

# shellcheck disable=SC2317  # invoked indirectly (trap / RUN_AS)
cleanup() {
    local rc=$?
    if [[ -n "$PG_TMPDIR" ]]; then
        if [[ -f "$PG_TMPDIR/data/postmaster.pid" ]]; then
            # Immediate: the data is thrown away anyway, and open test
            # connections must not delay the exit.
            "${RUN_AS[@]}" "$PG_BINDIR/pg_ctl" -D "$PG_TMPDIR/data" -m immediate -w stop \
                >/dev/null 2>&1 || log "warning: could not stop the throwaway cluster in $PG_TMPDIR"
        fi
        rm -rf -- "$PG_TMPDIR" || log "warning: could not remove $PG_TMPDIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
# On a signal, exit with the conventional status; the EXIT trap then stops the
# cluster. (While cargo runs in the foreground, bash handles the signal once
# cargo has exited; Ctrl-C reaches cargo directly through the terminal.)
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# True if something accepts TCP connections on 127.0.0.1:$1.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Arrange RUN_AS so initdb/pg_ctl do not run as root, creating the system user
# if needed. PostgreSQL refuses to start as root.
setup_run_as() {
    RUN_AS=()
    [[ "$(id -u)" -eq 0 ]] || return 0
    if ! id -u "$OS_USER" >/dev/null 2>&1; then
        log "creating system user $OS_USER to own the throwaway cluster (PostgreSQL refuses to run as root)"
        useradd --system --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin "$OS_USER" >&2 || return 1
    fi
    if command -v runuser >/dev/null 2>&1; then
        RUN_AS=(runuser -u "$OS_USER" --)
    else
        RUN_AS=(run_as_with_su)
    fi
}

# Fallback for systems without runuser: su with an explicit shell, since the
# user's login shell is nologin.
# shellcheck disable=SC2317  # invoked indirectly (trap / RUN_AS)
run_as_with_su() {
    su -s /bin/sh "$OS_USER" -c "$(printf '%q ' "$@")"
}

# Starts the throwaway cluster; on success sets URL and prints progress.
start_throwaway() {
    if ! PG_BINDIR="$(find_server_bindir)"; then
        local searched
        searched="$(server_bindirs | paste -sd ' ' -)"
        log "found no directory with both initdb and pg_ctl (searched: ${searched:-/usr/lib/postgresql/*/bin, /usr/pgsql-*/bin and PATH, all empty})"
        return 1
    fi
    setup_run_as || return 1

    local started_ns
    started_ns="$(date +%s%N)"

    # The cluster owner must be able to reach the directory; /tmp always works
    # when a custom TMPDIR (e.g. under /root) is not reachable by mobius-pg.
    local base="${TMPDIR:-/tmp}"
    PG_TMPDIR="$(mktemp -d "$base/mobius-pg.XXXXXX")" || return 1
    if [[ ${#RUN_AS[@]} -gt 0 ]]; then
        chown "$OS_USER" "$PG_TMPDIR" || return 1
        if ! "${RUN_AS[@]}" test -w "$PG_TMPDIR"; then
            rm -rf -- "$PG_TMPDIR"
            PG_TMPDIR="$(mktemp -d /tmp/mobius-pg.XXXXXX)" || return 1
            chown "$OS_USER" "$PG_TMPDIR" || return 1
        fi
    fi

    # Run the server programs from inside the temporary directory: the
    # unprivileged user may not be allowed into the current directory.
    # UTF8 with the C.UTF-8 locale matches a default Debian cluster; fall back
    # to plain C where that locale does not exist.
    local locale=C
    if locale -a 2>/dev/null | grep -qiE '^c\.utf-?8$'; then
        locale=C.UTF-8
    fi
    if ! (cd "$PG_TMPDIR" && "${RUN_AS[@]}" "$PG_BINDIR/initdb" -D "$PG_TMPDIR/data" \
            -A trust -U postgres --no-sync -E UTF8 --locale="$locale" \
            >"$PG_TMPDIR/initdb.log" 2>&1); then
        log "initdb failed:"
        sed 's/^/    /' "$PG_TMPDIR/initdb.log" >&2
        return 1
    fi

    # Probe for a free port; if another process grabs it between the probe
    # and the bind, try the next one. Durability settings are off because the
    # data is thrown away; many connections because tests run in parallel.
    local port=$FIRST_PORT attempt
    for ((attempt = 0; attempt < PORT_ATTEMPTS; attempt++, port++)); do
        port_in_use "$port" && continue
        : >"$PG_TMPDIR/server.log"
        if [[ ${#RUN_AS[@]} -gt 0 ]]; then
            chown "$OS_USER" "$PG_TMPDIR/server.log" || return 1
        fi
        if (cd "$PG_TMPDIR" && "${RUN_AS[@]}" "$PG_BINDIR/pg_ctl" -D "$PG_TMPDIR/data" \
                -l "$PG_TMPDIR/server.log" -w -t 60 \
                -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_TMPDIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
                start >"$PG_TMPDIR/pg_ctl.log" 2>&1); then
            URL="postgres://postgres@127.0.0.1:$port/postgres"
            local ms=$((($(date +%s%N) - started_ns) / 1000000))
            local version
            version="$("$PG_BINDIR/pg_ctl" --version 2>/dev/null | sed 's/^pg_ctl (PostgreSQL) //')"
            log "using Postgres at 127.0.0.1:$port (started a throwaway cluster, PostgreSQL ${version:-?} from $PG_BINDIR, in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s; removed on exit)"
            return 0
        fi
        if grep -q 'Address already in use' "$PG_TMPDIR/server.log" 2>/dev/null; then
            continue
        fi
        log "the throwaway cluster did not start; pg_ctl and server log:"
        cat "$PG_TMPDIR/pg_ctl.log" "$PG_TMPDIR/server.log" | sed 's/^/    /' >&2
        return 1
    done
    log "no free port found in $FIRST_PORT..$((FIRST_PORT + PORT_ATTEMPTS - 1))"
    return 1
}

no_postgres() {
    cat >&2 <<EOF
$PROG: no PostgreSQL could be found or started, so the tests cannot run.
The tests need a PostgreSQL superuser. Any one of these works:
  - set MOBIUS_TEST_DATABASE_URL to a superuser URL, e.g.
      MOBIUS_TEST_DATABASE_URL=postgres://postgres:PASSWORD@HOST:5432/postgres tests/run.sh
  - run a server on 127.0.0.1:5432 that lets user "postgres" in without a
    password (trust authentication), or
  - install the PostgreSQL server binaries so this script can start a
    throwaway cluster by itself, e.g. \`apt-get install postgresql\` on
    Debian/Ubuntu (initdb and pg_ctl are looked for in
    /usr/lib/postgresql/<version>/bin, /usr/pgsql-<version>/bin and PATH).
EOF
    exit 2
}

# ---------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------

URL=""

if [[ -n "${MOBIUS_TEST_DATABASE_URL:-}" ]]; then
    # Step 1: an explicit URL is used as is, but checked when we can, so that a
    # typo fails here with a clear message instead of in every test.
    URL="$MOBIUS_TEST_DATABASE_URL"
    shown="$(redact "$URL")"
    if [[ -n "$PSQL" ]]; then
        if ! answer="$(psql_q "$URL" -c 'show is_superuser' 2>&1)"; then
            log "MOBIUS_TEST_DATABASE_URL ($shown) does not answer:"
            printf '%s\n' "$answer" | sed 's/^/    /' >&2
            exit 2
        fi
        if [[ "$answer" != "on" ]]; then
            log "MOBIUS_TEST_DATABASE_URL ($shown) answers, but not as a superuser;"
            log "the test harness creates databases and roles, so it needs one."
            exit 2
        fi
    else
        log "psql not found, so MOBIUS_TEST_DATABASE_URL is not checked before running the tests"
    fi
    log "using Postgres at $shown (from MOBIUS_TEST_DATABASE_URL)"
elif [[ "${MOBIUS_TEST_FORCE_THROWAWAY:-}" != "1" ]] \
        && [[ -n "$PSQL" ]] \
        && { [[ -z "$PG_ISREADY" ]] || "$PG_ISREADY" -q -h 127.0.0.1 -p 5432 -t 3; } \
        && psql_q -h 127.0.0.1 -p 5432 -U postgres -d postgres -c 'select 1' >/dev/null 2>&1; then
    # Step 2: a developer's (or CI service's) server with trust auth.
    URL="postgres://postgres@127.0.0.1:5432/postgres"
    log "using Postgres at 127.0.0.1:5432 (already running)"
else
    if [[ "${MOBIUS_TEST_FORCE_THROWAWAY:-}" == "1" ]]; then
        log "MOBIUS_TEST_FORCE_THROWAWAY=1: not looking at 127.0.0.1:5432"
    elif [[ -n "$PSQL" && -n "$PG_ISREADY" ]] && "$PG_ISREADY" -q -h 127.0.0.1 -p 5432 -t 3; then
        # Typical for Debian's packaged cluster, which asks for a password.
        log "a Postgres answers on 127.0.0.1:5432 but refused user postgres without a password; starting a throwaway cluster instead"
    fi
    # Step 3.
    if ! start_throwaway; then
        no_postgres
    fi
fi

export MOBIUS_TEST_DATABASE_URL="$URL"

# ---------------------------------------------------------------------------
# The tally
# ---------------------------------------------------------------------------

# The arguments for the test binaries among ours (those after `--`), so
# that listing a binary's tests applies the filters the run applied.
harness_args() {
    local arg seen=0 out=()
    for arg in "$@"; do
        if [[ $seen -eq 1 ]]; then
            out+=("$arg")
        elif [[ "$arg" == "--" ]]; then
            seen=1
        fi
    done
    if [[ ${#out[@]} -gt 0 ]]; then printf '%q ' "${out[@]}"; fi
}

# tally FILE ARGS...: totals cargo's output in FILE over every test binary
# as `tests: N passed, M failed, K skipped`. Summing the "test result:"
# lines alone misses a binary that never printed one, because it crashed,
# aborted or panicked outside a test: its tests would be neither passed nor
# failed. Such a binary counts the tests it did not report passing or
# ignored as failed (out of those it announced with "running N tests", else
# those it lists with --list), and at least one; so does a binary that
# printed its result but then exited unsuccessfully.
tally() {
    local file="$1"
    shift
    LIST_ARGS="$(harness_args "$@")" awk '
        function quoted(s) { gsub(/\047/, "\047\\\047\047", s); return "\047" s "\047" }
        # How many tests the binary lists (0 if it cannot even do that).
        function listed(exe,   command, line, n) {
            if (exe == "") return 0
            command = quoted(exe) " --list " ENVIRON["LIST_ARGS"] " 2>/dev/null"
            while ((command | getline line) > 0) if (line ~ /: test$/) n++
            close(command)
            return n
        }
        # The binary in progress ended without its "test result:" line.
        function settle(   left) {
            if (!open) return
            left = (announced >= 0 ? announced : listed(exe)) - ok - ignored
            p += ok; s += ignored; f += (left >= 1 ? left : 1)
            incomplete++
            open = 0; completed = 0
        }
        function start(path) {
            settle()
            open = 1; exe = path; announced = -1; ok = 0; ignored = 0
        }
        /^ +Running / {
            start(match($0, /\(.*\)$/) ? substr($0, RSTART + 1, RLENGTH - 2) : "")
            next
        }
        /^ +Doc-tests / { start(""); next }
        /^running [0-9]+ tests?$/ { if (open) announced = $2; next }
        /^test .* \.\.\. ok$/ { ok++; next }
        /^test .* \.\.\. ignored(, .*)?$/ { ignored++; next }
        /^test result:/ {
            failed_here = 0
            for (i = 1; i <= NF; i++) {
                if ($(i+1) ~ /^passed;?$/) p += $i
                if ($(i+1) ~ /^failed;?$/) { f += $i; failed_here += $i }
                if ($(i+1) ~ /^ignored;?$/) s += $i
            }
            open = 0; completed = 1
            next
        }
        # cargo names a binary that exited unsuccessfully.
        /process didn.t exit successfully: / {
            if (open) settle()
            else if (completed && failed_here == 0) { f++; incomplete++ }
            completed = 0
            next
        }
        END {
            settle()
            printf "\ntests: %d passed, %d failed, %d skipped", p, f, s
            if (incomplete) printf " (%d test binar%s did not complete)", incomplete, incomplete == 1 ? "y" : "ies"
            printf "\n"
        }' "$file"
}

# ---------------------------------------------------------------------------
# Run the tests
# ---------------------------------------------------------------------------

cd "$ROOT"
# Not exec: the EXIT trap must stop the throwaway cluster after cargo ends.
status=0
# The end-to-end tests run the real binaries (target/debug/mobius-server,
# mobius-server-cloud); `cargo test` alone builds bin targets only in test
# mode, so build them first. The real peers some tests start (an OpenID
# provider, a KMS emulator, an SMTP server) are installed first if missing;
# without them those tests fail, never skip.
bash tests/peers/install.sh || status=$?
[[ $status -eq 0 ]] && { cargo build --workspace --bins --locked || status=$?; }
if [[ $status -eq 0 ]]; then
    # Keep a copy of the output to total the test binaries' results (see
    # tally): cargo's own last line is the (empty) doc-test run of the last
    # crate, which says nothing about the whole.
    results="$(mktemp)"
    set +e
    cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$results"
    status=${PIPESTATUS[0]}
    set -e
    tally "$results" "$@"
    rm -f "$results"
fi
exit "$status"
