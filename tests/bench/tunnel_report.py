#!/usr/bin/env python3
"""Writes the figures of one tests/bench/tunnel.sh run (its results.jsonl)
into OUT/performance.json (tunnel_* and rathole_* keys) and OUT/performance.md
(between the <!-- tunnel:begin --> and <!-- tunnel:end --> markers). Run by
tunnel.sh; again by hand on a kept work directory (--keep) to rewrite the
report from the same results.

Usage: tunnel_report.py RESULTS OUT SCALE SECS MAX_SECS TRANSFER WS_SECS RATHOLE PROFILE
"""
import json, os, sys, datetime, subprocess
results, out, scale, secs, max_secs, transfer, ws_secs, rathole, profile = sys.argv[1:10]
rows = [json.loads(l) for l in open(results)]
def get(path, scenario):
    return next((r for r in rows if r["path"] == path and r["scenario"] == scenario), None)
def f(v, digits=2):
    return "n/a" if v is None else f"{v:.{digits}f}"
figures = {}
for rate in (1000, 4000):
    d, b, r = get("direct", f"load_{rate}"), get("backbone", f"load_{rate}"), get("rathole", f"load_{rate}")
    figures[f"tunnel_added_p50_ms_at_{rate}"] = round(b["p50_ms"] - d["p50_ms"], 3)
    figures[f"tunnel_added_p99_ms_at_{rate}"] = round(b["p99_ms"] - d["p99_ms"], 3)
    if r:
        figures[f"rathole_added_p50_ms_at_{rate}"] = round(r["p50_ms"] - d["p50_ms"], 3)
        figures[f"rathole_added_p99_ms_at_{rate}"] = round(r["p99_ms"] - d["p99_ms"], 3)
figures["tunnel_max_rps"] = round(get("backbone", "max")["rps"], 1)
figures["direct_max_rps"] = round(get("direct", "max")["rps"], 1)
if get("rathole", "max"):
    figures["rathole_max_rps"] = round(get("rathole", "max")["rps"], 1)
t = get("backbone", "transfer")
figures["tunnel_transfer_bytes"] = t["bytes"]
figures["tunnel_download_mib_s"] = round(t["download_mib_s"], 1)
figures["tunnel_upload_mib_s"] = round(t["upload_mib_s"], 1)
figures["tunnel_transfer_rss_growth_mib"] = round(t["rss_growth_mib"], 1)
rt = get("rathole", "transfer")
if rt:
    figures["rathole_download_mib_s"] = round(rt["download_mib_s"], 1)
    figures["rathole_upload_mib_s"] = round(rt["upload_mib_s"], 1)
w = get("backbone", "ws")
figures["tunnel_websocket_secs"] = round(w["secs"], 1)
figures["tunnel_websocket_errors"] = w["errors"]
fo = get("backbone", "failover")
figures["tunnel_failover_s"] = None if fo["failover_s"] is None else round(fo["failover_s"], 4)
figures["tunnel_build_profile"] = profile
# When the last result was written (the report can be rewritten later).
figures["tunnel_measured_at"] = datetime.datetime.fromtimestamp(
    os.path.getmtime(results), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

path = os.path.join(out, "performance.json")
data = json.load(open(path)) if os.path.exists(path) else {}
data.update(figures)
with open(path, "w") as fh:
    json.dump(data, fh, indent=2)
    fh.write("\n")

lines = []
lines.append(f"Measured {figures['tunnel_measured_at']} by `tests/bench/tunnel.sh` ({scale}), "
             f"{profile} builds of mobius-server and mobius-agent, everything on this machine over 127.0.0.1 in plain HTTP "
             f"(the load client, server, agent, rathole and the target share {os.cpu_count()} cores), "
             f"one parked connection.")
lines.append("")
lines.append("| figure | direct | backbone | rathole |")
lines.append("|---|--:|--:|--:|")
def cell(p, scen, key, digits=2):
    r = get(p, scen)
    if r is None:
        return "not built" if p == "rathole" and not rathole else "n/a"
    return f(r.get(key), digits)
for rate in (1000, 4000):
    for q in ("p50", "p99"):
        lines.append(f"| {q} latency at {rate:,}/s ({secs} s, open loop), ms | "
                     + " | ".join(cell(p, f"load_{rate}", f"{q}_ms", 3) for p in ("direct", "backbone", "rathole")) + " |")
    lines.append(f"| errors at {rate:,}/s | " + " | ".join(cell(p, f"load_{rate}", "errors", 0) for p in ("direct", "backbone", "rathole")) + " |")
lines.append(f"| max requests/s (64 clients, {max_secs} s) | " + " | ".join(cell(p, "max", "rps", 0) for p in ("direct", "backbone", "rathole")) + " |")
gib = int(transfer) / 2**30
lines.append(f"| {gib:g} GiB download, MiB/s | - | " + cell("backbone", "transfer", "download_mib_s", 0) + " | " + cell("rathole", "transfer", "download_mib_s", 0) + " |")
lines.append(f"| {gib:g} GiB upload, MiB/s | - | " + cell("backbone", "transfer", "upload_mib_s", 0) + " | " + cell("rathole", "transfer", "upload_mib_s", 0) + " |")
lines.append(f"| tunnel server RSS growth during the transfers, MiB | - | " + cell("backbone", "transfer", "rss_growth_mib", 1) + " | " + cell("rathole", "transfer", "rss_growth_mib", 1) + " |")
lines.append(f"| WebSocket echoing every 100 ms: seconds, errors | - | {f(w['secs'], 0)} s, {w['errors']} errors | - |")
lines.append(f"| fail-over, 2 nodes, one killed: first failure to first success, s | - | {f(fo['failover_s'], 4)} | - |")
lines.append("")
def added(key):
    v = figures.get(key)
    if v is None:
        return "n/a"
    return f"+{v}" if v >= 0 else f"{v} (below direct: the run's noise exceeds the tunnel's cost)"
lines.append(f"Added latency over direct (target: p50 ≤ 1 ms, p99 ≤ 5 ms), one run each: "
             f"backbone p50 {added('tunnel_added_p50_ms_at_1000')} / p99 {added('tunnel_added_p99_ms_at_1000')} ms at 1,000/s, "
             f"p50 {added('tunnel_added_p50_ms_at_4000')} / p99 {added('tunnel_added_p99_ms_at_4000')} ms at 4,000/s"
             + (f"; rathole p50 {added('rathole_added_p50_ms_at_4000')} / p99 {added('rathole_added_p99_ms_at_4000')} ms at 4,000/s."
                if 'rathole_added_p99_ms_at_4000' in figures else "."))
load = " ".join(open("/proc/loadavg").read().split()[:3])
lines.append("")
lines.append(f"The machine was shared with other sessions compiling (load average {load} when the report was written, "
             f"on {os.cpu_count()} cores): the paths ran one after the other, so a p99 reflects what else ran during its "
             f"{secs} s as much as the path; compare p50s and the maximum rates, and read p99s as an upper bound. "
             f"Fail-over: the agent is parked on both nodes; the client switches to node B at A's first failure, "
             f"so the figure is how soon B serves, not a reconnection.")
table = "\n".join(lines)

md = os.path.join(out, "performance.md")
text = open(md).read() if os.path.exists(md) else ""
begin, end = "<!-- tunnel:begin -->", "<!-- tunnel:end -->"
block = f"{begin}\n{table}\n{end}"
if begin in text and end in text:
    text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n## Backbone tunnel\n\n" + block + "\n"
open(md, "w").write(text)
print(json.dumps(figures, indent=2))
