#!/usr/bin/env python3
"""Runs a command and writes, as one JSON object, the CPU seconds it and the processes around
it used meanwhile: `cpu_of.py OUT GATEWAY_PIDS WORKER_PIDS -- COMMAND...` (pids comma-separated,
either may be empty). The command's own output passes through; its exit status is returned.

Groups: `load` (the command and its children), `gateway`, `workers` (the pids given),
`rabbitmq` (every beam.smp: the broker's Erlang VM), `postgres` (every postgres process,
counting the CPU of backends that ended meanwhile: the postmaster reaps them, and their time
becomes its children's time). Linux only (/proc)."""
import json
import os
import resource
import subprocess
import sys

TICK = os.sysconf("SC_CLK_TCK")


def ticks(pid, with_children=False):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2:].split()
    used = int(fields[11]) + int(fields[12])  # utime, stime
    if with_children:
        used += int(fields[13]) + int(fields[14])  # cutime, cstime (reaped children)
    return used


def command_name(pid):
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


def snapshot(gateways, workers):
    used = {"gateway": 0, "workers": 0, "rabbitmq": 0, "postgres": 0}
    for pid in gateways:
        used["gateway"] += ticks(pid)
    for pid in workers:
        used["workers"] += ticks(pid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        name = command_name(entry)
        if name.startswith("beam"):
            used["rabbitmq"] += ticks(entry)
        elif name == "postgres":
            used["postgres"] += ticks(entry, with_children=True)
    return used


def pids(text):
    return [pid for pid in text.split(",") if pid]


def main():
    out, gateways, workers, dash, *command = sys.argv[1:]
    if dash != "--" or not command:
        sys.exit(__doc__)
    gateways, workers = pids(gateways), pids(workers)
    before = snapshot(gateways, workers)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    status = subprocess.call(command)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = snapshot(gateways, workers)
    seconds = {group: (after[group] - before[group]) / TICK for group in after}
    seconds["load"] = (children_after.ru_utime + children_after.ru_stime
                       - children_before.ru_utime - children_before.ru_stime)
    with open(out, "w") as file:
        json.dump(seconds, file)
    sys.exit(status)


main()
