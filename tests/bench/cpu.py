#!/usr/bin/env python3
"""Prints the CPU seconds (user + system) Postgres has used so far for one
database: its backends (their process title names the database) plus the
cluster's background processes (WAL writer, checkpointer, autovacuum...),
which work for every database. Backends of other databases on the same
cluster (a test run, say) are left out.

Usage: cpu.py DATABASE. The benchmark takes it before and after each
scenario to tell Postgres's share of the machine."""

import os
import sys

TICKS = os.sysconf("SC_CLK_TCK")
BACKGROUND = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum",
    "logical replication",
    "stats collector",
)


def cpu_seconds(database: str) -> float:
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended meanwhile
        if stat[stat.index("(") + 1 : stat.rindex(")")] != "postgres":
            continue
        title = title.removeprefix("postgres: ")
        # With cluster_name set (Debian sets it), the title starts "15/main: ".
        head, sep, rest = title.partition(": ")
        if sep and " " not in head:
            title = rest
        words = title.split()
        # A backend's title is "USER DATABASE HOST(PORT) STATE".
        ours = len(words) >= 2 and words[1] == database
        if not ours and not title.startswith(BACKGROUND):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # utime and stime: fields 14 and 15 of the line.
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: cpu.py DATABASE")
    print(f"{cpu_seconds(sys.argv[1]):.2f}")
