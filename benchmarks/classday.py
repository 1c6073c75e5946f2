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
times (nobody starts a new cell after the hand-in time, so a slow machine runs
fewer of the planned ones); some students run one cell and leave the tab
open; 2 hogs allocate 4 GiB; 2 run a CPU-bound loop for 40% of the run. Before the class, one extra
student alone spawns (the single-spawn figure) and runs every menu cell twice (once with
``--quick``): the solo latencies.

Needs root and writable cgroup v1 controllers. Removes its users, servers,
cgroups, hub and proxy at the end, also after an error or SIGTERM::

    PATH=$PWD/.venv/bin:$PWD/proxy/node_modules/.bin:$PATH python benchmarks/classday.py --quick
    ... python benchmarks/classday.py                   # 40 students, 12 minutes per run
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
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import psutil
import requests
import websocket

sys.path.insert(0, os.path.dirname(__file__))
from _common import Users, stop_hub  # noqa: E402

from classroomhub.demo import free_ports, proxy_command  # noqa: E402
from classroomhub.spawner import EnforcementUnavailable, detect  # noqa: E402

GiB = 1024**3
MEMORY_ROOT = "/sys/fs/cgroup/memory"
#: both classes live below the same parent in these hierarchies: the memory
#: budget, and one CPU weight for the class against the rest of the machine
#: (ClassroomSpawner puts its servers' cpu groups there; the stock harness too)
CLASS_HIERARCHIES = (MEMORY_ROOT, "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpuacct")
HOG_BYTES = 4 * GiB
TARGET_LATENCY = 1.5  # well-behaved p95 <= 1.5x solo
TARGET_SPAWN = 3.0  # spawn p95 in the wave <= 3x a single spawn

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
del frame
print({mb}, {cpu}, result)
"""
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


def make_trace(rng, logins, minutes):
    """Seeded plans for *logins* over *minutes*."""
    duration = minutes * 60
    wave = min(180.0, duration / 4)
    think = (3.0, 30.0) if minutes >= 5 else (2.0, 8.0)
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
                mb, cpu = MENU[k]
                steps.append((gap, "cell", CELL.format(mb=mb, cpu=cpu, seed=k), k))
        plans.append(Plan(login, role, rng.uniform(0, wave), steps, duration + rng.uniform(0, 10)))
    return plans


def print_trace(plans, minutes):
    print(f"trace: {len(plans)} students, {minutes} min; menu (MB, CPU s): {MENU}")
    for p in sorted(plans, key=lambda p: p.login_at):
        kinds = " ".join(
            ("HOG" if kind == "hog" else "LOOP" if kind == "loop" else f"m{k}") + f"+{gap:.0f}s"
            for gap, kind, _, k in p.steps
        )
        print(f"   {p.login:12s} {p.role:6s} login {p.login_at:6.1f}s  hand-in {p.handin_at:6.1f}s  cells: {kinds}")
    sys.stdout.flush()


# -- a student --------------------------------------------------------------------


class Student:
    """One person in a browser: cookies, a tab on their server, one kernel."""

    def __init__(self, url, login, password, log):
        self.url, self.login, self.password, self.log = url, login, password, log
        self.http = requests.Session()
        self.ws = None
        self.session_id = uuid.uuid4().hex
        self.cells = []  # the notebook's cells as saved
        self.saved = None  # the notebook the server last acknowledged
        self.handed_in = None
        self.kernel_deaths = 0
        self.events = []  # (what, detail)

    def note(self, what, detail=""):
        self.events.append((what, detail))
        self.log(f"{self.login}: {what} {detail}")

    def login_form(self):
        r = self.http.get(self.url + "hub/login", timeout=60)
        r.raise_for_status()
        r = self.http.post(
            self.url + "hub/login",
            data={"username": self.login, "password": self.password, "_xsrf": self.http.cookies.get("_xsrf", path="/hub/")},
            allow_redirects=False,
            timeout=120,
        )
        if r.status_code != 302:
            raise RuntimeError(f"login: {r.status_code}")

    def spawn(self, timeout=300):
        """Seconds from /hub/spawn until the lab page opens (through OAuth)."""
        tic = time.perf_counter()
        self.http.get(self.url + "hub/spawn", timeout=timeout)
        self.wait_progress(timeout)
        lab = self.url + f"user/{self.login}/lab"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                r = self.http.get(lab, timeout=60)
                if r.status_code == 200 and r.url.split("?")[0] == lab:
                    return time.perf_counter() - tic
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"server not ready in {timeout} s")

    def wait_progress(self, timeout):
        """Follow the spawn's progress events until ready, as the spawn page does."""
        url = self.url + f"hub/api/users/{self.login}/server/progress"
        xsrf = self.http.cookies.get("_xsrf", path="/hub/") or ""
        with self.http.get(url, stream=True, timeout=timeout, headers={"X-XSRFToken": xsrf}) as r:
            if r.status_code != 200:
                return  # the lab page's own polling decides
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event.get("ready"):
                        return
                    if event.get("failed"):
                        raise RuntimeError(f"spawn failed: {event.get('message')}")

    def _xsrf(self):
        for cookie in self.http.cookies:
            if cookie.name == "_xsrf" and cookie.path.startswith(f"/user/{self.login}"):
                return cookie.value
        return ""

    def _api(self, method, path, **kw):
        r = self.http.request(
            method, self.url + f"user/{self.login}/api/{path}", headers={"X-XSRFToken": self._xsrf()}, timeout=120, **kw
        )
        r.raise_for_status()
        return r

    def start_kernel(self):
        kernel = self._api("POST", "kernels", json={"name": "python3"}).json()
        ws_url = self.url.replace("http", "ws", 1) + f"user/{self.login}/api/kernels/{kernel['id']}/channels"
        cookies = "; ".join(f"{c.name}={c.value}" for c in self.http.cookies if c.path.startswith(f"/user/{self.login}"))
        self.ws = websocket.create_connection(
            f"{ws_url}?session_id={self.session_id}&_xsrf={self._xsrf()}",
            cookie=cookies,
            header=[f"X-XSRFToken: {self._xsrf()}"],
            timeout=60,
        )

    def execute(self, code, timeout):
        """(seconds, status, stdout) of one cell; status ok, error, killed or timeout."""
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "username": self.login,
            "session": self.session_id,
            "msg_type": "execute_request",
            "version": "5.3",
            "date": datetime.now(timezone.utc).isoformat(),
        }
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}
        message = {"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell", "buffers": []}
        tic = time.perf_counter()
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        reply, idle, out, status = None, False, [], "ok"
        while not (reply and idle):
            left = deadline - time.monotonic()
            if left <= 0:
                return time.perf_counter() - tic, "timeout", "".join(out)
            self.ws.settimeout(left)
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            kind = msg.get("msg_type") or msg["header"]["msg_type"]
            state = msg.get("content", {}).get("execution_state")
            if kind == "status" and state in ("restarting", "autorestarting", "dead"):
                self.kernel_deaths += 1
                return time.perf_counter() - tic, "killed", "".join(out)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if kind == "execute_reply":
                reply = msg
                status = msg["content"].get("status", "error")
            elif kind == "status" and state == "idle":
                idle = True
            elif kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                out.append(f"{msg['content']['ename']}: {msg['content']['evalue']}\n")
        return time.perf_counter() - tic, status, "".join(out)

    def notebook(self):
        return {
            "cells": self.cells,
            "metadata": {"classday": {"student": self.login}, "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }

    def record(self, code, output):
        n = len(self.cells) + 1
        outputs = [{"output_type": "stream", "name": "stdout", "text": output}] if output else []
        self.cells.append({"cell_type": "code", "execution_count": n, "id": f"c{n}", "metadata": {}, "outputs": outputs, "source": code})

    def save(self, name):
        nb = self.notebook()
        self._api("PUT", f"contents/{name}", json={"type": "notebook", "format": "json", "content": nb})
        return json.loads(json.dumps(nb))

    def close(self):
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass


def comparable(nb):
    """A notebook's content as the comparison sees it (sources and outputs, joined)."""

    def text(v):
        return "".join(v) if isinstance(v, list) else v

    return (
        nb.get("metadata", {}).get("classday"),
        [(text(c["source"]), [text(o.get("text", "")) for o in c.get("outputs", [])]) for c in nb["cells"]],
    )


# -- one run ----------------------------------------------------------------------


class Run:
    """A hub (classroom or stock), its students, their results."""

    def __init__(self, kind, tag, n, budget, plans_for, verbose, solo_repeat):
        self.kind, self.n, self.budget, self.verbose = kind, n, budget, verbose
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
                state=self.state, password=self.password, budget_parent=self.parent, budget=self.budget, service_port=service_port
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
        self.sampling = True
        while self.sampling:
            mem = psutil.virtual_memory()
            self.peak_host = max(self.peak_host, mem.total - mem.available)
            try:
                self.peak_budget_sampled = max(
                    self.peak_budget_sampled, int(Path(self.budget_dir, "memory.usage_in_bytes").read_text())
                )
            except OSError:
                pass
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
            if not solo:
                time.sleep(gap)
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
        # one student alone: a single spawn and every menu cell, twice
        steps = [(0, "cell", CELL.format(mb=mb, cpu=cpu, seed=k), k) for k, (mb, cpu) in enumerate(MENU)] * self.solo_repeat
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
        self.after = self.processes()
        self.servers_left = self.running_servers()
        self.sampling = False
        sampler.join()
        self.oom = oom_kills(self.uptime0, self.parent)
        self.intact = {p.login: self.check_intact(p.login) for p in self.plans}
        try:
            self.peak_budget = int(Path(self.budget_dir, "memory.max_usage_in_bytes").read_text())
        except OSError:
            self.peak_budget = self.peak_budget_sampled
        self.culls = culls(Path(self.state, "hub.log").read_text(errors="replace"))

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


def culls(hub_log):
    """[(login, why)] of the servers stopped by the hub's culling or memory
    pressure (classroomhub) or by jupyterhub-idle-culler (stock)."""
    found = re.findall(r"Stopping server '[^']*' of (cd\w+): (.*)", hub_log)
    found += re.findall(r"Culling server (cd\w+)\S* \((.*)\)", hub_log)
    return found


def oom_kills(since, parent):
    """OOM kills in the kernel log after uptime *since*: [(uid, process, constraint, memcg)]."""
    try:
        text = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    kills = []
    for line in text.splitlines():
        m = re.match(r"\[\s*([\d.]+)\] oom-kill:constraint=(\w+),.*task_memcg=([^,]*),task=([^,]*),pid=\d+,uid=(\d+)", line)
        if m and float(m.group(1)) >= since:
            kills.append((int(m.group(5)), m.group(4), m.group(2), m.group(3)))
    return kills


# -- the report -------------------------------------------------------------------


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
    uids = {pwd.getpwnam(login).pw_uid: login for login in [*run.logins, run.solo]}
    roles = {p.login: p.role for p in run.plans}
    killed = {}
    for login, r in res.items():
        if "student" in r and r["student"].kernel_deaths:
            killed[login] = r["student"].kernel_deaths
    oom = run.oom or []
    ours = [k for k in oom if k[0] in uids or run.parent in k[3]]
    oom_who = sorted({uids.get(uid, f"uid {uid}") for uid, _, _, _ in ours})
    host_oom = [k for k in oom if k[2] != "CONSTRAINT_MEMCG"]
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
        "oom_count": len(ours),
        "host_oom": len(host_oom) if run.oom is not None else None,
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


def report(runs, budget):
    f = {kind: figures(run) for kind, run in runs.items()}
    kinds = list(f)
    print()
    print("%-44s" % "figure" + "".join(f"{k:>26s}" for k in kinds))

    def row(label, fn):
        print("%-44s" % label + "".join(f"{fn(f[k]):>26s}" for k in kinds))

    row("cell latency p50/p95/p99, well-behaved (s)", lambda x: "%.2f/%.2f/%.2f" % x["lat"])
    row("  same cells, one student alone (s)", lambda x: "%.2f/%.2f/%.2f" % x["solo"])
    row("  p95 ratio (cells measured)", lambda x: f"{x['lat_ratio']:.2f}x ({x['cells']})")
    row("spawn-to-ready p50/p95 in the wave (s)", lambda x: "%.1f/%.1f" % x["spawn"])
    row("  a single spawn (s); p95 ratio", lambda x: f"{x['single']:.1f}; {x['spawn_ratio']:.2f}x")
    row(f"peak memory: budget ({budget / GiB:.0f} GiB limit)", lambda x: f"{x['peak_budget'] / GiB:.2f} GiB")
    row("peak memory: host (all of it, other work too)", lambda x: f"{x['peak_host'] / GiB:.2f} GiB")
    row("kernel deaths seen in a cell (students)", lambda x: ", ".join(f"{k}x{v}" for k, v in sorted(x["killed"].items())) or "none")
    row("OOM kills of the class's processes (whose)", lambda x: f"{x['oom_count']}: " + (",".join(x["oom_who"]) or "-"))
    row("host OOM kills", lambda x: "?" if x["host_oom"] is None else str(x["host_oom"]))
    row("hogs (told why)", lambda x: ",".join(x["hogs"]) + (" (yes)" if x["told"] else " (no)"))
    row("innocent students whose kernels died", lambda x: ",".join(x["innocents"]) or "none")
    row("servers culled (why)", lambda x: "; ".join(f"{who}: {why}" for who, why in x["culls"]) or "none")
    row("servers not running at the end", lambda x: ",".join(x["not_running"]) or "none")
    row("failed logins/spawns/cells/saves", lambda x: "%d/%d/%d/%d" % x["failed"])
    row("lost notebooks / hand-ins", lambda x: f"{len(x['lost_work'])} / {len(x['lost_handin'])}")
    row("hub/proxy/service restarts", lambda x: str(x["restarts"]))
    row("class wall time (s); load avg start/end", lambda x: "%.0f; %.1f/%.1f" % (x["wall"], *x["load"]))
    for k in kinds:
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


# -- main -------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, help="students per run (default 40; 10 with --quick)")
    parser.add_argument("--minutes", type=float, help="length of the class (default 12; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="the CI smoke: 10 students, 3 minutes")
    parser.add_argument("--budget", default="8G", help="memory of all student servers together (default 8G)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--only", choices=["classroom", "stock"], help="run one configuration")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every student's steps")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder (hub log, config)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/classday.py needs root: it runs servers as system users")
    n = args.students or (10 if args.quick else 40)
    minutes = args.minutes or (3 if args.quick else 12)
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    budget = int(float(args.budget[:-1]) * units[args.budget[-1].upper()]) if args.budget[-1].upper() in units else int(args.budget)
    tag = secrets.token_hex(2)
    print(f"class day: {n} students, {minutes:g} min, budget {budget / GiB:.1f} GiB, seed {args.seed}; "
          f"{os.cpu_count()} cores, {psutil.virtual_memory().total / GiB:.0f} GiB, load avg {os.getloadavg()[0]:.1f}")
    print("   harness: classroom sets the budget itself (ClassroomSpawner.servers_memory_budget); for stock the "
          "benchmark writes the parent's memory limit and its servers join it (and one cpu/cpuacct parent, as "
          "ClassroomSpawner's do) through a LocalProcessSpawner subclass that writes their pid before exec")
    trace_printed = []

    def plans_for(logins):
        plans = make_trace(random.Random(args.seed), logins, minutes)
        if not trace_printed:
            print_trace(plans, minutes)
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
            run = Run(kind, tag, n, budget, plans_for, args.verbose, 1 if args.quick else 2)
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
