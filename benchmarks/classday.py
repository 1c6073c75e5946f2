"""Class day: a seeded class of real students in one memory budget.

Two runs of the same trace, one after the other, each on its own real
``jupyterhub`` process with a real configurable-http-proxy:

- classroom: ClassroomPasswordAuthenticator on a roster of the class,
  ClassroomSpawner (the student tier's limits), the classroom service;
- stock: JupyterHub's SharedPasswordAuthenticator, LocalProcessSpawner and
  jupyterhub-idle-culler as a hub-managed service (``--timeout=3600``, its
  documented example).

Every student server runs below one memory cgroup limited to ``--budget``
(8 GiB); the hub, proxy and services stay outside it. ClassroomSpawner
sets it itself (``servers_memory_budget`` on its absolute ``cgroup_parent``).
For the stock run the benchmark writes the parent's ``memory.limit_in_bytes``
and a harness subclass of LocalProcessSpawner writes each server's pid into
the budget's memory, cpu and cpuacct ``cgroup.procs`` before exec (so its
memory is charged there, and the class weighs as one cpu group against the
rest of the machine, as ClassroomSpawner's servers do); nothing else of
LocalProcessSpawner changes.

Each student is a real system user (``cd<hex>...``) driven by a thread that
logs in through the hub's login form (cookies, through the proxy), starts the
server from /hub/spawn, opens /user/NAME/lab (the server's OAuth redirect to
the hub and back), starts a kernel through /api/kernels and runs cells over
the kernel's websocket (execute_request, until execute_reply and idle). After
each cell the student saves ``work.ipynb`` through the contents API; at the end
everyone writes ``handin.ipynb``. Both files are read back from the home (as
the student) and compared by content with what the server acknowledged.

The trace (printed): logins spread over the first quarter of the run (3
minutes in the full run); cells from a menu of numpy/pandas work allocating
50-300 MB (freed when the cell ends) and burning 0.1-3 s of CPU, with think
times of 20-90 s (``--pace sprint``: 3-30 s, a stress test that asks about
as much CPU as 40 students' cells can get from 2 cores) (nobody starts a new cell after the hand-in time, so a slow machine runs
fewer of the planned ones); some students run one cell and leave the tab
open; 2 hogs allocate 4 GiB; 2 run a CPU-bound loop for 40% of the run. Before the class, one extra
student alone spawns (the single-spawn figure) and runs every menu cell twice (once with
``--quick``), 5 s apart: the solo latencies.

Needs root and writable cgroup v1 controllers. Removes its users, servers,
cgroups, hub and proxy at the end, also after an error or SIGTERM::

    PATH=$PWD/.venv/bin:$PWD/proxy/node_modules/.bin:$PATH python benchmarks/classday.py --quick
    ... python benchmarks/classday.py                   # 40 students, 12 minutes per run
    ... python benchmarks/classday.py --pace sprint      # a cell every 3-30 s: a stress test
    ... python benchmarks/classday.py --students 4 --minutes 1 --only classroom

Ends with the issue's targets as ``met`` / ``NOT met`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

sys.path.insert(0, os.path.dirname(__file__))
from _common import Users, stop_hub  # noqa: E402
from classday_report import GiB, culls, host_oom_kills, report  # noqa: E402
from classday_student import Student, comparable  # noqa: E402

from classroomhub.demo import free_ports, proxy_command  # noqa: E402
from classroomhub.spawner import EnforcementUnavailable, detect  # noqa: E402

MEMORY_ROOT = "/sys/fs/cgroup/memory"
#: both classes live below the same parent in these hierarchies: the memory
#: budget, and one CPU weight for the class against the rest of the machine
#: (ClassroomSpawner puts its servers' cpu groups there; the stock harness too)
CLASS_HIERARCHIES = (MEMORY_ROOT, "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct")
HOG_BYTES = 4 * GiB

#: the cells students run: (MB allocated, CPU seconds)
MENU = [(50, 0.1), (60, 0.3), (100, 0.5), (120, 1.0), (150, 0.2), (200, 1.5), (250, 2.0), (300, 3.0)]

CELL = """\
import time, numpy as np, pandas as pd
t0 = time.process_time()
rows = {mb} * 2**20 // 32
frame = pd.DataFrame(np.random.default_rng({seed}).random((rows, 4)), columns=list("abcd"), copy=False)
frame["k"] = (frame.a * 100).astype("int64")
total = 0.0
while time.process_time() - t0 < {cpu}:
    total += float(frame.b.values[:200_000].sum())
result = frame.groupby("k").c.mean().head(3).round(6).tolist()
{keep}del frame
print({mb}, {cpu}, result)
"""
#: seconds the solo student waits before each cell
SOLO_PAUSE = 5
#: a student who keeps part of what a cell made (one frame, replaced by the next cell's)
KEEP = "kept = frame.iloc[: int(rows * {fraction})].copy()\n"


def cell_code(k, kept_fraction=0.0):
    """The code of menu cell *k*; with *kept_fraction*, the student keeps that
    part of the cell's frame until their next cell (the trace's default frees
    it all: only the allocator's leftovers stay)."""
    mb, cpu = MENU[k]
    keep = KEEP.format(fraction=kept_fraction) if kept_fraction else ""
    return CELL.format(mb=mb, cpu=cpu, seed=k, keep=keep)


HOG = f"import numpy as np\nhog = np.ones({HOG_BYTES // 8}, dtype='float64')\nprint(hog.sum())\n"
LOOP = "import time\nend = time.time() + {seconds}\nn = 0\nwhile time.time() < end:\n    n += 1\nprint(n)\n"

CONFIG_COMMON = """\
import os
c.JupyterHub.bind_url = {url!r}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.ConfigurableHTTPProxy.pid_file = {state!r} + "/proxy.pid"
c.JupyterHub.db_url = "sqlite:///" + {state!r} + "/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = {state!r} + "/cookie_secret"
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.default_url = "/lab"
c.Spawner.http_timeout = 300
c.Spawner.start_timeout = 300
c.JupyterHub.services = [{{"name": "classday", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "classday", "scopes": ["admin:servers", "read:users", "list:users"], "services": ["classday"]}}
]
"""

CONFIG_CLASSROOM = """\
from classroomhub.service.hubconfig import add_classroom_service
c.JupyterHub.authenticator_class = "classroom-password"
c.ClassroomPasswordAuthenticator.roster_path = {state!r} + "/roster.yaml"
c.ClassroomPasswordAuthenticator.user_password = {password!r}
c.JupyterHub.spawner_class = "classroom"
c.ClassroomSpawner.cgroup_parent = {budget_parent!r}
c.ClassroomSpawner.servers_memory_budget = {budget}
c.ClassroomSpawner.spawn_method = {spawn_method!r}
add_classroom_service(c, data_dir={state!r} + "/classroom", port={service_port})
"""

CONFIG_STOCK = """\
import sys
from jupyterhub.spawner import LocalProcessSpawner

class BudgetLocalProcessSpawner(LocalProcessSpawner):
    # benchmark harness only: the server joins the class's budget cgroups before exec
    def make_preexec_fn(self, name):
        drop = super().make_preexec_fn(name)
        procs = {budget_procs!r}

        def preexec():
            for path in procs:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.write(fd, str(os.getpid()).encode())
                finally:
                    os.close(fd)
            drop()

        return preexec

c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = {password!r}
c.Authenticator.allowed_users = set({logins!r})
c.JupyterHub.spawner_class = BudgetLocalProcessSpawner
c.JupyterHub.services.append(
    {{"name": "idle-culler", "command": [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=3600"]}}
)
c.JupyterHub.load_roles.append(
    {{
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }}
)
"""


# -- the trace --------------------------------------------------------------------


class Plan:
    def __init__(self, login, role, login_at, steps, handin_at):
        self.login, self.role, self.login_at = login, role, login_at
        self.steps = steps  # [(think seconds, kind, code, menu index or None)]
        self.handin_at = handin_at


#: seconds between a student's cells (uniform): a class works through a
#: notebook, reading, typing and looking at results; "sprint" is the stress
#: pace of earlier runs (a cell every 3-30 s, everyone, all class long)
PACES = {"class": (20.0, 90.0), "sprint": (3.0, 30.0), "quick": (2.0, 8.0)}


def make_trace(rng, logins, minutes, kept_fraction=0.0, think=None):
    """Seeded plans for *logins* over *minutes*, *think* seconds apart."""
    duration = minutes * 60
    wave = min(180.0, duration / 4)
    think = think or (PACES["class"] if minutes >= 5 else PACES["quick"])
    loop_seconds = round(0.4 * duration)
    n = len(logins)
    specials = 2 if n >= 10 else 1
    roles = ["hog"] * specials + ["looper"] * specials + ["idle"] * max(1, n // 5)
    roles = (roles + ["well"] * n)[:n]
    rng.shuffle(roles)
    plans = []
    for login, role in zip(logins, roles):
        steps = []
        budget = duration - wave  # cells after the login, roughly
        count = 1 if role == "idle" else max(2, int(budget / (sum(think) / 2 + 2)))
        # early in the student's class: a late server still gets to it before the hand-in
        special_at = min(2, count - 1)
        for i in range(count):
            gap = rng.uniform(*think)
            if i == special_at and role == "hog":
                steps.append((gap, "hog", HOG, None))
            elif i == special_at and role == "looper":
                steps.append((gap, "loop", LOOP.format(seconds=loop_seconds), None))
            else:
                k = rng.randrange(len(MENU))
                steps.append((gap, "cell", cell_code(k, kept_fraction), k))
        plans.append(Plan(login, role, rng.uniform(0, wave), steps, duration + rng.uniform(0, 10)))
    return plans


def offered_cores(plans, minutes):
    """The cores the trace's cells ask for on average over the class (their
    CPU seconds over its length; loops and the kernels' own start not counted)."""
    cpu = sum(MENU[k][1] for p in plans for _, kind, _, k in p.steps if kind == "cell")
    return cpu / (minutes * 60)


def print_trace(plans, minutes, think):
    print(
        f"trace: {len(plans)} students, {minutes} min, think {think[0]:g}-{think[1]:g} s; menu (MB, CPU s): {MENU}; "
        f"cells ask for {offered_cores(plans, minutes):.2f} of {os.cpu_count()} cores on average (loops not counted)"
    )
    for p in sorted(plans, key=lambda p: p.login_at):
        kinds = " ".join(
            ("HOG" if kind == "hog" else "LOOP" if kind == "loop" else f"m{k}") + f"+{gap:.0f}s"
            for gap, kind, _, k in p.steps
        )
        print(f"   {p.login:12s} {p.role:6s} login {p.login_at:6.1f}s  hand-in {p.handin_at:6.1f}s  cells: {kinds}")
    sys.stdout.flush()


# -- measuring the budget's cgroups ----------------------------------------------------

#: seconds between sums of RSS and PSS over the servers' processes (each reads
#: every process's smaps_rollup: a few ms per process)
PSS_EVERY = 10.0


def oom_counters(budget_dir):
    """``{group: OOM kills}`` of the budget's folder ("") and of each server
    group in it: cgroup v1 ``memory.oom_control`` ``oom_kill`` (a v1 counter
    counts the processes of its own group only, so the budget's own counts
    the stock servers, which sit directly in it)."""
    found = {}
    for name in ["", *(e.name for e in os.scandir(budget_dir) if e.is_dir())] if os.path.isdir(budget_dir) else []:
        try:
            text = Path(budget_dir, name, "memory.oom_control").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                found[name] = int(value)
    return found


def vmstat_oom_kills():
    """Every OOM kill on the host since boot (``oom_kill`` of /proc/vmstat)."""
    for line in Path("/proc/vmstat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def pss_sample(budget_dir):
    """RSS and PSS summed over every process in the budget's cgroups (from
    ``/proc/PID/smaps_rollup``), for the servers and for the kernels apart:
    the RSS sum counts shared pages once per process, PSS splits them."""
    sums = {"rss": 0, "pss": 0, "server_rss": 0, "server_pss": 0, "kernel_rss": 0, "kernel_pss": 0, "kernels": 0, "servers": 0}
    pids = set()
    for folder, _, files in os.walk(budget_dir):
        if "cgroup.procs" in files:
            try:
                pids.update(int(p) for p in Path(folder, "cgroup.procs").read_text().split())
            except OSError:
                pass
    for pid in pids:
        try:
            kind = "kernel" if b"ipykernel" in Path(f"/proc/{pid}/cmdline").read_bytes() else "server"
            fields = dict(line.split()[:2] for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
        except (OSError, ValueError):
            continue  # exited meanwhile
        rss, pss = int(fields.get("Rss:", 0)) * 1024, int(fields.get("Pss:", 0)) * 1024
        sums["rss"] += rss
        sums["pss"] += pss
        sums[f"{kind}_rss"] += rss
        sums[f"{kind}_pss"] += pss
        sums[f"{kind}s"] += 1
    return sums


# -- one run ----------------------------------------------------------------------


class Run:
    """A hub (classroom or stock), its students, their results."""

    def __init__(self, kind, tag, n, budget, plans_for, verbose, solo_repeat, kept_fraction=0.0, spawn_method="template"):
        self.kind, self.n, self.budget, self.verbose = kind, n, budget, verbose
        self.kept_fraction = kept_fraction  # what each cell keeps of its frame, the solo's too
        self.spawn_method = spawn_method  # ClassroomSpawner.spawn_method of the classroom run
        self.solo_repeat = solo_repeat
        letter = kind[0]
        self.logins = [f"cd{tag}{letter}{i:02d}" for i in range(n)]
        self.solo = f"cd{tag}{letter}solo"
        self.plans = plans_for(self.logins)
        self.state = tempfile.mkdtemp(prefix=f"classday-{kind}-{tag}-")
        os.chmod(self.state, 0o711)
        self.parent = f"/classday-{tag}-{kind}"
        self.budget_dir = MEMORY_ROOT + self.parent
        self.password = secrets.token_hex(12)
        self.token = secrets.token_hex(24)
        port, hub_port, proxy_api_port, service_port = free_ports(4)
        self.url = f"http://127.0.0.1:{port}/"
        bin_dir = os.path.dirname(sys.executable)
        config = CONFIG_COMMON.format(
            url=self.url,
            hub_port=hub_port,
            proxy_api_port=proxy_api_port,
            proxy=os.path.abspath(proxy_command()),
            state=self.state,
            singleuser=os.path.join(bin_dir, "jupyterhub-singleuser"),
            token=self.token,
        )
        if kind == "classroom":
            roster = "users:\n" + "".join(f"  {u}: {{}}\n" for u in [*self.logins, self.solo])
            Path(self.state, "roster.yaml").write_text(roster)
            config += CONFIG_CLASSROOM.format(
                state=self.state,
                password=self.password,
                budget_parent=self.parent,
                budget=self.budget,
                service_port=service_port,
                spawn_method=self.spawn_method,
            )
        else:
            config += CONFIG_STOCK.format(
                budget_procs=[f"{d}{self.parent}/cgroup.procs" for d in CLASS_HIERARCHIES], password=self.password, logins=[*self.logins, self.solo]
            )
        self.config = Path(self.state, "jupyterhub_config.py")
        self.config.write_text(config)
        self.proc = None
        self.hub_log = open(os.path.join(self.state, "hub.log"), "ab")
        self.admin = requests.Session()
        self.admin.headers["Authorization"] = f"token {self.token}"
        self.lock = threading.Lock()
        self.results = {}  # login -> dict
        self.pids = {}
        self.peak_host = 0
        self.peak_budget_sampled = 0
        self.oom_counts = {}  # cgroup (server group, or "" for the budget's own) -> OOM kills
        self.pss_peak = {}  # the pss_sample with the largest PSS sum
        self.pss_idle = {}  # the pss_sample after the hand-in, everyone idle
        self.sampling = False

    def log(self, text):
        if self.verbose:
            print(f"   [{time.strftime('%H:%M:%S')}] {self.kind}: {text}", flush=True)

    # the hub and its processes

    def start_hub(self):
        for root in CLASS_HIERARCHIES:
            os.makedirs(root + self.parent, exist_ok=True)
        if self.kind == "stock":  # ClassroomSpawner sets it: servers_memory_budget
            Path(self.budget_dir, "memory.limit_in_bytes").write_text(str(self.budget))
        self.proc = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "jupyterhub"), "-f", str(self.config)],
            cwd=self.state,
            stdout=self.hub_log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the hub exited; see {self.state}/hub.log")
            try:
                if requests.get(self.url + "hub/api/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the hub did not start; see {self.state}/hub.log")
            time.sleep(0.2)
        time.sleep(2)  # the managed services start beside the hub
        self.pids = self.processes()

    def processes(self):
        """{name: pid} of the hub, the proxy and the hub-managed services."""
        found = {"hub": self.proc.pid if self.proc.poll() is None else None}
        try:
            found["proxy"] = int(Path(self.state, "proxy.pid").read_text())
            if not psutil.pid_exists(found["proxy"]):
                found["proxy"] = None
        except (OSError, ValueError):
            found["proxy"] = None
        try:
            for child in psutil.Process(self.proc.pid).children():
                cmd = " ".join(child.cmdline())
                for name in ("classroomhub.service", "jupyterhub_idle_culler"):
                    if name in cmd:
                        found[name] = child.pid
        except psutil.NoSuchProcess:
            pass
        return found

    def stop_hub(self):
        stop_hub(self.proc, timeout=120)

    def sample(self):
        """Every 0.5 s: peak memory of the host and the budget, and the OOM-kill
        counters of the budget's cgroups (a server's group goes with its
        server: the highest count seen is kept); every `PSS_EVERY` s the sum of
        RSS and PSS over the servers' processes (the largest sum is the peak)."""
        self.sampling = True
        next_pss = 0.0
        while self.sampling:
            mem = psutil.virtual_memory()
            self.peak_host = max(self.peak_host, mem.total - mem.available)
            try:
                self.peak_budget_sampled = max(
                    self.peak_budget_sampled, int(Path(self.budget_dir, "memory.usage_in_bytes").read_text())
                )
            except OSError:
                pass
            for name, count in oom_counters(self.budget_dir).items():
                self.oom_counts[name] = max(self.oom_counts.get(name, 0), count)
            if time.monotonic() >= next_pss:
                next_pss = time.monotonic() + PSS_EVERY
                sample = pss_sample(self.budget_dir)
                if sample["pss"] > self.pss_peak.get("pss", 0):
                    self.pss_peak = sample
            time.sleep(0.5)

    # the class

    def student(self, plan, t0, solo=False):
        res = {"role": "solo" if solo else plan.role, "cells": [], "spawn": None, "failed": []}
        with self.lock:
            self.results[plan.login] = res
        s = Student(self.url, plan.login, self.password, self.log)
        res["student"] = s
        wait = t0 + plan.login_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            s.login_form()
        except Exception as e:
            res["failed"].append(f"login: {e}")
            return res
        try:
            res["spawn"] = s.spawn()
            s.start_kernel()
        except Exception as e:
            res["failed"].append(f"spawn: {e}")
            return res
        s.note("ready", f"{res['spawn']:.1f}s")
        # late servers still run the cells up to their special one (hog or loop)
        must = next((i for i, step in enumerate(plan.steps) if step[1] != "cell"), 0)
        for i, (gap, kind, code, k) in enumerate(plan.steps):
            time.sleep(gap)
            if not solo:
                if i > must and time.monotonic() - t0 > plan.handin_at - 5:
                    break
            timeout = 3 * 3600 if kind == "loop" else 600
            try:
                seconds, status, out = s.execute(code, timeout)
            except Exception as e:
                seconds, status, out = 0.0, f"lost ({type(e).__name__})", ""
            res["cells"].append((kind, k, seconds, status))
            s.note(f"{kind}{'' if k is None else k}", f"{status} {seconds:.2f}s")
            if status == "killed" or status.startswith("lost"):
                try:  # the tab reconnects to its (restarted) kernel, as JupyterLab does
                    s.close()
                    s.start_kernel()
                except Exception as e:
                    res["failed"].append(f"reconnect: {e}")
                    break
            s.record(code, out)
            try:
                s.saved = s.save("work.ipynb")
            except Exception as e:
                res["failed"].append(f"save: {e}")
        if not solo:
            wait = t0 + plan.handin_at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                s.handed_in = s.save("handin.ipynb")
            except Exception as e:
                res["failed"].append(f"hand-in: {e}")
        s.close()
        return res

    def run(self, users):
        for login in [*self.logins, self.solo]:
            users.create(login)
        self.start_hub()
        sampler = threading.Thread(target=self.sample, daemon=True)
        sampler.start()
        self.uptime0 = float(Path("/proc/uptime").read_text().split()[0])
        self.vmstat_oom = vmstat_oom_kills()
        # one student alone: a single spawn and every menu cell, twice
        # with a pause between cells, as a student thinks (back to back, the
        # solo would be a busy server that interactive-first puts behind others)
        steps = [(SOLO_PAUSE, "cell", cell_code(k, self.kept_fraction), k) for k in range(len(MENU))] * self.solo_repeat
        self.log("solo student")
        self.student(Plan(self.solo, "solo", 0, steps, 0), time.monotonic(), solo=True)
        self.admin.delete(self.url + f"hub/api/users/{self.solo}/server", timeout=120)
        self.log("class starts")
        t0 = time.monotonic()
        self.load = [os.getloadavg()[0]]
        with ThreadPoolExecutor(len(self.plans)) as pool:
            list(pool.map(lambda p: self.student(p, t0), self.plans))
        self.wall = time.monotonic() - t0
        hogs = [p.login for p in self.plans if p.role == "hog"]
        with ThreadPoolExecutor(len(hogs) or 1) as pool:
            for login, told in zip(hogs, pool.map(lambda h: self.told_why(self.results[h].get("student")), hogs)):
                self.results[login]["told"] = told
        self.load.append(os.getloadavg()[0])
        self.pss_idle = pss_sample(self.budget_dir)
        self.vmstat_oom = vmstat_oom_kills() - self.vmstat_oom
        self.after = self.processes()
        self.servers_left = self.running_servers()
        self.sampling = False
        sampler.join()
        self.host_oom = host_oom_kills(self.uptime0)
        for name, count in oom_counters(self.budget_dir).items():  # kills since the last sample
            self.oom_counts[name] = max(self.oom_counts.get(name, 0), count)
        try:
            self.budget_failcnt = int(Path(self.budget_dir, "memory.failcnt").read_text())
        except OSError:
            self.budget_failcnt = None
        self.intact = {p.login: self.check_intact(p.login) for p in self.plans}
        try:
            self.peak_budget = int(Path(self.budget_dir, "memory.max_usage_in_bytes").read_text())
        except OSError:
            self.peak_budget = self.peak_budget_sampled
        self.hub_log_text = Path(self.state, "hub.log").read_text(errors="replace")
        self.culls = culls(self.hub_log_text)

    def told_why(self, student, wait=60):
        """Whether the hub's home page tells *student* why a process was
        stopped (the hub records a kill at its next usage sample: wait a little)."""
        deadline = time.monotonic() + wait
        while student is not None:
            try:
                if "were stopped (last at" in student.http.get(self.url + "hub/home", timeout=60).text:
                    return True
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                break
            time.sleep(2)
        return False

    def running_servers(self):
        try:
            r = self.admin.get(self.url + "hub/api/users", timeout=60)
            return {u["name"] for u in r.json() if u.get("servers", {}).get("", {}).get("ready")}
        except (requests.RequestException, ValueError):
            return set()

    def check_intact(self, login):
        """(work intact, hand-in intact): the files in the home, read as the
        student, hold what the server last acknowledged."""
        s = self.results[login].get("student")
        out = []
        for name, expected in (("work.ipynb", s and s.saved), ("handin.ipynb", s and s.handed_in)):
            if expected is None:
                out.append(False)
                continue
            entry = pwd.getpwnam(login)
            r = subprocess.run(
                ["cat", os.path.join(entry.pw_dir, name)], user=entry.pw_uid, group=entry.pw_gid, capture_output=True, cwd="/"
            )
            try:
                out.append(r.returncode == 0 and comparable(json.loads(r.stdout)) == comparable(expected))
            except ValueError:
                out.append(False)
        return tuple(out)

    def cleanup(self):
        self.sampling = False
        self.stop_hub()
        self.hub_log.close()
        try:
            backend, _ = detect("cgroup-v1", self.parent)
            for key in backend.keys():
                asyncio.run(backend.destroy(key))
            backend.remove_parent()
        except (EnforcementUnavailable, OSError) as e:
            print(f"   cleanup: cgroups: {e}", file=sys.stderr)
        for folder in (root + self.parent for root in CLASS_HIERARCHIES):
            if not os.path.isdir(folder):
                continue
            for pid in Path(folder, "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for _ in range(100):
                try:
                    os.rmdir(folder)
                    break
                except OSError:
                    time.sleep(0.1)


# -- main -------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, help="students per run (default 40; 10 with --quick)")
    parser.add_argument("--minutes", type=float, help="length of the class (default 12; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="the CI smoke: 10 students, 3 minutes")
    parser.add_argument("--budget", default="8G", help="memory of all student servers together (default 8G)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument(
        "--kept-fraction",
        type=float,
        default=0.0,
        help="each cell keeps this part of its frame until the student's next cell (default 0: everything freed)",
    )
    parser.add_argument(
        "--pace",
        choices=["class", "sprint"],
        help="seconds between a student's cells: class 20-90 (default), sprint 3-30 (a stress test); quick: 2-8",
    )
    parser.add_argument("--only", choices=["classroom", "stock"], help="run one configuration")
    parser.add_argument(
        "--spawn-method",
        choices=["exec", "template"],
        default="template",
        help="ClassroomSpawner.spawn_method of the classroom run (default template, as the docs advise for a class; "
        "exec: the product's default)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every student's steps")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder (hub log, config)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/classday.py needs root: it runs servers as system users")
    n = args.students or (10 if args.quick else 40)
    minutes = args.minutes or (3 if args.quick else 12)
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    budget = int(float(args.budget[:-1]) * units[args.budget[-1].upper()]) if args.budget[-1].upper() in units else int(args.budget)
    think = PACES[args.pace or ("quick" if args.quick or minutes < 5 else "class")]
    tag = secrets.token_hex(2)
    print(f"class day: {n} students, {minutes:g} min, budget {budget / GiB:.1f} GiB, seed {args.seed}, "
          f"spawn method {args.spawn_method}, kept fraction {args.kept_fraction:g}; "
          f"{os.cpu_count()} cores, {psutil.virtual_memory().total / GiB:.0f} GiB, load avg {os.getloadavg()[0]:.1f}")
    print("   harness: classroom sets the budget itself (ClassroomSpawner.servers_memory_budget); for stock the "
          "benchmark writes the parent's memory limit and its servers join it (and one cpu/cpuacct parent, as "
          "ClassroomSpawner's do) through a LocalProcessSpawner subclass that writes their pid before exec")
    trace_printed = []

    def plans_for(logins):
        plans = make_trace(random.Random(args.seed), logins, minutes, args.kept_fraction, think)
        if not trace_printed:
            print_trace(plans, minutes, think)
            trace_printed.append(True)
        return plans

    kinds = [args.only] if args.only else ["classroom", "stock"]
    users = Users()
    runs = {}
    current = []

    def cleanup():
        for run in current:
            run.cleanup()
        current.clear()
        users.remove_all()

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    try:
        for kind in kinds:
            run = Run(
                kind, tag, n, budget, plans_for, args.verbose, 1 if args.quick else 2, args.kept_fraction, args.spawn_method
            )
            current.append(run)
            print(f"{kind}: hub at {run.url}, state {run.state}", flush=True)
            tic = time.monotonic()
            run.run(users)
            run.cleanup()
            current.remove(run)
            if not args.keep:
                shutil.rmtree(run.state, ignore_errors=True)
            runs[kind] = run
            print(f"{kind}: done in {time.monotonic() - tic:.0f} s", flush=True)
        report(runs, budget)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
