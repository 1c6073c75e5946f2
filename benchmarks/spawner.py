"""ClassroomSpawner benchmark.

a. Spawn-to-ready and stop of one server, as a user experiences it: through a
   running hub (jupyterhub's MockHub with a real configurable-http-proxy), an
   admin token POSTs ``/hub/api/users/NAME/server`` and the clock stops when
   the hub marks the server ready; then DELETE until it is stopped. Real
   ``jupyterhub-singleuser`` servers as real system users. Baseline, same hub
   and same run, interleaved pair by pair: jupyterhub's stock
   ``LocalProcessSpawner`` with the same command. ClassroomSpawner has its
   limits on (cgroup v1 here; memory 1G, CPU 1).
   A third kind, same run: ClassroomSpawner with ``spawn_method = "template"``
   (servers forked from the spawn template); its ratio to stock is the
   sub-second target.
b. Burst: 20 and 40 servers requested at once (ClassroomSpawner). Counts
   ready servers and failures, the wall time from the first request to the
   last server ready, and the CPU seconds spent meanwhile by the hub process,
   the proxy and every server (its cgroup's ``cpuacct.usage``, read the
   moment the last one is ready). Baseline: that CPU spread over all cores,
   i.e. the shortest wall time the work allows; the ratio shows the time the
   machine spent waiting (readiness backoff, serialisation) instead of working.
c. Usage sampling for 5, 50 and 200 server groups of 1 and 40 processes
   each (``sleep`` processes in cgroups made by the backend, no jupyter
   servers): the cgroup backend's ``usage(key)`` against a psutil walk of the
   process tree (``PsutilWatchdog.usage``, the product's own fallback).
d. Memory of N idle servers (default 10): N servers started one after the
   other, exec'd and then forked from the template, measured 5 s after the
   last is ready from /proc/<pid>/smaps_rollup: the sum of RSS (counting
   shared pages once per server) against the sum of PSS (shared pages split
   among their users; for the template, its own PSS is added, as its share
   of the pages the servers share with it).

Needs root and writable cgroup v1 controllers. Creates system users
``chb-<hex>-NN`` (gecos "classroomhub benchmark user") and cgroups under
``bench-<hex>``; removes all of them, the servers, the hub and the proxy on
exit, also after an error or Ctrl-C. Run from the repository root::

    PATH=$PWD/.venv/bin:$PWD/proxy/node_modules/.bin:$PATH python benchmarks/spawner.py
    ... python benchmarks/spawner.py --quick            # a smoke run (~2 min)
    ... python benchmarks/spawner.py --only usage       # one part: spawn, burst, memory or usage

Prints medians and ratios; ends with one line per target (PASS/MISS).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import ctypes
import json
import logging
import os
import pwd
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from traitlets import default

from classroomhub.spawner import ClassroomSpawner, Limits, detect
from classroomhub.spawner.template import Template
from classroomhub.spawner.users import ensure_system_user
from classroomhub.spawner.watchdog import PsutilWatchdog

TAG = "chb-" + secrets.token_hex(3)
GECOS = "classroomhub benchmark user"
HUB_PARENT = "bench-" + TAG[4:]  # cgroups of the hub's servers
USAGE_PARENT = HUB_PARENT + "-usage"  # cgroups of part c
GiB = 1024**3
CORES = os.cpu_count() or 1
TIMEOUT = 120  # start_timeout and http_timeout of the servers

TARGET_SPAWN_RATIO = 0.75
TARGET_TEMPLATE_RATIO = 0.35  # forked from the template, against stock
TARGET_BURST_RATIO = 1.25
TARGET_USAGE_US = 60.0
TARGET_FLAT = 1.5  # cgroup µs/user with 40 processes / with 1 process, at most


# -- cleanup: whatever happens, nothing of ours is left ---------------------------


class Leftovers:
    """Everything this run made outside its temporary folder."""

    def __init__(self):
        self.users = []  # system users we created
        self.popens = []  # processes of part c
        self.proxy_pid = None

    def clean(self):
        """Idempotent and synchronous: safe from finally, atexit and signals."""
        self._kill_processes()
        for parent in (HUB_PARENT, USAGE_PARENT):
            self._remove_cgroups(parent)
        self._remove_users()
        _reap_children()

    def _kill_processes(self):
        if self.proxy_pid and psutil.pid_exists(self.proxy_pid):
            _kill(self.proxy_pid)
        uids = set()
        for name in self.users:
            try:
                uids.add(pwd.getpwnam(name).pw_uid)
            except KeyError:
                pass
        if uids:
            for proc in psutil.process_iter(["uids"]):
                if proc.info["uids"] and proc.info["uids"].real in uids:
                    _kill(proc.pid)
        for p in self.popens:
            if p.poll() is None:
                _kill(p.pid)
        for p in self.popens:
            try:
                p.wait(timeout=5)
            except (subprocess.TimeoutExpired, ChildProcessError):
                pass
        self.popens.clear()

    @staticmethod
    def _remove_cgroups(parent):
        try:
            backend, _ = detect("cgroup-v1", cgroup_parent=parent)
        except Exception:
            return
        for key in backend.keys():
            asyncio.run(backend.destroy(key))
        for folder in set(backend.bases.values()):
            try:
                os.rmdir(folder)
            except FileNotFoundError:
                pass
            except OSError as e:
                print(f"warning: cannot remove {folder}: {e}", file=sys.stderr)

    def _remove_users(self):
        for name in list(self.users):
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                self.users.remove(name)
                continue
            if entry.pw_gecos != GECOS or not name.startswith(TAG):
                continue  # never ours
            for proc in psutil.process_iter(["uids"]):
                if proc.info["uids"] and proc.info["uids"].real == entry.pw_uid:
                    _kill(proc.pid)
            subprocess.run(["userdel", "--remove", name], check=False, stderr=subprocess.DEVNULL)
            self.users.remove(name)


LEFT = Leftovers()


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap_children(wait=2.0):
    """Reap exited children, orphans included (we are their subreaper)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children at all
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


def _become_subreaper():
    """Orphans of killed process trees come to us, not to an init that may
    never reap them (PID 1 of this kind of machine does not)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


# -- helpers --------------------------------------------------------------------------


def ms(seconds):
    return f"{seconds * 1e3:9.0f}"


def verdict(ok):
    return "PASS" if ok else "MISS"


class TemplateSpawner(ClassroomSpawner):
    """ClassroomSpawner with its servers forked from the spawn template."""

    @default("spawn_method")
    def _default_spawn_method(self):
        return "template"


def make_users(names):
    for name in names:
        LEFT.users.append(name)  # before useradd: cleaned even if interrupted now
        entry, created = ensure_system_user(name, comment=GECOS)
        if not created:
            LEFT.users.remove(name)
            raise RuntimeError(f"system user {name} exists already; not ours")


def host_busy_seconds():
    """CPU seconds the whole host has spent not idle (all cores)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu_seconds(pid):
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    except psutil.Error:
        return 0.0


async def wait_until(condition, timeout, interval=0.005):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


async def _listening(spawner, tic):
    """Seconds from *tic* until the spawner's port accepts a connection."""
    while not spawner.port:
        await asyncio.sleep(0.002)
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", spawner.port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        writer.close()
        return time.perf_counter() - tic


# -- the hub ----------------------------------------------------------------------------


class Hub:
    """A MockHub with a real proxy, spawning real jupyterhub-singleuser servers."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.app = None
        self.http = None
        self.token = None
        self.base = None
        self.server_log = None

    async def start(self):
        from jupyterhub.tests.mocking import MockHub
        from jupyterhub.tests.utils import public_url
        from jupyterhub.utils import random_port
        from tornado.httpclient import AsyncHTTPClient
        from traitlets.config import Config

        self.server_log = os.open(self.tmp / "servers.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        cfg = Config()
        cfg.JupyterHub.log_level = logging.INFO
        cfg.JupyterHub.bind_url = f"http://127.0.0.1:{random_port()}/"
        cfg.JupyterHub.spawner_class = ClassroomSpawner
        cfg.JupyterHub.concurrent_spawn_limit = 100
        cfg.ConfigurableHTTPProxy.log_level = "error"
        cfg.Authenticator.admin_users = {f"{TAG}-admin"}
        cfg.Spawner.cmd = [os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")]
        cfg.Spawner.start_timeout = TIMEOUT
        cfg.Spawner.http_timeout = TIMEOUT
        # servers log to a file, not to this table (both spawner classes; an
        # fd, as config values are deep-copied)
        cfg.LocalProcessSpawner.popen_kwargs = {"stdout": self.server_log, "stderr": subprocess.STDOUT}
        cfg.ClassroomSpawner.enforcement = "cgroup-v1"
        cfg.ClassroomSpawner.cgroup_parent = HUB_PARENT
        cfg.ClassroomSpawner.create_system_users = True  # a no-op here: the users exist
        cfg.ClassroomSpawner.memory_reserve = 0
        cfg.ClassroomSpawner.tier_settings = {
            "student": {"mem_limit": 1 * GiB, "cpu_limit": 1.0, "idle_timeout": 0, "max_age": 0},
        }
        self.app = MockHub.instance(config=cfg)
        await self.app.initialize([])
        self.app.log.propagate = False
        self.app.log.addHandler(logging.FileHandler(self.tmp / "hub.log"))
        await self.app.start()
        LEFT.proxy_pid = self.app.proxy.proxy_process.pid
        self.token = self.app.users[f"{TAG}-admin"].new_api_token(note="benchmark")
        self.base = public_url(self.app, path="hub/api/")
        self.http = AsyncHTTPClient(force_instance=True, max_clients=200)

    async def stop(self):
        from jupyterhub.tests.mocking import MockHub

        app, self.app = self.app, None
        if self.http is not None:
            self.http.close()
            self.http = None
        if app is not None:
            MockHub.clear_instance()
            try:
                await app.stop()  # stops every server, then the proxy
            finally:
                for handler in list(app.log.handlers):
                    app.log.removeHandler(handler)
                    handler.close()
                app.log.addHandler(logging.NullHandler())
        Template.stop_current()  # as the hub process's exit would
        if self.server_log is not None:
            os.close(self.server_log)
            self.server_log = None

    async def api(self, method, path, body=None):
        from tornado.httpclient import HTTPRequest

        if body is None and method == "POST":
            body = b""
        elif body is not None and not isinstance(body, bytes):
            body = json.dumps(body)
        request = HTTPRequest(
            self.base + path,
            method=method,
            body=body,
            headers={"Authorization": f"token {self.token}"},
            request_timeout=TIMEOUT * 3,
        )
        return await self.http.fetch(request, raise_error=False)

    async def add_users(self, names, spawner_class):
        """Hub users whose default server uses *spawner_class* (untimed)."""
        r = await self.api("POST", "users", {"usernames": list(names)})
        assert r.code == 201, (r.code, r.body)
        settings = self.app.tornado_settings
        previous = settings["spawner_class"]
        settings["spawner_class"] = spawner_class
        try:
            for name in names:
                spawner = self.app.users[name].spawners[""]
                assert type(spawner) is spawner_class, type(spawner)
        finally:
            settings["spawner_class"] = previous

    def spawner(self, name):
        return self.app.users[name].spawners[""]

    async def spawn(self, name):
        """Seconds from the POST to the hub's ready flag, and to the server's
        port accepting connections (probed every 10 ms: the floor any spawner
        could reach, whatever its readiness check)."""
        spawner = self.spawner(name)
        assert not spawner.port, "each benchmark user spawns once"
        tic = time.perf_counter()
        probe = asyncio.ensure_future(_listening(spawner, tic))
        try:
            r = await self.api("POST", f"users/{name}/server")
            if r.code not in (201, 202):
                raise RuntimeError(f"POST {name}/server: {r.code} {r.body[:300]!r}")
            await wait_until(lambda: spawner.ready or not spawner.active, TIMEOUT * 2 + 30)
            if not spawner.ready:
                raise RuntimeError(f"the server of {name} did not become ready (see hub.log)")
            ready = time.perf_counter() - tic
            listening = await asyncio.wait_for(probe, 5)
        finally:
            probe.cancel()
        return ready, listening

    async def stop_server(self, name):
        """Seconds from the DELETE to the hub's server being gone."""
        spawner = self.spawner(name)
        pid = spawner.pid
        tic = time.perf_counter()
        r = await self.api("DELETE", f"users/{name}/server")
        if r.code not in (202, 204):
            raise RuntimeError(f"DELETE {name}/server: {r.code} {r.body[:300]!r}")
        if not await wait_until(lambda: not spawner.active, 60):
            raise RuntimeError(f"the server of {name} did not stop")
        elapsed = time.perf_counter() - tic
        if pid and psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            raise RuntimeError(f"the server process {pid} of {name} survived its stop")
        return elapsed

    def tail(self, lines=25):
        path = self.tmp / "hub.log"
        if path.exists():
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""


# -- a. spawn-to-ready and stop -----------------------------------------------------------


async def bench_spawn(hub, repeat):
    from jupyterhub.spawner import LocalProcessSpawner

    print(
        f"a. spawn-to-ready and stop through the hub API, one server at a time "
        f"(median of {repeat} each, interleaved; + 1 untimed warm-up each)"
    )
    kinds = {"ClassroomSpawner": ClassroomSpawner, "LocalProcessSpawner": LocalProcessSpawner, "ClassroomSpawner template": TemplateSpawner}
    names = {kind: [f"{TAG}-{k}{i:02d}" for i in range(repeat + 1)] for kind, k in zip(kinds, "clt")}
    for kind, cls in kinds.items():
        make_users(names[kind])
        await hub.add_users(names[kind], cls)
    ready = {kind: [] for kind in kinds}
    listen = {kind: [] for kind in kinds}
    stop = {kind: [] for kind in kinds}
    for i in range(repeat + 1):
        order = list(kinds) if i % 2 == 0 else list(kinds)[::-1]
        for kind in order:
            name = names[kind][i]
            t_ready, t_listen = await hub.spawn(name)
            await asyncio.sleep(1.0)  # the server settles, as a user would open it
            t_stop = await hub.stop_server(name)
            if kind != "LocalProcessSpawner":
                spawner = hub.spawner(name)
                assert not any(os.path.exists(d) for d in spawner.backend.group_dirs(spawner.group_key))
            if i > 0:  # the first pair warms caches
                ready[kind].append(t_ready)
                listen[kind].append(t_listen)
                stop[kind].append(t_stop)
            await asyncio.sleep(0.5)

    cs, lp = "ClassroomSpawner", "LocalProcessSpawner"
    print(
        "   ready = POST to the hub's ready flag; listening = POST to the port accepting connections;\n"
        "   lag = ready - listening, per spawn (the hub's readiness check and proxy route)"
    )
    print(
        f"   {'':<26} {'ready ms':>9} {'min':>7} {'max':>7} {'listening':>10} {'lag ms':>7} {'max':>7} "
        f"{'stop ms':>8} {'min':>7} {'max':>7}"
    )
    for kind in kinds:
        r, s = ready[kind], stop[kind]
        lag = [a - b for a, b in zip(r, listen[kind])]
        print(
            f"   {kind:<26} {ms(statistics.median(r))} {min(r) * 1e3:7.0f} {max(r) * 1e3:7.0f} "
            f"{statistics.median(listen[kind]) * 1e3:10.0f} {statistics.median(lag) * 1e3:7.0f} {max(lag) * 1e3:7.0f} "
            f"{statistics.median(s) * 1e3:8.0f} {min(s) * 1e3:7.0f} {max(s) * 1e3:7.0f}"
        )
    ratio_ready = statistics.median(ready[cs]) / statistics.median(ready[lp])
    ratio_stop = statistics.median(stop[cs]) / statistics.median(stop[lp])
    pairs = statistics.median(c / b for c, b in zip(ready[cs], ready[lp]))
    print(f"   ClassroomSpawner / LocalProcessSpawner: ready {ratio_ready:.2f} (median of pairwise ratios {pairs:.2f}), stop {ratio_stop:.2f}")
    tp = "ClassroomSpawner template"
    ratio_template = statistics.median(ready[tp]) / statistics.median(ready[lp])
    pairs = statistics.median(t / b for t, b in zip(ready[tp], ready[lp]))
    print(
        f"   ClassroomSpawner template / LocalProcessSpawner: ready {ratio_template:.2f} "
        f"(median of pairwise ratios {pairs:.2f}), stop {statistics.median(stop[tp]) / statistics.median(stop[lp]):.2f}"
    )
    return {
        "ready": ratio_ready,
        "stop": ratio_stop,
        "template": ratio_template,
        "template_ready_s": statistics.median(ready[tp]),
    }


# -- b. burst --------------------------------------------------------------------------


async def bench_burst(hub, n, names):
    spawners = [hub.spawner(name) for name in names]
    assert all(type(s) is ClassroomSpawner for s in spawners)
    proxy_pid = LEFT.proxy_pid
    host0, own0, proxy0 = host_busy_seconds(), own_cpu_seconds(), proc_cpu_seconds(proxy_pid)
    tic = time.perf_counter()
    posts = [asyncio.ensure_future(hub.api("POST", f"users/{name}/server")) for name in names]
    ready_at, failed = {}, {}
    deadline = time.monotonic() + TIMEOUT * 2 + 30
    snapshot = None
    while len(ready_at) + len(failed) < n and time.monotonic() < deadline:
        for name, spawner, post in zip(names, spawners, posts):
            if name in ready_at or name in failed:
                continue
            if spawner.ready:
                ready_at[name] = time.perf_counter() - tic
            elif post.done() and (post.exception() or post.result().code not in (201, 202)):
                failed[name] = repr(post.exception()) if post.exception() else f"HTTP {post.result().code}"
            elif post.done() and not spawner.active:
                failed[name] = "spawn failed (see hub.log)"
        if len(ready_at) + len(failed) == n and snapshot is None:
            # the moment the last one is ready: what did everything cost?
            servers = sum(s.backend.usage(s.group_key).cpu_seconds for s in spawners if s.ready)
            snapshot = (
                servers,
                own_cpu_seconds() - own0,
                proc_cpu_seconds(proxy_pid) - proxy0,
                host_busy_seconds() - host0,
            )
            break
        await asyncio.sleep(0.02)
    for name in names:
        if name not in ready_at and name not in failed:
            failed[name] = "not ready in time"
    await asyncio.gather(*posts, return_exceptions=True)
    wall = max(ready_at.values()) if ready_at else float("nan")
    if snapshot is None:
        servers = sum(s.backend.usage(s.group_key).cpu_seconds for s in spawners if s.ready)
        snapshot = (servers, own_cpu_seconds() - own0, proc_cpu_seconds(proxy_pid) - proxy0, host_busy_seconds() - host0)
    servers_cpu, hub_cpu, proxy_cpu, host_cpu = snapshot
    total = servers_cpu + hub_cpu + proxy_cpu

    # stop them all at once
    tic = time.perf_counter()
    active = [name for name, s in zip(names, spawners) if s.active]
    deletes = await asyncio.gather(*(hub.api("DELETE", f"users/{name}/server") for name in active))
    bad = [r.code for r in deletes if r.code not in (202, 204)]
    stopped = await wait_until(lambda: not any(s.active for s in spawners), 120, interval=0.05)
    stop_wall = time.perf_counter() - tic
    left = spawners[0].backend.keys()
    if bad or not stopped or left:
        print(f"   warning: stop of the burst: HTTP {bad}, all stopped: {stopped}, cgroups left: {left}")

    ratio = wall / (total / CORES) if ready_at else float("inf")
    times = sorted(ready_at.values())
    med = statistics.median(times) if times else float("nan")
    print(
        f"   {n:>5} {len(ready_at):>6} {len(failed):>6} {wall:8.1f} {med:8.1f} "
        f"{servers_cpu:8.1f} {hub_cpu:6.1f} {proxy_cpu:6.1f} {total:7.1f} {ratio:12.2f} {host_cpu:9.1f} "
        f"{wall / (host_cpu / CORES):13.2f} {stop_wall:7.1f}"
    )
    for name, why in sorted(failed.items())[:5]:
        print(f"         failed: {name}: {why}")
    return {"ready": len(ready_at), "failed": len(failed), "ratio": ratio}


async def bench_bursts(hub, sizes):
    print(
        f"\nb. burst: N servers requested at once (ClassroomSpawner, cgroup v1, memory 1G, CPU 1; "
        f"{CORES} cores)\n"
        f"   wall = first request to last server ready; CPU s = servers (cgroup cpuacct) + hub + proxy;\n"
        f"   ratio = wall / (CPU s / {CORES} cores), 1.00 = every core busy all along; host = CPU s of the\n"
        f"   whole host meanwhile: host > CPU s is others' load, and wall/(host/n) near 1.00 means the cores never idled"
    )
    print(
        f"   {'N':>5} {'ready':>6} {'failed':>6} {'wall s':>8} {'med s':>8} "
        f"{'servers':>8} {'hub':>6} {'proxy':>6} {'CPU s':>7} {'wall/(CPU/n)':>12} {'host CPU':>9} "
        f"{'wall/(host/n)':>13} {'stop s':>7}"
    )
    results = {}
    for n in sizes:
        names = [f"{TAG}-b{n}x{i:02d}" for i in range(n)]
        make_users(names)
        await hub.add_users(names, ClassroomSpawner)
        await asyncio.sleep(2)  # let the host settle
        results[n] = await bench_burst(hub, n, names)
        await asyncio.sleep(2)
    return results


# -- d. memory of idle servers -------------------------------------------------------------


def smaps_rollup(pid):
    """``(RSS, PSS)`` of *pid* in bytes."""
    sizes = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1].isdigit():
                sizes[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return sizes.get("Rss", 0), sizes.get("Pss", 0)


async def bench_memory(hub, n):
    print(
        f"\nd. memory of {n} idle servers (no kernels), 5 s after the last is ready; MiB from smaps_rollup\n"
        f"   RSS = sum over the servers (shared pages once per server); PSS = sum of proportional shares\n"
        f"   (template: + the template's own PSS, its share of what the servers share with it)"
    )
    print(f"   {'':<26} {'RSS sum':>8} {'PSS sum':>8} {'PSS/server':>10} {'template PSS':>12} {'PSS/RSS':>8}")
    kinds = {"ClassroomSpawner": ClassroomSpawner, "ClassroomSpawner template": TemplateSpawner}
    results = {}
    for (kind, cls), k in zip(kinds.items(), "xy"):
        names = [f"{TAG}-{k}{i:02d}" for i in range(n)]
        make_users(names)
        await hub.add_users(names, cls)
        for name in names:
            await hub.spawn(name)
        await asyncio.sleep(5)
        pids = [hub.spawner(name).pid for name in names]
        if kind.endswith("template"):
            assert all(psutil.Process(pid).ppid() == Template._current.pid for pid in pids), "not forked from the template"
        sizes = [smaps_rollup(pid) for pid in pids]
        rss, pss = sum(r for r, _ in sizes), sum(p for _, p in sizes)
        template = smaps_rollup(Template._current.pid)[1] if kind.endswith("template") else 0
        total = pss + template
        MiB = 1024**2
        print(
            f"   {kind:<26} {rss / MiB:8.0f} {total / MiB:8.0f} {total / n / MiB:10.1f} "
            f"{template / MiB:12.0f} {total / rss:8.2f}"
        )
        results[kind] = {"rss": rss, "pss": total}
        await asyncio.gather(*(hub.stop_server(name) for name in names))
    exec_pss, template_pss = (results[kind]["pss"] for kind in kinds)
    print(f"   template / exec: PSS {template_pss / exec_pss:.2f}")
    return {"ratio": template_pss / exec_pss, **results}


async def run_hub_parts(tmp, parts, repeat, bursts, memory_n=10):
    hub = Hub(tmp)
    results = {}
    try:
        await hub.start()
        if "spawn" in parts:
            results["spawn"] = await bench_spawn(hub, repeat)
        if "burst" in parts:
            results["burst"] = await bench_bursts(hub, bursts)
        if "memory" in parts:
            results["memory"] = await bench_memory(hub, memory_n)
    except BaseException:
        tail = hub.tail()
        if tail:
            print(f"--- last lines of the hub's log ---\n{tail}\n---", file=sys.stderr)
        raise
    finally:
        await hub.stop()
    return results


# -- c. usage sampling ---------------------------------------------------------------------


def start_groups(backend, n, procs):
    """*n* cgroups of *procs* sleeping processes each; returns {key: root pid}."""
    roots = {}
    script = f"i=1; while [ $i -lt {procs} ]; do sleep 3600 & i=$((i+1)); done; exec sleep 3600"
    cmd = ["sleep", "3600"] if procs == 1 else ["sh", "-c", script]
    for g in range(n):
        key = f"g{g:03d}"
        backend.create(key, Limits(mem_bytes=1 * GiB, cpu=1.0, pids=4096))
        p = subprocess.Popen(
            cmd,
            preexec_fn=backend.attach_fn(key),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        LEFT.popens.append(p)
        roots[key] = p.pid
    deadline = time.monotonic() + 120
    for key, pid in roots.items():
        while True:
            try:
                settled = len(backend.pids(key)) == procs and psutil.Process(pid).name() == "sleep"
            except psutil.Error:
                settled = False
            if settled:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"group {key}: {len(backend.pids(key))} of {procs} processes started")
            time.sleep(0.01)
    return roots


def stop_groups(backend, roots):
    for key in roots:
        asyncio.run(backend.destroy(key))
    for p in LEFT.popens:
        try:
            p.wait(timeout=5)
        except (subprocess.TimeoutExpired, ChildProcessError):
            pass
    LEFT.popens.clear()
    _reap_children(wait=0.5)


def per_user_seconds(read, keys):
    tic = time.perf_counter()
    for key in keys:
        read(key)
    return (time.perf_counter() - tic) / len(keys)


def bench_usage(sizes, procs_list, rounds):
    print(
        f"\nc. usage sampling, µs per user (server group); median of {rounds} rounds "
        f"(psutil: fewer when a round takes over 5 s)"
    )
    print(
        f"   {'groups':>6} {'procs':>6} {'host procs':>10} {'cgroup µs':>10} {'psutil µs':>10} "
        f"{'rounds':>6} {'cgroup/psutil':>14}"
    )
    backend, _ = detect("cgroup-v1", cgroup_parent=USAGE_PARENT)
    results = {}
    try:
        for n in sizes:
            for procs in procs_list:
                roots = start_groups(backend, n, procs)
                try:
                    keys = list(roots)
                    watchdog = PsutilWatchdog()
                    for key, pid in roots.items():
                        watchdog.adopt(key, pid)
                    # both see the same groups
                    assert backend.usage(keys[0]).procs == procs, backend.usage(keys[0])
                    assert watchdog.usage(keys[0]).procs == procs, watchdog.usage(keys[0])
                    host_procs = len(psutil.pids())
                    cg, ps = [], []
                    for r in range(rounds):
                        cg.append(per_user_seconds(backend.usage, keys))
                        if r < 3 or ps[-1] * n < 5:
                            ps.append(per_user_seconds(watchdog.usage, keys))
                    c, p = statistics.median(cg), statistics.median(ps)
                    results[(n, procs)] = c
                    print(
                        f"   {n:>6} {procs:>6} {host_procs:>10} {c * 1e6:10.1f} {p * 1e6:10.1f} "
                        f"{len(ps):>6} {c / p:14.3f}"
                    )
                finally:
                    stop_groups(backend, roots)
    finally:
        for folder in set(backend.bases.values()):
            try:
                os.rmdir(folder)
            except OSError:
                pass
    return results


# -- main ----------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer repeats, one small burst, small groups")
    parser.add_argument("--only", action="append", choices=("spawn", "burst", "memory", "usage"), help="run only this part (repeatable)")
    parser.add_argument("--repeat", type=int, help="timed spawns per spawner class (default 10, quick 3)")
    parser.add_argument("--burst", type=int, nargs="+", help="burst sizes (default 20 40, quick 5)")
    parser.add_argument("--sizes", type=int, nargs="+", help="server groups in part c (default 5 50 200, quick 5 50)")
    parser.add_argument("--procs", type=int, nargs="+", help="processes per group in part c (default 1 40)")
    parser.add_argument("--rounds", type=int, help="rounds in part c (default 7, quick 3)")
    parser.add_argument("--idle", type=int, help="idle servers of each kind in part d (default 10, quick 3)")
    args = parser.parse_args(argv)
    parts = set(args.only or ("spawn", "burst", "memory", "usage"))
    idle = args.idle or (3 if args.quick else 10)
    repeat = args.repeat or (3 if args.quick else 10)
    bursts = args.burst or ([5] if args.quick else [20, 40])
    sizes = args.sizes or ([5, 50] if args.quick else [5, 50, 200])
    procs_list = args.procs or [1, 40]
    rounds = args.rounds or (3 if args.quick else 7)

    if os.geteuid() != 0:
        sys.exit("needs root: creates system users and cgroups")
    if parts & {"spawn", "burst", "memory"}:
        if shutil.which("configurable-http-proxy") is None:
            sys.exit("configurable-http-proxy is not on PATH: add proxy/node_modules/.bin (see the docstring)")
        if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")):
            sys.exit("run with the virtualenv's python (jupyterhub-singleuser is not next to it)")

    # a shell's `cmd &` may hand us SIGINT ignored; servers would inherit that
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    _become_subreaper()
    atexit.register(LEFT.clean)

    started = time.perf_counter()
    print(f"classroomhub spawner benchmark: {CORES} cores, load {os.getloadavg()[0]:.2f}, users {TAG}-*, cgroups {HUB_PARENT}*\n")
    results = {}
    cwd = os.getcwd()
    try:
        with tempfile.TemporaryDirectory(prefix="classroomhub-bench-") as tmp:
            tmp = Path(tmp)
            # MockHub writes its database, pid file and cookie secret to the
            # temporary-file directory and the working directory: keep both here.
            old_tempdir, tempfile.tempdir = tempfile.tempdir, str(tmp)
            os.chdir(tmp)
            try:
                if parts & {"spawn", "burst", "memory"}:
                    results.update(asyncio.run(run_hub_parts(tmp, parts, repeat, bursts, idle)))
            finally:
                os.chdir(cwd)
                tempfile.tempdir = old_tempdir
                LEFT.clean()  # users out before part c; the hub is gone
        if "usage" in parts:
            results["usage"] = bench_usage(sizes, procs_list, rounds)
    finally:
        LEFT.clean()

    print(f"\nruntime {time.perf_counter() - started:.0f} s\n")
    if "spawn" in results:
        r = results["spawn"]["ready"]
        print(f"target spawn-to-ready ClassroomSpawner/LocalProcessSpawner <= {TARGET_SPAWN_RATIO:g}: {verdict(r <= TARGET_SPAWN_RATIO)} ({r:.2f})")
        t, ready_s = results["spawn"]["template"], results["spawn"]["template_ready_s"]
        print(f"target spawn-to-ready template/LocalProcessSpawner <= {TARGET_TEMPLATE_RATIO:g}: {verdict(t <= TARGET_TEMPLATE_RATIO)} ({t:.2f})")
        print(
            f"target spawn-to-ready template under 1 s: {verdict(ready_s < 1.0)} ({ready_s * 1e3:.0f} ms; "
            f"load average now {os.getloadavg()[0]:.1f} on {CORES} cores)"
        )
    if "memory" in results:
        m = results["memory"]
        print(f"memory of {idle} idle servers, PSS template/exec: {m['ratio']:.2f} (no target; reported)")
    for n, b in results.get("burst", {}).items():
        ok = b["failed"] == 0 and b["ratio"] <= TARGET_BURST_RATIO
        print(
            f"target burst of {n}: 0 failures and wall/(CPU/cores) <= {TARGET_BURST_RATIO:g}: {verdict(ok)} "
            f"({b['failed']} failed, {b['ratio']:.2f})"
        )
    usage = results.get("usage")
    if usage:
        worst = max(usage.values())
        print(f"target cgroup usage <= {TARGET_USAGE_US:g} µs/user: {verdict(worst * 1e6 <= TARGET_USAGE_US)} (worst {worst * 1e6:.1f} µs)")
        procs = sorted({p for _, p in usage})
        if len(procs) > 1:
            flat = max(usage[(n, procs[-1])] / usage[(n, procs[0])] for n in sorted({n for n, _ in usage}))
            print(
                f"target cgroup usage flat in process count ({procs[-1]} / {procs[0]} processes <= {TARGET_FLAT:g}): "
                f"{verdict(flat <= TARGET_FLAT)} (worst {flat:.2f})"
            )


if __name__ == "__main__":
    main()
