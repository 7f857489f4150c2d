#!/usr/bin/env python3
"""Writes the figures of one tests/bench/replicas.sh run into
OUT/performance.json (its keys only: idle_agents_held, server_rss_bytes_idle,
replicas, replicas_*) and OUT/performance.md (between the
<!-- replicas:begin --> and <!-- replicas:end --> markers).

Usage: replicas_report.py WORK OUT SCALE REPRODUCE AGENTS REPLICAS HOLD LOADGENS
                          HAPROXIES HAPROXY_MAXCONN FD_LIMIT HB_SECS CLK_TCK SERVER_BIN
"""

import datetime
import glob
import json
import os
import subprocess
import sys

(WORK, OUT, SCALE, REPRODUCE, AGENTS, REPLICAS, HOLD, LOADGENS, HAPROXIES, HAPROXY_MAXCONN,
 FD_LIMIT, HB_SECS, CLK_TCK, SERVER_BIN) = sys.argv[1:15]
AGENTS, REPLICAS, HOLD, LOADGENS, HAPROXIES = map(int, (AGENTS, REPLICAS, HOLD, LOADGENS, HAPROXIES))
HAPROXY_MAXCONN, FD_LIMIT, HB_SECS, CLK_TCK = map(int, (HAPROXY_MAXCONN, FD_LIMIT, HB_SECS, CLK_TCK))
RESULTS = os.path.join(WORK, "results")


def load(path):
    with open(path) as f:
        return json.load(f)


def phase(report, name):
    return next((p for p in report["phases"] if p["phase"] == name), None)


def read(name, default=None):
    try:
        with open(os.path.join(WORK, name)) as f:
            return f.read().strip()
    except OSError:
        return default


samples = [json.loads(line) for line in open(os.path.join(RESULTS, "samples.jsonl"))]


def sample(name):
    return next((s for s in reversed(samples) if s["name"] == name), None)


def rss_sum(s):
    return sum(r["rss"] for r in s["replicas"])


def merge_errors(phases):
    out = {}
    for p in phases:
        for kind, n in (p or {}).get("errors_by_kind", {}).items():
            out[kind] = out.get(kind, 0) + n
    return out


enrolls = [load(p) for p in sorted(glob.glob(os.path.join(RESULTS, "enroll-*.json")))]
streams = [load(p) for p in sorted(glob.glob(os.path.join(RESULTS, "streams-*.json")))]
enrolled = sum(phase(e, "enroll")["ok"] for e in enrolls)
enroll_errors = sum(phase(e, "enroll")["errors"] for e in enrolls)
enroll_secs = float(read("results/enroll_secs", "0"))
opened = sum(phase(s, "stream-connect")["ok"] for s in streams)
open_errors = sum(phase(s, "stream-connect")["errors"] for s in streams)
held = sum(phase(s, "stream-hold")["connections_held"] for s in streams)
hold_errors = sum(phase(s, "stream-hold")["errors"] for s in streams)
hold_secs = min(phase(s, "stream-hold")["duration_secs"] for s in streams)
errors_by_kind = merge_errors([phase(s, "stream-connect") for s in streams]
                              + [phase(s, "stream-hold") for s in streams])
connect_p99 = max(phase(s, "stream-connect")["latency_ms"]["p99"] for s in streams)
open_secs = float(read("results/open_secs", "0"))

rest, after_enroll, opened_s, held_s = sample("rest"), sample("enrolled"), sample("opened"), sample("held")
rss_held = rss_sum(held_s)
per_replica_rss = [r["rss"] for r in held_s["replicas"]]
per_replica_conn = [r["established"] for r in held_s["replicas"]]
hold_cpu_s = sum(h["cpu_ticks"] - o["cpu_ticks"] for h, o in zip(held_s["replicas"], opened_s["replicas"])) / CLK_TCK
hold_wall = held_s["at"] - opened_s["at"]

hb_open = load(os.path.join(RESULTS, "heartbeat-open.json"))
hb_closed = load(os.path.join(RESULTS, "heartbeat-closed.json"))
hbo, hbc = phase(hb_open, "heartbeat"), phase(hb_closed, "heartbeat")
before_hb, after_open, after_closed = sample("before-heartbeat"), sample("after-heartbeat-open"), sample("after-heartbeat-closed")


def cores(a, b):
    return sum(y["cpu_ticks"] - x["cpu_ticks"] for x, y in zip(a["replicas"], b["replicas"])) / CLK_TCK / (b["at"] - a["at"])


# When the streams were last sampled held (the report can be rewritten later).
measured_at = datetime.datetime.fromtimestamp(held_s["at"], datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
figures = {
    "replicas": REPLICAS,
    "idle_agents_held": held,
    "server_rss_bytes_idle": rss_held,
    "replicas_agents_asked": AGENTS,
    "replicas_agents_enrolled": enrolled,
    "replicas_streams_opened": opened,
    "replicas_hold_secs": round(hold_secs, 1),
    "replicas_stream_errors": open_errors + hold_errors,
    "replicas_rss_bytes_per_agent": round(rss_held / held) if held else None,
    "replicas_rss_growth_bytes_per_agent": round((rss_held - rss_sum(after_enroll)) / held) if held else None,
    "replicas_haproxy_rss_bytes": held_s["haproxy_rss"],
    "replicas_hold_server_cores": round(hold_cpu_s / hold_wall, 3) if hold_wall > 0 else None,
    "replicas_enroll_per_s": round(enrolled / enroll_secs, 1) if enroll_secs else None,
    "replicas_streams_open_secs": open_secs,
    "replicas_heartbeat_offered_per_s": hbo.get("offered_per_s"),
    "replicas_heartbeat_per_s": hbo["throughput_per_s"],
    "replicas_heartbeat_p99_ms": hbo["latency_ms"]["p99"],
    "replicas_heartbeat_errors": hbo["errors"],
    "replicas_heartbeat_capacity_per_s": hbc["throughput_per_s"],
    "replicas_heartbeat_capacity_errors": hbc["errors"],
    "replicas_scale": SCALE,
    "replicas_measured_at": measured_at,
}

path = os.path.join(OUT, "performance.json")
data = json.load(open(path)) if os.path.exists(path) else {}
data.update(figures)
with open(path, "w") as f:
    json.dump(data, f, indent=2)
    f.write("\n")


def mib(b):
    return f"{b / 2**20:,.0f} MiB"


def kb(b):
    return f"{b / 1000:.1f} KB"


held_met = held >= 100000 and open_errors + hold_errors == 0 and hold_secs >= 300
rss_met = rss_held / max(held, 1) <= 32000
if AGENTS < 100000:
    verdict = f"not measured at 100,000 (a {SCALE} run of {AGENTS:,})"
else:
    verdict = (f"{held:,} held for {hold_secs:.0f} s with {open_errors + hold_errors:,} errors: "
               f"{'met' if held_met else 'not met'}; ≤ 32 KB per agent: "
               f"{'met' if rss_met else 'not met'} ({rss_held / max(held, 1) / 1000:.1f} KB)")
errors_text = ", ".join(f"{n:,} {k}" for k, n in sorted(errors_by_kind.items())) or "none"
nproc = os.cpu_count()
try:
    version = subprocess.run([SERVER_BIN, "--version"], capture_output=True, text=True).stdout.strip()
except OSError:
    version = "mobius-server"
commit = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "--short", "HEAD"],
                        capture_output=True, text=True).stdout.strip()
def kinds(p):
    return ", ".join(f"{n:,} {k}" for k, n in sorted(p.get("errors_by_kind", {}).items())) or "none"


hb_cores_open = cores(before_hb, after_open)
hb_cores_closed = cores(after_open, after_closed)

lines = [
    "## Idle agents across replicas",
    "",
    f"Measured {measured_at} by `{REPRODUCE}` ({SCALE}; {version}, release build, commit {commit}), "
    f"on this machine's {nproc} cores shared with other work (load average "
    f"{read('loadavg_before', '?')} before, {read('loadavg_after', '?')} after): one number per figure from one run.",
    "",
    f"{REPLICAS} `mobius-server serve --role api` replicas on one Postgres database, behind one address: "
    f"{HAPROXIES} HAProxy processes (TCP passthrough, `balance leastconn`, bound to the same address with "
    f"SO_REUSEPORT, at most {HAPROXY_MAXCONN:,} connections each since HAProxy needs two descriptors per "
    f"connection and the open-file limit is {FD_LIMIT:,} per process, not raised); mutual TLS ends at the replicas. "
    f"{LOADGENS} `mobius-loadgen streams` processes open one push stream "
    f"(`GET /api/v1/mobius/device/work/stream`) per agent from 127.0.0.2 onwards, wait until every process is done, "
    f"then hold them all together, reading the keep-alive frames (every 15 s); a stream counts as held if it is "
    f"open and heard a frame in the last 35 s at the end of the hold. Each HAProxy process connects to the "
    f"replicas from its own 127.1.H.I source addresses: the first 100,000-agent attempt let the kernel pick "
    f"HAProxy's source ports on 127.0.0.1 and stopped at 84,903 held connections, HAProxy logging "
    f"\"Connect() failed for backend replicas: no free ports\" 65,390 times (the simulator's bound sockets "
    f"hold the same per-port bind buckets that connect() draws from).",
    "",
    "| figure | measured | target |",
    "|---|--:|---|",
    f"| agents enrolled (once, reused by every phase) | {enrolled:,} of {AGENTS:,} in {enroll_secs:.0f} s "
    f"({figures['replicas_enroll_per_s']}/s, {enroll_errors:,} errors) | |",
    f"| streams opened | {opened:,} in {open_secs:.0f} s (slowest p99 per process {connect_p99:,.0f} ms) | |",
    f"| **streams held** for {hold_secs:.0f} s | **{held:,}** | 100,000 for 5 minutes |",
    f"| errors (open and hold) | {open_errors + hold_errors:,} ({errors_text}) | 0 |",
    f"| connections per replica at the end (`ss`) | {min(per_replica_conn):,}–{max(per_replica_conn):,} | under the limit of {FD_LIMIT:,} |",
    f"| RSS per replica at the end | {mib(min(per_replica_rss))}–{mib(max(per_replica_rss))} | |",
    f"| **RSS summed over replicas / agents held** | **{kb(rss_held / max(held, 1))}** "
    f"({mib(rss_held)} / {held:,}) | ≤ 32 KB per agent |",
    f"| RSS growth from before the streams / agents held | {kb((rss_held - rss_sum(after_enroll)) / max(held, 1))} "
    f"(replicas at {mib(rss_sum(rest))} fresh, {mib(rss_sum(after_enroll))} after enrolling) | |",
    f"| replicas' CPU while holding | {figures['replicas_hold_server_cores']} cores | |",
    f"| HAProxy RSS, all processes | {mib(held_s['haproxy_rss'])} | |",
    f"| heartbeats through the balancer, open loop ({hbo['agents']:,} agents, {HB_SECS} s) | "
    f"{hbo['throughput_per_s']:,.0f}/s of {hbo.get('offered_per_s') or 0:,.0f}/s offered (what {AGENTS:,} agents send "
    f"at the default 30 s interval), p99 {hbo['latency_ms']['p99']:.1f} ms, {hbo['errors']:,} errors, replicas "
    f"{hb_cores_open:.2f} cores | |",
    f"| heartbeat capacity, closed loop ({hbc['agents']:,} agents, {HB_SECS} s) | "
    f"{hbc['throughput_per_s']:,.0f}/s, p99 {hbc['latency_ms']['p99']:.1f} ms, {hbc['errors']:,} errors, replicas "
    f"{hb_cores_closed:.2f} cores | |",
    "",
    f"Heartbeat errors by kind: open loop {kinds(hbo)}; closed loop {kinds(hbc)} (each failed beat "
    f"drops its connection and the next opens a new one, as the agent's client does). \"operation was canceled\" "
    f"is a beat sent on a kept-alive connection the replica was closing; the likely cause, not investigated "
    f"further, is the replicas closing connections idle for `client_read_timeout_secs` (10 s) while the other "
    f"agents were still connecting, which is also shorter than the default 30 s heartbeat interval.",
    "",
    f"Verdict: {verdict}. Heartbeats ran after the hold (the streams closed), each simulated agent on its own "
    f"kept-alive connection through the balancer; the closed-loop capacity is bounded by the {nproc} cores the "
    f"simulator, HAProxy, the replicas and Postgres share.",
]
table = "\n".join(lines)

md = os.path.join(OUT, "performance.md")
text = open(md).read() if os.path.exists(md) else ""
begin, end = "<!-- replicas:begin -->", "<!-- replicas:end -->"
block = f"{begin}\n{table}\n{end}"
if begin in text and end in text:
    text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
with open(md, "w") as f:
    f.write(text)
print(json.dumps(figures, indent=2))
