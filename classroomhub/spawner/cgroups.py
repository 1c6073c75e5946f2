"""cgroup v2 and v1 backends: the kernel enforces the limits.

Each server gets a cgroup below ``<hub's own cgroup>/<cgroup_parent>/`` (or
below the hierarchy root when ``cgroup_parent`` is absolute; see
:func:`.cgroupfs.group_path`). The server process joins it in the forked
child, before exec, so every byte it and its kernels allocate is charged there.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time

from .cgroupfs import (
    OpenFiles,
    group_path,
    mountinfo,
    own_cgroups,
    read_int,
    read_keyed,
    read_pids,
    write_text,
)
from .enforcement import Enforcement, EnforcementUnavailable, Usage

CPU_PERIOD_US = 100_000


def _make_dirs(path):
    os.makedirs(path, exist_ok=True)


def _kill_all(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class _CgroupBackend(Enforcement):
    enforcing = True

    def __init__(self, log=None):
        super().__init__(log=log)
        self.files = OpenFiles()  # usage files of live groups, kept open

    #: how to make a cgroup directory (mkdir -p; the kernel adds the interface files)
    make_dir = staticmethod(_make_dirs)
    #: how to remove an empty cgroup directory (a plain rmdir on cgroupfs)
    remove_dir = staticmethod(os.rmdir)

    def group_dirs(self, key):
        raise NotImplementedError

    def parent_dirs(self):
        """The folders (``cgroup_parent`` in each hierarchy) holding the groups."""
        raise NotImplementedError

    def pids(self, key):
        seen = set()
        for folder in self.group_dirs(key):
            seen.update(read_pids(os.path.join(folder, "cgroup.procs")))
        return sorted(seen)

    def keys(self):
        try:
            return sorted(e.name for e in os.scandir(self.primary_base) if e.is_dir())
        except FileNotFoundError:
            return []

    def remove_parent(self):
        """Remove the (empty) folders holding the groups, e.g. when a demo ends.

        A hub leaves them for its next start; one that still holds a group is kept.
        """
        for folder in self.parent_dirs():
            try:
                self.remove_dir(folder)
            except FileNotFoundError:
                pass
            except OSError as e:
                self.log.info("cgroup: keeping %s: %s", folder, e.strerror)

    def _kill_group(self, key):
        _kill_all(self.pids(key))

    async def destroy(self, key, timeout=10):
        folders = [d for d in self.group_dirs(key) if os.path.isdir(d)]
        if not folders:
            return
        deadline = time.monotonic() + timeout
        self._kill_group(key)
        # Processes leave the cgroup only once they have fully exited; rmdir
        # before that fails with EBUSY.
        while self.pids(key):
            if time.monotonic() > deadline:
                self.log.warning("cgroup %s: processes %s survive SIGKILL", key, self.pids(key))
                return
            await asyncio.sleep(0.02)
            self._kill_group(key)  # catch forks that raced the first kill
        for folder in folders:
            self.files.forget(folder)
            while True:
                try:
                    self.remove_dir(folder)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        self.log.warning("cgroup %s: cannot remove %s: %s", key, folder, e)
                        break
                    await asyncio.sleep(0.02)


class CgroupV2(_CgroupBackend):
    """Unified hierarchy: memory.max/high/swap.max, cpu.max, pids.max, cgroup.kill."""

    name = "cgroup-v2"
    controllers = ("memory", "cpu", "pids")

    def __init__(self, root, own, parent="classroomhub", log=None):
        super().__init__(log=log)
        self.root = root
        self.own = os.path.normpath(os.path.join(root, own.lstrip("/")))
        self.base = group_path(root, own, parent)
        self.primary_base = self.base
        self._ready = False

    @classmethod
    def from_host(cls, parent="classroomhub", log=None):
        mounts = [m for m, fstype, _ in mountinfo() if fstype == "cgroup2"]
        if not mounts:
            raise EnforcementUnavailable("no cgroup2 filesystem is mounted")
        own = own_cgroups().get("")
        if own is None:
            raise EnforcementUnavailable("this process is not in a cgroup v2 hierarchy")
        root = mounts[0]
        # what the hub's own cgroup was given, not what the root has: without
        # delegation the controllers stop somewhere above the hub
        here = os.path.normpath(os.path.join(root, own.lstrip("/")))
        try:
            with open(os.path.join(here, "cgroup.controllers")) as f:
                available = f.read().split()
        except OSError as e:
            raise EnforcementUnavailable(f"cannot read {here}/cgroup.controllers: {e}") from None
        missing = [c for c in ("memory", "cpu") if c not in available]
        if missing:
            raise EnforcementUnavailable(
                f"cgroup2 at {here} lacks the {' and '.join(missing)} controller"
                f" (has: {' '.join(available) or 'none'}; delegate them to the hub's cgroup)"
            )
        if not os.access(here, os.W_OK):
            raise EnforcementUnavailable(f"{here} is not writable (not root, or not delegated)")
        return cls(root, own, parent, log=log)

    def describe(self):
        return f"cgroup v2 under {self.base} (memory.max, cpu.max, pids.max)"

    def group_dirs(self, key):
        return [os.path.join(self.base, key)]

    def parent_dirs(self):
        return [self.base]

    def _enable_controllers(self, folder):
        with open(os.path.join(folder, "cgroup.controllers")) as f:
            available = set(f.read().split())
        wanted = " ".join(f"+{c}" for c in self.controllers if c in available)
        write_text(os.path.join(folder, "cgroup.subtree_control"), wanted)

    def _prepare(self):
        """Enable the controllers from the hub's own cgroup down to the base.

        v2 forbids controllers in the subtree of a cgroup that has processes
        of its own, so the hub moves itself into a ``hub`` leaf first if needed
        (what a systemd service with ``Delegate=yes`` is expected to do).
        """
        if self._ready:
            return
        try:
            self._enable_controllers(self.own)
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            leaf = os.path.join(self.own, "hub")
            self.make_dir(leaf)
            for pid in read_pids(os.path.join(self.own, "cgroup.procs")):
                try:
                    write_text(os.path.join(leaf, "cgroup.procs"), pid)
                except OSError:
                    pass  # exited meanwhile, or a kernel thread
            self.log.info("cgroup v2: moved the hub into %s to delegate controllers", leaf)
            self._enable_controllers(self.own)
        folder = self.own
        for part in os.path.relpath(self.base, self.own).split(os.sep):
            if part == ".":
                break
            folder = os.path.join(folder, part)
            self.make_dir(folder)
            self._enable_controllers(folder)
        self._ready = True

    def create(self, key, limits):
        self._prepare()
        folder = os.path.join(self.base, key)
        self.make_dir(folder)
        mem = limits.mem_bytes
        write_text(os.path.join(folder, "memory.max"), mem if mem else "max")
        high = int(mem * limits.mem_high_fraction) if mem and limits.mem_high_fraction else "max"
        write_text(os.path.join(folder, "memory.high"), high)
        swap_file = os.path.join(folder, "memory.swap.max")
        if os.path.exists(swap_file):
            write_text(swap_file, "max" if limits.swap or not mem else 0)
        quota = f"{int(limits.cpu * CPU_PERIOD_US)} {CPU_PERIOD_US}" if limits.cpu else f"max {CPU_PERIOD_US}"
        write_text(os.path.join(folder, "cpu.max"), quota)
        pids_file = os.path.join(folder, "pids.max")
        if os.path.exists(pids_file):
            write_text(pids_file, limits.pids if limits.pids else "max")

    def attach_files(self, key):
        return [os.path.join(self.base, key, "cgroup.procs")]

    def set_budget(self, total, high_fraction=0.0):
        self._prepare()
        write_text(os.path.join(self.base, "memory.max"), total or "max")
        # throttle (reclaim) a little below the limit before the OOM killer acts
        high = int(total * high_fraction) if total and high_fraction else "max"
        write_text(os.path.join(self.base, "memory.high"), high)
        return True

    def budget_usage(self):
        current = read_int(os.path.join(self.base, "memory.current"))
        inactive = read_keyed(os.path.join(self.base, "memory.stat")).get("inactive_file", 0)
        return max(current - inactive, 0), read_int(os.path.join(self.base, "memory.max"))

    def usage(self, key):
        folder = os.path.join(self.base, key)
        read = self.files.read
        current = read_int(os.path.join(folder, "memory.current"), read=read)
        return Usage(
            mem_bytes=current,
            # memory.peak needs Linux 5.19; the caller keeps its own maximum too
            mem_peak_bytes=read_int(os.path.join(folder, "memory.peak"), current, read=read),
            cpu_seconds=read_keyed(os.path.join(folder, "cpu.stat"), read=read).get("usage_usec", 0) / 1e6,
            oom_kills=read_keyed(os.path.join(folder, "memory.events"), read=read).get("oom_kill", 0),
            procs=read_int(os.path.join(folder, "pids.current"), read=read),
        )

    def _kill_group(self, key):
        kill_file = os.path.join(self.base, key, "cgroup.kill")
        if os.path.exists(kill_file):
            try:
                # atomic: forks racing the kill are caught too (Linux 5.14)
                write_text(kill_file, 1)
                return
            except OSError:
                pass
        super()._kill_group(key)


class CgroupV1(_CgroupBackend):
    """Legacy hierarchies: memory, cpu and cpuacct (separate or co-mounted), pids."""

    name = "cgroup-v1"
    required = ("memory", "cpu", "cpuacct")
    optional = ("pids",)

    def __init__(self, hierarchies, parent="classroomhub", log=None):
        """*hierarchies*: {controller: (mount point, this process's path in it)}."""
        super().__init__(log=log)
        self.bases = {c: group_path(mount, own, parent) for c, (mount, own) in hierarchies.items()}
        self.primary_base = self.bases["memory"]

    @classmethod
    def from_host(cls, parent="classroomhub", log=None):
        own = own_cgroups()
        hierarchies = {}
        for mount, fstype, options in mountinfo():
            if fstype != "cgroup":
                continue
            for controller in cls.required + cls.optional:
                if controller in options and controller in own:
                    hierarchies[controller] = (mount, own[controller])
        missing = [c for c in cls.required if c not in hierarchies]
        if missing:
            raise EnforcementUnavailable(f"no cgroup v1 hierarchy for {', '.join(missing)}")
        backend = cls(hierarchies, parent, log=log)
        for folder in set(backend.bases.values()):
            try:
                backend.make_dir(folder)
            except OSError as e:
                raise EnforcementUnavailable(f"cannot create {folder}: {e.strerror}") from None
        return backend

    def describe(self):
        return (
            f"cgroup v1 under {self.primary_base} "
            f"(memory.limit_in_bytes, cpu.cfs_quota_us{', pids.max' if 'pids' in self.bases else ''})"
        )

    def _dir(self, controller, key):
        return os.path.join(self.bases[controller], key)

    def group_dirs(self, key):
        return sorted({self._dir(c, key) for c in self.bases})

    def parent_dirs(self):
        return sorted(set(self.bases.values()))

    def create(self, key, limits):
        for folder in self.group_dirs(key):
            self.make_dir(folder)
        mem_dir = self._dir("memory", key)
        mem = limits.mem_bytes or -1
        memsw = os.path.join(mem_dir, "memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw)
        # memsw must stay >= limit: lift it first, then set both
        if has_memsw:
            write_text(memsw, -1)
        write_text(os.path.join(mem_dir, "memory.limit_in_bytes"), mem)
        if has_memsw and limits.mem_bytes and not limits.swap:
            write_text(memsw, mem)
        cpu_dir = self._dir("cpu", key)
        write_text(os.path.join(cpu_dir, "cpu.cfs_period_us"), CPU_PERIOD_US)
        quota = int(limits.cpu * CPU_PERIOD_US) if limits.cpu else -1
        write_text(os.path.join(cpu_dir, "cpu.cfs_quota_us"), quota)
        if "pids" in self.bases:
            write_text(os.path.join(self._dir("pids", key), "pids.max"), limits.pids or "max")

    def attach_files(self, key):
        return [os.path.join(d, "cgroup.procs") for d in self.group_dirs(key)]

    def set_budget(self, total, high_fraction=0.0):
        folder = self.bases["memory"]
        hierarchy = os.path.join(folder, "memory.use_hierarchy")
        if total and read_int(hierarchy, 1) != 1:
            # without it the servers' usage is not charged to this folder at
            # all; the kernel accepts the change only while it has no groups
            write_text(hierarchy, 1)
        limit = os.path.join(folder, "memory.limit_in_bytes")
        memsw = os.path.join(folder, "memory.memsw.limit_in_bytes")
        has_memsw = os.path.exists(memsw)
        if has_memsw:  # memsw must stay >= limit: lift it first
            write_text(memsw, -1)
        write_text(limit, total or -1)
        if has_memsw and total:
            write_text(memsw, total)  # swap does not extend the budget
        return True

    def budget_usage(self):
        folder = self.bases["memory"]
        used = read_int(os.path.join(folder, "memory.usage_in_bytes"))
        inactive = read_keyed(os.path.join(folder, "memory.stat")).get("total_inactive_file", 0)
        limit = read_int(os.path.join(folder, "memory.limit_in_bytes"))
        # "no limit" reads as the largest page-aligned long
        return max(used - inactive, 0), (0 if limit >= 1 << 62 else limit)

    def usage(self, key):
        mem_dir = self._dir("memory", key)
        read = self.files.read
        procs = 0
        if "pids" in self.bases:
            procs = read_int(os.path.join(self._dir("pids", key), "pids.current"), read=read)
        return Usage(
            mem_bytes=read_int(os.path.join(mem_dir, "memory.usage_in_bytes"), read=read),
            mem_peak_bytes=read_int(os.path.join(mem_dir, "memory.max_usage_in_bytes"), read=read),
            cpu_seconds=read_int(os.path.join(self._dir("cpuacct", key), "cpuacct.usage"), read=read) / 1e9,
            # oom_kill in memory.oom_control needs Linux 4.13
            oom_kills=read_keyed(os.path.join(mem_dir, "memory.oom_control"), read=read).get("oom_kill", 0),
            procs=procs,
        )
