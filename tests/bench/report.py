#!/usr/bin/env python3
"""Writes docs/performance.md and docs/performance.json from one run of
tests/bench/run.sh.

Usage: report.py WORK_DIR OUT_DIR

WORK_DIR/results holds one mobius-loadgen JSON report per scenario
(NAME.json) and the CPU seconds Postgres spent for this database during it
(NAME.pg). run.sh exports the run's parameters as BENCH_* variables; the
machine is described from here (nproc, free, /proc/cpuinfo, uname, rustc,
psql). Nothing is estimated: every figure is read from those reports, and
a scenario that ran smaller than its target says so.
"""

import datetime
import json
import os
import subprocess
import sys

env = os.environ.get
WORK, OUT = sys.argv[1], sys.argv[2]
RESULTS = os.path.join(WORK, "results")


def sh(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load(name: str) -> dict:
    with open(os.path.join(RESULTS, f"{name}.json")) as f:
        report = json.load(f)
    with open(os.path.join(RESULTS, f"{name}.pg")) as f:
        report["postgres_cpu_seconds"] = float(f.read().strip() or 0)
    return report


def phase(report: dict, name: str) -> dict:
    """The last phase called `name` (an earlier one may have enrolled
    agents the identities file lacked)."""
    matches = [p for p in report["phases"] if p["phase"] == name]
    if not matches:
        raise SystemExit(f"no {name} phase in the report: {report}")
    return matches[-1]


def n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def mib(b: int) -> str:
    return f"{b / 1048576:,.0f} MiB"


def errors_text(p: dict) -> str:
    if not p["errors"]:
        return "0 errors"
    kinds = "; ".join(f"{k}: {v:,}" for k, v in p["errors_by_kind"].items())
    return f"{p['errors']:,} errors ({kinds})"


NPROC = int(sh("nproc") or 1)


def cpu_split(p: dict, postgres_seconds=None) -> str:
    """Where the cores went during a phase."""
    secs = p["duration_secs"] or 1
    parts = []
    if p.get("server"):
        parts.append(f"server {p['server']['cpu_seconds'] / secs:.2f}")
    if postgres_seconds is not None:
        parts.append(f"Postgres {postgres_seconds / secs:.2f}")
    if p.get("loadgen_cpu_seconds") is not None:
        parts.append(f"simulator {p['loadgen_cpu_seconds'] / secs:.2f}")
    busy = p.get("machine_cpu_busy_fraction")
    text = ", ".join(parts) + " cores"
    if busy is not None:
        text += f"; machine {busy * 100:.0f}% busy ({busy * NPROC:.2f} of {NPROC} cores)"
    return text


def cpu_bound(p: dict) -> bool:
    return (p.get("machine_cpu_busy_fraction") or 0) >= 0.9


req = lambda key: float(env(f"BENCH_{key}", "0"))  # noqa: E731
fd_limit = int(env("BENCH_FD_LIMIT", "0"))
max_connections = int(env("BENCH_MAX_CONNECTIONS", "0"))
try:
    measured_at = open(os.path.join(WORK, "measured_at")).read().strip()
except OSError:
    measured_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

enroll_r, idle_r, latency_r = load("enroll"), load("idle"), load("latency")
heartbeat_r, baseline_r = load("heartbeat"), load("baseline")
cap_hb_r, cap_base_r = load("capacity-heartbeat"), load("capacity-baseline")
reconnect_r = load("reconnect")

enroll = phase(enroll_r, "enroll")
idle_connect, idle = phase(idle_r, "connect"), phase(idle_r, "idle")
latency = phase(latency_r, "heartbeat")
heartbeat = phase(heartbeat_r, "heartbeat")
baseline = phase(baseline_r, "baseline")
cap_hb, cap_base = phase(cap_hb_r, "heartbeat"), phase(cap_base_r, "baseline")
reconnect = phase(reconnect_r, "reconnect")
# One plan to every connected agent (optional: older work directories lack it).
fanout_r = load("plan-fanout") if os.path.exists(os.path.join(RESULTS, "plan-fanout.json")) else None
fanout = phase(fanout_r, "plan-fanout") if fanout_r else None
fanout_streams = phase(fanout_r, "stream-connect") if fanout_r else None

# Postgres CPU is known per scenario (all its phases); apportion nothing,
# report it against the scenario's measured phase only when that phase is
# most of the scenario (enroll and the long heartbeat runs).
pg = {name: r["postgres_cpu_seconds"] for name, r in
      [("enroll", enroll_r), ("heartbeat", heartbeat_r), ("latency", latency_r)]}

figures = {
    "enroll_per_s": enroll["throughput_per_s"],
    "heartbeat_per_s": heartbeat["throughput_per_s"],
    "heartbeat_p99_ms_at_3500": latency["latency_ms"]["p99"],
    "idle_agents_held": idle["connections_held"],
    "server_rss_bytes_idle": idle["server"]["rss_bytes"],
    "baseline_per_s": baseline["throughput_per_s"],
    # Until the last agent was answered (null if none was); all served only
    # if reconnect_served equals reconnect_agents.
    "reconnect_secs": reconnect.get("last_served_secs"),
    "reconnect_errors": reconnect["errors"],
    "reconnect_agents": reconnect["agents"],
    "reconnect_served": reconnect["ok"],
    "measured_at": measured_at,
}
if fanout:
    # Seconds from applyPlan until 99% / 100% of executions were SUCCEEDED
    # (acknowledged by the server).
    figures["plan_fanout_p99_s"] = round(fanout["latency_ms"]["p99"] / 1000, 3)
    figures["plan_fanout_all_s"] = round(fanout["latency_ms"]["max"] / 1000, 3)
    figures["plan_fanout_agents"] = fanout["agents"]
    figures["plan_fanout_succeeded"] = fanout["ok"]
    figures["plan_fanout_server_cpu_s"] = (fanout.get("server") or {}).get("cpu_seconds")
    figures["plan_fanout_postgres_cpu_s"] = fanout_r["postgres_cpu_seconds"]
    held = max(fanout_streams["ok"], 1)
    figures["push_stream_server_bytes_per_agent"] = round(
        (fanout_streams["server"]["rss_bytes"] - fanout_streams["server"]["rss_start_bytes"]) / held)

ratio = heartbeat["throughput_per_s"] / baseline["throughput_per_s"] if baseline["throughput_per_s"] else 0
cap_ratio = cap_hb["throughput_per_s"] / cap_base["throughput_per_s"] if cap_base["throughput_per_s"] else 0
rss_per_agent = (idle["server"]["rss_bytes"] - idle_connect["server"]["rss_start_bytes"]) / max(idle["connections_held"], 1)

# --- verdicts ---------------------------------------------------------------


def verdict(met: bool, full_size: bool, why_small: str = "") -> str:
    if met and full_size:
        return "**met**"
    if met:
        return f"met at reduced size ({why_small})"
    return "**missed**"


enroll_full = enroll["duration_secs"] >= 60
hb_full = heartbeat["duration_secs"] >= 300 and heartbeat["agents"] >= 100000
idle_full = idle["connections_held"] >= 100000
# Asked for more connections than the open-file limit allows.
idle_capped = req("IDLE_AGENTS") > max_connections
# The target's size is the largest agent count the machine allows.
reconnect_full = reconnect["agents"] >= min(100000, max_connections)
reconnect_all_served = reconnect["ok"] == reconnect["agents"]
reconnect_secs = reconnect.get("last_served_secs")
reconnect_met = (reconnect_all_served and reconnect["errors"] == 0
                 and reconnect_secs is not None and reconnect_secs <= 60)
try:
    restart_secs = float(open(os.path.join(WORK, "restart_secs")).read().strip())
except (OSError, ValueError):
    restart_secs = None


def duration_text(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def reconnect_text(p: dict) -> str:
    lat = p["latency_ms"]
    last = (f"the last after {p['last_served_secs']:.2f} s" if p.get("last_served_secs") is not None
            else "none")
    return (f"{p['ok']:,} of {p['agents']:,} served, {last} (p50 {duration_text(lat['p50'])}, "
            f"p99 {duration_text(lat['p99'])}), {errors_text(p)}")


rows = [
    ("enrollments", "≥ 1,000/s for 60 s, 0 errors",
     f"{n(enroll['throughput_per_s'], 1)}/s for {enroll['duration_secs']:.0f} s, {errors_text(enroll)}",
     verdict(enroll["throughput_per_s"] >= 1000 and enroll["errors"] == 0, enroll_full,
             f"{enroll['duration_secs']:.0f} s")),
    ("heartbeats", "≥ 7,000/s for 5 min, 0 errors (100,000 agents at 15 s)",
     f"{n(heartbeat['throughput_per_s'], 1)}/s for {heartbeat['duration_secs']:.0f} s over "
     f"{heartbeat['agents']:,} agents, {errors_text(heartbeat)}",
     verdict(heartbeat["throughput_per_s"] >= 7000 and heartbeat["errors"] == 0, hb_full,
             f"{heartbeat['agents']:,} agents, {heartbeat['duration_secs']:.0f} s")),
    ("heartbeat latency", "p99 ≤ 25 ms at 3,500/s",
     f"p99 {latency['latency_ms']['p99']:.2f} ms at {n(latency['throughput_per_s'], 1)}/s "
     f"({latency['agents']:,} agents), {errors_text(latency)}",
     verdict(latency["latency_ms"]["p99"] <= 25 and latency["errors"] == 0
             and latency["throughput_per_s"] >= 0.98 * req("LATENCY_RATE"), True)),
    ("idle agents held", "100,000 connected; server RSS ≤ 3.2 GB (≤ 32 KB per agent)",
     f"{idle['connections_held']:,} held; server RSS {mib(idle['server']['rss_bytes'])} "
     f"({rss_per_agent / 1000:.1f} KB per added connection)",
     verdict(idle["server"]["rss_bytes"] <= 3.2e9, True) if idle_full
     else f"**missed**: {idle['connections_held']:,} held, bounded by open files (memory per connection within target)"
     if idle_capped
     else verdict(rss_per_agent <= 32000 and idle["errors"] == 0, False,
                  f"{idle['connections_held']:,} agents")),
    ("heartbeat vs baseline", "≥ 60% of baseline throughput, same run",
     f"{ratio * 100:.0f}% at the same offered rate ({n(heartbeat['throughput_per_s'], 1)} vs "
     f"{n(baseline['throughput_per_s'], 1)}/s); {cap_ratio * 100:.0f}% of capacity "
     f"({n(cap_hb['throughput_per_s'], 1)} vs {n(cap_base['throughput_per_s'], 1)}/s closed loop)",
     verdict(ratio >= 0.6 and cap_ratio >= 0.6, True)),
    ("reconnect after restart", "all served ≤ 60 s, 0 errors (the most agents the machine allows, at once, "
     "facts on the first ping)",
     reconnect_text(reconnect),
     verdict(reconnect_met, reconnect_full, f"{reconnect['agents']:,} agents")),
]

if fanout:
    fanout_full = fanout["agents"] >= min(10000, max_connections // 2)
    rows.append((
        "plan fan-out", "99% SUCCEEDED ≤ 2 s, all ≤ 5 s (one plan, 10,000 connected agents)",
        f"99% in {figures['plan_fanout_p99_s']:.2f} s, all {fanout['ok']:,} of {fanout['agents']:,} in "
        f"{figures['plan_fanout_all_s']:.2f} s, {errors_text(fanout)}; server "
        f"{figures['plan_fanout_server_cpu_s'] or 0:.1f} CPU s, Postgres "
        f"{figures['plan_fanout_postgres_cpu_s']:.1f} CPU s (whole scenario); held streams cost "
        f"{figures['push_stream_server_bytes_per_agent'] / 1000:.1f} KB of server RSS each",
        verdict(figures["plan_fanout_p99_s"] <= 2 and figures["plan_fanout_all_s"] <= 5
                and fanout["errors"] == 0, fanout_full, f"{fanout['agents']:,} agents")))

# --- what bounds each figure -------------------------------------------------

bounds = []
if not (enroll["throughput_per_s"] >= 1000 and enroll["errors"] == 0):
    text = (f"**Enrollments** ({n(enroll['throughput_per_s'], 1)}/s): during the phase "
            f"{cpu_split(enroll, pg['enroll'])}.")
    if cpu_bound(enroll):
        text += " The machine was CPU-bound."
    else:
        text += (" The machine was not CPU-bound, so enrollments wait on something other than "
                 "cores: see 'Analysis' at the end.")
    bounds.append(text)
if not (heartbeat["throughput_per_s"] >= 7000 and heartbeat["errors"] == 0):
    bounds.append(f"**Heartbeats** ({n(heartbeat['throughput_per_s'], 1)}/s offered "
                  f"{n(heartbeat.get('offered_per_s') or 0, 1)}/s): {cpu_split(heartbeat, pg['heartbeat'])}"
                  + (". CPU-bound." if cpu_bound(heartbeat) else "."))
if not idle_full and idle_capped:
    bounds.append(
        f"**Idle agents** ({idle['connections_held']:,} of {int(req('IDLE_AGENTS')):,} asked): bounded by "
        f"the open-file limit. Each connection is a descriptor in the server and one in the "
        f"simulator, and this machine's hard limit is {fd_limit:,} per process (`ulimit -Hn`; "
        f"raising it is refused here even as root), so the benchmark holds at most "
        f"{max_connections:,} connections (the limit less 500 for the processes' own files). "
        f"Memory is not the bound: the server grew {rss_per_agent / 1000:.1f} KB per connection, "
        f"so 100,000 would take about {rss_per_agent * 100000 / 1e9:.2f} GB plus its "
        f"{mib(idle_connect['server']['rss_start_bytes'])} at rest.")
if latency["latency_ms"]["p99"] > 25 or latency["errors"]:
    bounds.append(f"**Latency at 3,500/s** (p99 {latency['latency_ms']['p99']:.2f} ms): "
                  f"{cpu_split(latency, pg['latency'])}.")
if ratio < 0.6 or cap_ratio < 0.6:
    bounds.append(f"**Heartbeat vs baseline**: heartbeat capacity {cpu_split(cap_hb)}; "
                  f"baseline capacity {cpu_split(cap_base)}.")
if not reconnect_met:
    bounds.append(f"**Reconnect** ({reconnect_text(reconnect)}): {cpu_split(reconnect)}"
                  + (". CPU-bound." if cpu_bound(reconnect) else "."))
if heartbeat["agents"] < 100000 and req("AGENTS") > max_connections:
    bounds.append(
        f"**Heartbeat shape**: the target's 100,000 agents at 15 s needs 100,000 connections; this "
        f"machine allows {max_connections:,} (open files, as above), so the same rate is offered "
        f"by {heartbeat['agents']:,} agents each beating every "
        f"{heartbeat['agents'] / (heartbeat.get('offered_per_s') or 1):.2f} s. Per request the "
        f"server does the same work; it holds fewer idle connections meanwhile (their cost is "
        f"the idle figure).")

# --- markdown ---------------------------------------------------------------


def latency_row(name: str, p: dict, note: str = "", unpaced: str = "closed loop") -> str:
    lat = p["latency_ms"]
    offered = f"{n(p['offered_per_s'], 1)}" if p.get("offered_per_s") else unpaced
    server = p.get("server") or {}
    return (f"| {name} | {p['agents']:,} | {p['duration_secs']:.0f} | {offered} | "
            f"{n(p['throughput_per_s'], 1)} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | "
            f"{lat['max']:.2f} | {p['errors']:,} | {server.get('cpu_seconds', 0) / (p['duration_secs'] or 1):.2f} | "
            f"{mib(server.get('rss_bytes', 0))} |{note}")


scale = env("BENCH_SCALE", "full")


def recorded(name: str, fallback) -> str:
    """What run.sh recorded during the run, else the state now."""
    try:
        return open(os.path.join(WORK, name)).read().strip()
    except OSError:
        return fallback()


commit = recorded("commit", lambda: sh("git", "-C", env("BENCH_ROOT", "."), "rev-parse", "--short", "HEAD"))
dirty = recorded("dirty", lambda: str(len(sh("git", "-C", env("BENCH_ROOT", "."), "status", "--porcelain",
                                             "--untracked-files=no").splitlines()))) not in ("", "0")
free = recorded("free", lambda: sh("free", "-h")).splitlines()
load_before = recorded("loadavg_before", lambda: "not recorded")
load_after = recorded("loadavg_after", lambda: " ".join(open("/proc/loadavg").read().split()[:3]))
cpu_model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                  if line.startswith("model name")), "unknown")
postgres_version = sh("psql", "-X", "-w", "-At", env("BENCH_ADMIN_URL", ""), "-c", "SELECT version()")

md = f"""# Performance

Measured by `{env('BENCH_REPRODUCE', 'tests/bench/run.sh')}` on {measured_at} (scale `{scale}`).
Server, Postgres and the simulator (`mobius-loadgen`) ran together on one
machine, as the targets require. To reproduce, from the repository root with
a Postgres superuser at `MOBIUS_TEST_DATABASE_URL` (default
`postgres://postgres@127.0.0.1:5432/postgres`):

```sh
{env('BENCH_REPRODUCE', 'tests/bench/run.sh')}
```

## Results

| scenario | target | measured | verdict |
|---|---|---|---|
""" + "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows) + f"""

The same figures are in `performance.json`.

## What bounds the figures

""" + ("\n\n".join(f"- {b}" for b in bounds) if bounds else "Every target is met.") + f"""

## Machine

| | |
|---|---|
| cores (`nproc`) | {NPROC} |
| CPU | {cpu_model} |
| memory (`free -h`) | {' '.join(free[1].split()[1:2]) if len(free) > 1 else 'unknown'} total, {free[1].split()[6] if len(free) > 1 and len(free[1].split()) > 6 else '?'} available at the end |
| kernel | {sh('uname', '-sr')} |
| open files per process | {fd_limit:,} (hard limit) |
| ephemeral ports | {open('/proc/sys/net/ipv4/ip_local_port_range').read().split()[0]}–{open('/proc/sys/net/ipv4/ip_local_port_range').read().split()[1]} per source address |
| load average (1, 5, 15 min) | {load_before} before the scenarios, {load_after} at the end (the run's own processes count; so does other work sharing the machine) |
| rustc | {sh('rustc', '--version')} |
| Postgres | {postgres_version.split(',')[0] if postgres_version else 'unknown'} (default settings) |
| mobius | {sh(env('BENCH_SERVER_BIN', 'mobius-server'), '--version')}, commit {commit}{' with uncommitted changes' if dirty else ''}, release build |

## Method

`mobius-loadgen` simulates agents the way `mobius-agent` behaves: each has its
own ECDSA P-256 key and CSR and enrolls through the real
`POST /api/v1/mobius/device/enroll` with a multi-use token (a new TLS
connection per enrollment, no session resumption), then keeps one mutual-TLS
HTTP/1.1 connection open and heartbeats with `POST /api/mobius/device/ping`
(a `PingRequest`, host facts on the first ping only). Connections come from
loopback source addresses 127.0.0.2 onwards so that ephemeral ports never
bound them. Heartbeats are open loop: each agent's beats fall due on the clock
(interval ±10% jitter, first beat at a random point of the first interval),
latency counts from when a beat was due, and beats a slow server left unsent
are counted as errors; so a slow server shows up as latency and errors, never
as a quietly lower send rate. Latencies are recorded in an HDR histogram (1 µs
to 1 h, 3 significant digits). Server CPU is user+system time from
`/proc/PID/stat` over the measured phase; RSS is `VmRSS` from
`/proc/PID/status`. Postgres CPU is the time of this database's backends
plus the cluster's background processes over the whole scenario.

Each scenario is one `mobius-loadgen` run: a connect phase (every agent
opens its connection and sends its first request, 64 at a time) and then the
measured phase; in the reconnect scenario the connecting, all at once, is
what is measured. The server is the release build with default settings
(`MOBIUS_HEARTBEAT_INTERVAL_SECS=15`, JSON logs at `info` to a file) on a fresh
database; agents enrolled by the first scenario are reused by the others.

1. **enroll**: {int(req('ENROLL_CONCURRENCY'))} enrollments in flight for {req('ENROLL_SECS'):.0f} s.
2. **idle**: {idle['agents']:,} agents connect (one `HEAD` ping each, proving
   the server accepted the certificate) and stay idle {req('IDLE_HOLD_SECS'):.0f} s;
   connections still open and the server's RSS at the end.
3. **latency**: {latency['agents']:,} agents at {req('LATENCY_RATE'):,.0f} heartbeats/s for {req('LATENCY_SECS'):.0f} s.
4. **heartbeat**: {heartbeat['agents']:,} agents at {req('HEARTBEAT_RATE'):,.0f} heartbeats/s for {req('HEARTBEAT_SECS'):.0f} s.
5. **baseline**: the same agents and rate with `HEAD /api/mobius/device/ping`,
   which the server answers from the client certificate and memory alone: what
   the transport costs. {req('BASELINE_SECS'):.0f} s.
6. **capacity**: heartbeat and baseline closed loop (each agent sends again as
   soon as it is answered) for {req('CAPACITY_SECS'):.0f} s each: the most each
   endpoint serves here. Latency in these runs is queueing, not service time.
7. **reconnect**: the server stops (SIGTERM) and starts again on the same
   database and addresses{f" (back in {restart_secs:.1f} s)" if restart_secs is not None else ""}; then
   {reconnect['agents']:,} enrolled agents are released at the same moment, each
   opening its connection (full TLS handshake) and sending its first ping with
   its facts, once, within a 30 s request timeout as the agent's. Latency counts
   from that moment for every agent, so its maximum is when the last was served.

## Figures

| run | agents | s | offered/s | answered/s | p50 ms | p90 ms | p99 ms | max ms | errors | server cores | server RSS |
|---|---|---|---|---|---|---|---|---|---|---|---|
{latency_row('enroll', enroll)}
{latency_row('idle: connect', idle_connect)}
{latency_row('latency', latency)}
{latency_row('heartbeat', heartbeat)}
{latency_row('baseline', baseline)}
{latency_row('capacity: heartbeat', cap_hb)}
{latency_row('capacity: baseline', cap_base)}
{latency_row('reconnect', reconnect, unpaced='all at once')}

- Enrollment: {errors_text(enroll)}; {cpu_split(enroll, pg['enroll'])}.
- Idle: {idle['connections_held']:,} connections held after {idle['duration_secs']:.0f} s idle ({errors_text(idle)});
  server RSS {mib(idle_connect['server']['rss_start_bytes'])} before connecting,
  {mib(idle['server']['rss_bytes'])} holding them (peak {mib(idle['server']['peak_rss_bytes'])} since start).
- Latency: {cpu_split(latency)}.
- Heartbeat: {errors_text(heartbeat)}; {cpu_split(heartbeat, pg['heartbeat'])}.
- Baseline: {errors_text(baseline)}; {cpu_split(baseline)}.
- Reconnect: {reconnect_text(reconnect)}; {cpu_split(reconnect)}.
- Heartbeat/baseline throughput at the same offered rate: **{ratio * 100:.0f}%**;
  at capacity (closed loop): **{cap_ratio * 100:.0f}%**
  ({n(cap_hb['throughput_per_s'], 1)} vs {n(cap_base['throughput_per_s'], 1)} per second;
  heartbeat {cpu_split(cap_hb)}; baseline {cpu_split(cap_base)}).
"""

notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "analysis.md")
if os.path.exists(notes):
    md += "\n" + open(notes).read().strip() + "\n"

os.makedirs(OUT, exist_ok=True)
# tests/bench/tunnel.sh, tests/bench/replicas.sh and tests/bench/queries.sh write their own figures
# (tunnel_*, rathole_* and direct_max_rps keys; replicas, replicas_* and, once it ran, idle_agents_held and
# server_rss_bytes_idle summed over replicas; live_query_* and osquery_*) and sections (between their
# <!-- NAME:begin --> and <!-- NAME:end --> markers) into the same two files;
# a run of this benchmark keeps them rather than wiping them.
KEPT_SECTIONS = (
    ("tunnel", "## Backbone tunnel"),
    ("replicas", "## Idle agents across replicas"),
    ("queries", "## Live queries and osquery polling"),
)


def kept_section(path, name, heading):
    try:
        text = open(path).read()
    except FileNotFoundError:
        return None
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin in text and end in text and text.index(begin) < text.index(end):
        block = text[text.index(begin):text.index(end) + len(end)]
        # The heading may sit just above the markers (older files).
        return block if heading in block else f"{heading}\n\n{block}"
    return None


def kept_figures(path):
    try:
        old = json.load(open(path))
    except (FileNotFoundError, ValueError):
        return {}
    kept = {k: v for k, v in old.items() if k.startswith(("tunnel_", "rathole_", "direct_max_rps", "replicas", "live_query_", "osquery_"))}
    if "replicas" in old:
        # The idle figures are the replicas benchmark's (100,000
        # agents over replicas); this single-server run's go beside them.
        for key in ("idle_agents_held", "server_rss_bytes_idle"):
            if key in old:
                kept[key] = old[key]
    return kept


for name, heading in KEPT_SECTIONS:
    section = kept_section(os.path.join(OUT, "performance.md"), name, heading)
    if section:
        md += "\n" + section + "\n"
kept = kept_figures(os.path.join(OUT, "performance.json"))
if "replicas" in kept:
    for key in ("idle_agents_held", "server_rss_bytes_idle"):
        figures[f"single_server_{key}"] = figures.pop(key)
figures.update({k: v for k, v in kept.items() if k not in figures})
with open(os.path.join(OUT, "performance.md"), "w") as f:
    f.write(md)
with open(os.path.join(OUT, "performance.json"), "w") as f:
    json.dump(figures, f, indent=2)
    f.write("\n")
