"""The class day's report (benchmarks/classday.py): figures of each run,
side by side, and the issue's targets as met / NOT met lines."""

from __future__ import annotations

import re
import statistics
import subprocess
from datetime import datetime

GiB = 1024**3
TARGET_LATENCY = 1.5  # well-behaved p95 <= 1.5x solo
TARGET_SPAWN = 3.0  # spawn p95 in the wave <= 3x a single spawn


def culls(hub_log):
    """[(login, why)] of the servers stopped by the hub's culling or memory
    pressure (classroomhub) or by jupyterhub-idle-culler (stock)."""
    found = re.findall(r"Stopping server '[^']*' of (cd\w+): (.*)", hub_log)
    found += re.findall(r"Culling server (cd\w+)\S* \((.*)\)", hub_log)
    return found


def host_oom_kills(since):
    """OOM kills of the host itself (not inside a memory cgroup's limit) in
    the kernel log after uptime *since*; None if the log cannot be read."""
    try:
        text = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    count = 0
    for line in text.splitlines():
        m = re.match(r"\[\s*([\d.]+)\] oom-kill:constraint=(\w+),", line)
        if m and float(m.group(1)) >= since and m.group(2) != "CONSTRAINT_MEMCG":
            count += 1
    return count


def kill_reasons(hub_log):
    """``{login: [why, ...]}``: each kill or shut-down of a student's
    kernel the hub logged, and why (classroomhub only: the stock hub does
    not know)."""
    found = {}
    for count, login, where in re.findall(r"OOM: (\d+) process\(es\) of (cd\w+) \(.*?\) killed at the (memory limit|servers' memory budget)", hub_log):
        why = "OOM at own limit" if where == "memory limit" else "OOM at the budget"
        found.setdefault(login, []).extend([why] * int(count))
    for login, idle in re.findall(r"shutting down kernel \S+ of (cd\w+), idle for (\d+) s", hub_log):
        found.setdefault(login, []).append(f"idle {idle} s, shut down for memory")
    return found


def spawn_phases(hub_log, logins):
    """Median seconds of each phase of the spawns of *logins*, from the hub's
    log: hub (the request until ClassroomSpawner starts the process: login
    page, classroom sync, make_room), start (until the server's log shows its
    URL: Python importing jupyter_server and JupyterLab), ready (until the hub
    marks it ready and adds the route)."""
    stamp = r"\[\w (\d+-\d+-\d+ \d+:\d+:\d+\.\d+)"

    def times(pattern):
        out = {}
        for when, login in re.findall(stamp + pattern, hub_log):
            out.setdefault(login, datetime.strptime(when, "%Y-%m-%d %H:%M:%S.%f").timestamp())
        return out

    requested = times(r" JupyterHub log:\d+\] 302 POST /hub/login -> /hub/spawn \((cd\w+)@")
    launched = times(r" JupyterHub spawner:\d+\] ClassroomSpawner: (cd\w+) \(")
    listening = times(r" ServerApp\] http://127\.0\.0\.1:\d+/user/(cd\w+)/")
    # a server ready within the spawn page's wait is "already started"
    ready = times(r" JupyterHub users:\d+\] Server (cd\w+) is (?:ready|already started)")
    phases = {"hub": [], "start": [], "ready": []}
    for login in logins:
        if login in requested and login in listening and login in ready:
            launch = launched.get(login, requested[login])  # stock: no line of its own
            phases["hub"].append(launch - requested[login])
            phases["start"].append(listening[login] - launch)
            phases["ready"].append(ready[login] - listening[login])
    return {k: statistics.median(v) if v else float("nan") for k, v in phases.items()}


# -- the report -------------------------------------------------------------------


def mib_pair(sample, prefix=""):
    """``RSS / PSS MiB`` of a pss_sample (of its kernels: *prefix* ``kernel_``)."""
    if not sample:
        return "-"
    count = f" ({sample[prefix.rstrip('_') + 's']})" if prefix else ""
    return f"{sample[prefix + 'rss'] / 2**20:.0f} / {sample[prefix + 'pss'] / 2**20:.0f} MiB{count}"


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


def figures(run):
    res = run.results
    solo = res.get(run.solo, {"cells": [], "spawn": None})
    solo_by_cell = {}
    for kind, k, seconds, status in solo["cells"]:
        if status == "ok":
            solo_by_cell.setdefault(k, []).append(seconds)
    solo_median = {k: statistics.median(v) for k, v in solo_by_cell.items()}
    well = [p.login for p in run.plans if p.role == "well"]
    class_lat, solo_lat = [], []
    failed_cells = 0
    for login in well:
        for kind, k, seconds, status in res[login]["cells"]:
            if status != "ok":
                failed_cells += 1
                continue
            class_lat.append(seconds)
            if k in solo_median:
                solo_lat.append(solo_median[k])
    spawns = [r["spawn"] for login, r in res.items() if login != run.solo and r["spawn"] is not None]
    roles = {p.login: p.role for p in run.plans}
    killed = {}
    for login, r in res.items():
        if "student" in r and r["student"].kernel_deaths:
            killed[login] = r["student"].kernel_deaths
    # the cgroups' own counters: a server group per student (classroomhub), the
    # budget's folder itself (stock: its servers sit directly in it)
    oom_who = sorted(name for name, count in run.oom_counts.items() if count and name)
    oom_count = sum(run.oom_counts.values())
    reasons = kill_reasons(run.hub_log_text)
    shut_down = sorted(login for login, why in reasons.items() if any("shut down" in w for w in why))
    hogs = sorted(p.login for p in run.plans if p.role == "hog")
    innocents = sorted({*killed, *(w for w in oom_who if w in roles)} - set(hogs))
    failed_logins = sum(1 for r in res.values() if any(f.startswith("login") for f in r["failed"]))
    failed_spawns = sum(1 for r in res.values() if any(f.startswith("spawn") for f in r["failed"]))
    other = sum(1 for r in res.values() for f in r["failed"] if not f.startswith(("login", "spawn")))
    lost_work = sorted(login for login, (w, h) in run.intact.items() if not w)
    lost_handin = sorted(login for login, (w, h) in run.intact.items() if not h)
    restarts = sum(1 for name, pid in run.pids.items() if run.after.get(name) != pid)
    not_running = sorted(set(run.logins) - run.servers_left)
    return {
        "lat": (pct(class_lat, 50), pct(class_lat, 95), pct(class_lat, 99)),
        "solo": (pct(solo_lat, 50), pct(solo_lat, 95), pct(solo_lat, 99)),
        "cells": len(class_lat),
        "lat_ratio": pct(class_lat, 95) / pct(solo_lat, 95) if class_lat and solo_lat else float("inf"),
        "spawn": (pct(spawns, 50), pct(spawns, 95)),
        "single": solo["spawn"] or float("nan"),
        "spawn_ratio": pct(spawns, 95) / solo["spawn"] if spawns and solo["spawn"] else float("inf"),
        "peak_budget": run.peak_budget,
        "peak_host": run.peak_host,
        "killed": killed,
        "oom_who": oom_who,
        "oom_count": oom_count,
        "failcnt": run.budget_failcnt,
        "host_oom": run.host_oom,
        "vmstat_oom": run.vmstat_oom,
        "reasons": reasons,
        "shut_down": shut_down,
        "pss_peak": run.pss_peak,
        "pss_idle": run.pss_idle,
        "phases": spawn_phases(run.hub_log_text, run.logins),
        "solo_phases": spawn_phases(run.hub_log_text, [run.solo]),
        "hogs": hogs,
        "innocents": innocents,
        "told": all(res[h].get("told") for h in hogs),
        "failed": (failed_logins, failed_spawns, failed_cells, other),
        "lost_work": lost_work,
        "lost_handin": lost_handin,
        "restarts": restarts,
        "not_running": not_running,
        "culls": run.culls,
        "wall": run.wall,
        "load": run.load,
    }


def fit(text, width=25):
    """*text* cut to a column of the table: a list keeps its first items and
    says how many more there are (the lines after the table name them all)."""
    if len(text) <= width:
        return text
    items = re.split(r",\s*", text)
    for keep in range(len(items) - 1, 0, -1):
        short = ",".join(items[:keep]) + f",+{len(items) - keep}"
        if len(short) <= width:
            return short
    return text[: width - 1] + "…"


def report(runs, budget):
    f = {kind: figures(run) for kind, run in runs.items()}
    kinds = list(f)
    print()
    print("%-44s" % "figure" + "".join(f"{k:>26s}" for k in kinds))

    def row(label, fn):
        print("%-44s" % label + "".join(f"{fit(fn(f[k])):>26s}" for k in kinds))

    row("cell latency p50/p95/p99, well-behaved (s)", lambda x: "%.2f/%.2f/%.2f" % x["lat"])
    row("  same cells, one student alone (s)", lambda x: "%.2f/%.2f/%.2f" % x["solo"])
    row("  p95 ratio (cells measured)", lambda x: f"{x['lat_ratio']:.2f}x ({x['cells']})")
    row("spawn-to-ready p50/p95 in the wave (s)", lambda x: "%.1f/%.1f" % x["spawn"])
    row("  a single spawn (s); p95 ratio", lambda x: f"{x['single']:.1f}; {x['spawn_ratio']:.2f}x")
    row(f"peak memory: budget ({budget / GiB:.0f} GiB limit)", lambda x: f"{x['peak_budget'] / GiB:.2f} GiB")
    row("peak memory: host (all of it, other work too)", lambda x: f"{x['peak_host'] / GiB:.2f} GiB")
    row("kernel deaths seen in a cell (students)", lambda x: ", ".join(f"{k}x{v}" for k, v in sorted(x["killed"].items())) or "none")
    row("  phases hub/start/ready, wave (s)", lambda x: "%.1f/%.1f/%.1f" % tuple(x["phases"].values()))
    row("  phases hub/start/ready, single (s)", lambda x: "%.1f/%.1f/%.1f" % tuple(x["solo_phases"].values()))
    row("servers' RSS sum / PSS sum at peak", lambda x: mib_pair(x["pss_peak"]))
    row("  kernels: RSS / PSS (how many)", lambda x: mib_pair(x["pss_peak"], "kernel_"))
    row("servers' RSS sum / PSS sum, all idle at the end", lambda x: mib_pair(x["pss_idle"]))
    row("  kernels: RSS / PSS (how many)", lambda x: mib_pair(x["pss_idle"], "kernel_"))
    row("OOM kills, cgroup counters (whose)", lambda x: f"{x['oom_count']}: " + (",".join(x["oom_who"]) or "-"))
    row("  budget's limit reached (v1 failcnt)", lambda x: "?" if x["failcnt"] is None else str(x["failcnt"]))
    row("host OOM kills (dmesg); all OOM kills (vmstat)", lambda x: ("?" if x["host_oom"] is None else str(x["host_oom"])) + f"; {x['vmstat_oom']}")
    row("idle kernels shut down for memory (whose)", lambda x: ",".join(x["shut_down"]) or "none")
    row("hogs (told why)", lambda x: ",".join(x["hogs"]) + (" (yes)" if x["told"] else " (no)"))
    row("innocent students whose kernels died", lambda x: ",".join(x["innocents"]) or "none")
    row("servers culled (why)", lambda x: "; ".join(f"{who}: {why}" for who, why in x["culls"]) or "none")
    row("servers not running at the end", lambda x: ",".join(x["not_running"]) or "none")
    row("failed logins/spawns/cells/saves", lambda x: "%d/%d/%d/%d" % x["failed"])
    row("lost notebooks / hand-ins", lambda x: f"{len(x['lost_work'])} / {len(x['lost_handin'])}")
    row("hub/proxy/service restarts", lambda x: str(x["restarts"]))
    row("class wall time (s); load avg start/end", lambda x: "%.0f; %.1f/%.1f" % (x["wall"], *x["load"]))
    for k in kinds:
        for login, why in sorted(f[k]["reasons"].items()):
            print(f"   {k}: {login}: {', '.join(why)}")
        if f[k]["lost_work"] or f[k]["lost_handin"]:
            print(f"   {k}: lost notebooks {f[k]['lost_work']}, hand-ins {f[k]['lost_handin']}")
    print()
    ours = f.get("classroom")
    stock = f.get("stock")
    lines = []
    if ours:
        n = len(runs["classroom"].logins)
        lines += [
            (ours["host_oom"] == 0, f"{n} students inside {budget / GiB:.0f} GiB: 0 host OOM kills ({ours['host_oom']})"),
            (ours["restarts"] == 0, f"0 hub/proxy/service restarts ({ours['restarts']})"),
            (
                not ours["lost_work"] and not ours["lost_handin"],
                f"0 lost notebooks or hand-ins ({len(ours['lost_work'])} notebooks, {len(ours['lost_handin'])} hand-ins)",
            ),
            (not ours["innocents"], f"only the hogs' kernels killed (innocent: {','.join(ours['innocents']) or 'none'})"),
            (ours["told"], "every hog told why (on the hub's home page)"),
            (ours["lat_ratio"] <= TARGET_LATENCY, f"p95 cell latency <= {TARGET_LATENCY}x solo: {ours['lat_ratio']:.2f}x"),
            (ours["spawn_ratio"] <= TARGET_SPAWN, f"spawn p95 in the wave <= {TARGET_SPAWN:.0f}x a single spawn: {ours['spawn_ratio']:.2f}x"),
        ]
    if ours and stock:
        better = {
            "latency": ours["lat_ratio"] <= stock["lat_ratio"],
            "spawn": ours["spawn_ratio"] <= stock["spawn_ratio"],
            "innocent kills": len(ours["innocents"]) <= len(stock["innocents"]),
            "lost work": len(ours["lost_work"]) + len(ours["lost_handin"]) <= len(stock["lost_work"]) + len(stock["lost_handin"]),
            "failures": sum(ours["failed"]) <= sum(stock["failed"]),
            "peak budget": ours["peak_budget"] <= stock["peak_budget"],
        }
        worse = [k for k, ok in better.items() if not ok]
        lines.append((not worse, f"classroom at least as good as stock on every figure (worse on: {', '.join(worse) or 'none'})"))
    for ok, text in lines:
        print(f"{'met    ' if ok else 'NOT met'} {text}")
    return f

