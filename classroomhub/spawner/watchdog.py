"""psutil fallback when no cgroup is writable: a watchdog, not the kernel.

The group of a server is its process tree plus any process that still
carries the server's key in its environment (a double-forked daemon leaves
the tree but keeps its environment). The watchdog, run by the spawner every
few seconds, kills the largest process other than the server itself while
the group's resident memory is over the limit. CPU limits cannot be enforced
this way; kernels are reniced instead.
"""

from __future__ import annotations

import asyncio
import time

import psutil

from .enforcement import KEY_ENV, Enforcement, Usage

NICE_LIMITED = 10


class PsutilWatchdog(Enforcement):
    name = "psutil"
    enforcing = True

    def __init__(self, log=None):
        super().__init__(log=log)
        self._groups = {}  # key -> dict(limits, pid, peak, oom_kills, cpu_exited)

    def describe(self):
        return "psutil watchdog (memory by polling resident size; CPU by nice only)"

    def create(self, key, limits):
        self._groups[key] = {"limits": limits, "pid": None, "peak": 0, "oom_kills": 0}

    def adopt(self, key, pid, limits=None):
        group = self._groups.setdefault(key, {"limits": None, "peak": 0, "oom_kills": 0})
        group["pid"] = pid
        if limits is not None:
            group["limits"] = limits

    def _processes(self, key, search_env=False):
        group = self._groups.get(key)
        found = {}
        if group and group.get("pid"):
            try:
                root = psutil.Process(group["pid"])
                found[root.pid] = root
                for child in root.children(recursive=True):
                    found[child.pid] = child
            except psutil.NoSuchProcess:
                pass
        if search_env:
            # slow (reads every process's environment): only when destroying
            for proc in psutil.process_iter():
                if proc.pid in found:
                    continue
                try:
                    if proc.environ().get(KEY_ENV) == key:
                        found[proc.pid] = proc
                except (psutil.Error, OSError):
                    pass
        return found

    def pids(self, key):
        return sorted(self._processes(key))

    def usage(self, key):
        rss = 0
        cpu = 0.0
        procs = self._processes(key)
        for proc in procs.values():
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
                    cpu += times.user + times.system
            except psutil.Error:
                pass
        group = self._groups.get(key, {})
        group["peak"] = max(group.get("peak", 0), rss)
        return Usage(
            mem_bytes=rss,
            mem_peak_bytes=group["peak"],
            cpu_seconds=cpu,
            oom_kills=group.get("oom_kills", 0),
            procs=len(procs),
        )

    def enforce(self, key, server_pid):
        group = self._groups.get(key)
        if not group or not group.get("limits"):
            return []
        limits = group["limits"]
        killed = []
        sizes = {}
        for pid, proc in self._processes(key).items():
            try:
                sizes[pid] = proc.memory_info().rss
                if limits.cpu and pid != server_pid and proc.nice() < NICE_LIMITED:
                    proc.nice(NICE_LIMITED)
            except psutil.Error:
                pass
        if not limits.mem_bytes:
            return killed
        total = sum(sizes.values())
        victims = sorted((p for p in sizes if p != server_pid), key=sizes.get, reverse=True)
        for pid in victims:
            if total <= limits.mem_bytes:
                break
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                continue
            total -= sizes[pid]
            killed.append(pid)
            group["oom_kills"] += 1
        return killed

    async def destroy(self, key, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            procs = self._processes(key, search_env=True)
            if not procs:
                break
            for proc in procs.values():
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(list(procs.values()), timeout=0.1)
            if time.monotonic() > deadline:
                self.log.warning("psutil: processes %s of %s survive SIGKILL", sorted(procs), key)
                break
            await asyncio.sleep(0.02)
        self._groups.pop(key, None)

    def keys(self):
        return sorted(self._groups)
