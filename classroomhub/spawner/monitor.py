"""Watching a running server: usage samples, OOM counts, the psutil
watchdog's rounds, and stopping it when it is idle or too old.

One asyncio task per running server (:meth:`Monitoring._monitor`); what
counts as idle is decided by :mod:`.culling`.

Interactive first: every server has its own CPU group, so under contention
each gets the same share of the cores, whatever it runs. A server that is
starting gets more (someone is waiting for it). A server that kept a
core busy for `cpu_busy_seconds` (a loop, a long fit: running or waiting for
a core, from the processes' schedstat) is moved to a low CPU weight until it
pauses, so a student whose cell takes a second is not slowed
down by it; on an otherwise idle machine it still gets every free cycle.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from datetime import timezone

from traitlets import Dict, Float, Integer, TraitError, validate
from traitlets.config import LoggingConfigurable

from ..servers import stop_server
from . import metrics
from .cgroupfs import write_text
from .culling import IdleTracker

#: cgroup v2's default cpu.weight; v1's default cpu.shares (1024) is the same weight
DEFAULT_CPU_WEIGHT = 100


class Monitoring(LoggingConfigurable):
    """ClassroomSpawner's monitor and culling of its server (a mixin of it;
    uses the spawner's `host`, `backend`, `group_key` and `_run`)."""

    idle_timeout = Integer(
        3600,
        help="Seconds without hub activity and with CPU use below `idle_cpu_fraction` before the server is stopped; 0 never.",
    ).tag(config=True)

    max_age = Integer(
        0,
        help="Seconds after which the server is stopped even if busy; 0 never.",
    ).tag(config=True)

    idle_cpu_fraction = Float(
        0.05,
        help="""Average CPU use (in cores) over the idle timeout below which a
        server with no hub activity counts as idle. A silent computation uses
        far more, an idle jupyter server and kernel far less.""",
    ).tag(config=True)

    watchdog_interval = Float(
        2.0,
        help="""Seconds between memory checks of the psutil watchdog (used only
        when no cgroup is writable; the kernel enforces cgroup limits at once).""",
    ).tag(config=True)

    monitor_interval = Float(
        10.0,
        help="Seconds between usage samples, OOM checks, watchdog rounds and cull decisions.",
    ).tag(config=True)

    cpu_busy_seconds = Integer(
        60,
        help="""Interactive first: a server whose processes asked for at least
        `cpu_busy_fraction` of a core (of its `cpu_limit` if that is lower)
        between every two checks for this many seconds (running or waiting
        for a core) gets `cpu_busy_weight` until it asks for less, so other
        students' cells run first when the cores are short. A student
        between cells pauses; a loop or a long fit does not. 0 keeps every
        server at the same weight.""",
    ).tag(config=True)

    cpu_busy_fraction = Float(
        0.8,
        help="Share of a core (or of `cpu_limit`, if lower) above which a server counts as busy for `cpu_busy_seconds`.",
    ).tag(config=True)

    cpu_busy_share = Float(
        0.75,
        help="""Share of the last `cpu_busy_seconds` in which a server must have
        asked for `cpu_busy_fraction` of a core (judged between every two
        checks) to count as busy. Below 1, pausing for one check now and then
        does not keep a loop at the usual weight; a student between cells
        pauses far more than that.""",
    ).tag(config=True)

    @validate("cpu_busy_share")
    def _validate_cpu_busy_share(self, proposal):
        if not 0 < proposal.value <= 1:
            raise TraitError("cpu_busy_share must be above 0 and at most 1")
        return proposal.value

    cpu_busy_weight = Integer(
        10,
        help="""CPU weight of a busy server (see `cpu_busy_seconds`) against the
        others' 100 (cgroup v2 ``cpu.weight``; cgroup v1 ``cpu.shares`` is this
        x 1024 / 100). Weights matter only while the cores are short: a busy
        server alone on the machine still gets all it may use.""",
    ).tag(config=True)

    @validate("cpu_busy_weight")
    def _validate_cpu_busy_weight(self, proposal):
        if not 1 <= proposal.value <= 10000:
            raise TraitError("cpu_busy_weight must be between 1 and 10000 (100: the others' weight)")
        return proposal.value

    cpu_start_weight = Integer(
        400,
        help="""CPU weight of a server while it starts (the others have 100):
        a student waiting for their server is interactive too, and a start
        is about two seconds of CPU that a login wave's other work would
        otherwise stretch out. From the next check after it is ready it has
        the usual weight. 100 gives it no precedence.""",
    ).tag(config=True)

    @validate("cpu_start_weight")
    def _validate_cpu_start_weight(self, proposal):
        if not 1 <= proposal.value <= 10000:
            raise TraitError("cpu_start_weight must be between 1 and 10000 (100: the others' weight)")
        return proposal.value

    cpu_start_weight_seconds = Float(
        30,
        help="""Longest a start keeps `cpu_start_weight`, from the moment its
        process runs (about twice a start on a loaded machine): a server that
        keeps itself from getting ready, hogging a core meanwhile, has the
        usual weight after this, and is judged busy like any other.""",
    ).tag(config=True)

    usage = Dict(help="The last usage sample (see `usage_report`).")

    #: the CPU weight this server's group has now (100: the default; None: unknown)
    cpu_weight = DEFAULT_CPU_WEIGHT

    _monitor_task = None
    _tracker = None
    _demand = None
    #: after a hub restart, the monitor first applies the settings a start would
    _restore_settings = False

    def _start_monitor(self, fresh=True):
        self.host.running.add(self)
        started = self._run.get("started")
        if started is None and self.orm_spawner is not None:
            started = timestamp(self.orm_spawner.started)
        self._tracker = IdleTracker(started or time.time())
        self._demand = IdleTracker(started or time.time())  # CPU used + waited for (cpu_demand_seconds)
        if fresh:
            self._oom_base = 0
        self._adjusted, self._adjusted_to = set(), None
        # a new group has the default; one found after a hub restart is set at the first check
        self.cpu_weight = DEFAULT_CPU_WEIGHT if fresh else None
        if self._monitor_task is None:
            self._monitor_task = asyncio.ensure_future(self._monitor())

    def _stop_monitor(self):
        task, self._monitor_task = self._monitor_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _monitor(self):
        next_check = 0.0
        me = asyncio.current_task()
        if self._restore_settings:
            # after a hub restart: the same settings a start would apply
            self._restore_settings = False
            try:
                await self.apply_group_overrides()
                self.backend.adopt(self.group_key, self.pid, self.limits)
            except Exception:
                self.log.exception("ClassroomSpawner: settings of %s not restored", self._log_name)
        # a check can stop this very server (pressure, idleness): stop() cannot
        # cancel the task it runs in, so the loop ends once it is not the monitor
        while self._monitor_task is me:
            now = time.time()
            try:
                if now >= next_check:
                    next_check = now + self.monitor_interval
                    await self.check(now)
                else:
                    self._watchdog_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("ClassroomSpawner: check of %s failed", self._log_name)
            # the kernel enforces cgroup limits; the psutil watchdog must poll often
            polling = self.backend.name == "psutil"
            await asyncio.sleep(min(self.monitor_interval, self.watchdog_interval) if polling else self.monitor_interval)

    def _watchdog_round(self):
        killed = self.backend.enforce(self.group_key, self.pid)
        if killed:
            self._note_oom((self._oom_base or 0) + len(killed))

    async def check(self, now=None):
        """One round: sample usage, enforce, count OOM kills, decide culling."""
        now = now or time.time()
        backend, key = self.backend, self.group_key
        backend.enforce(key, self.pid)
        usage = backend.usage(key)
        self._note_oom(usage.oom_kills)
        usage.oom_kills = self.oom_kills
        pids = backend.pids(key)
        idle = self.idle_seconds(now)
        self._protect_server(pids, idle=idle is not None and idle >= self.pressure_min_idle)
        keep = max(self.idle_timeout, self.cpu_busy_seconds) + 2 * self.monitor_interval
        self._tracker.add(now, usage.cpu_seconds, self.idle_cpu_fraction, keep)
        if self.cpu_busy_seconds:
            self._demand.add(now, cpu_demand_seconds(pids), float("inf"), self.cpu_busy_seconds + 2 * self.monitor_interval)
        self._prioritize(now)
        self.usage = {**usage.to_dict(), "sampled": now, "cpu_weight": self.cpu_weight}
        metrics.record(self, usage)
        reason = self._tracker.cull_reason(
            now, timestamp(self.orm_spawner.last_activity), self.idle_timeout, self.max_age, self.idle_cpu_fraction
        )
        if reason:
            self._cull(reason)
        else:
            await self.relieve_pressure(now)

    def _prioritize(self, now):
        """Interactive first: a high CPU weight while starting, a low one
        while busy for `cpu_busy_seconds`."""
        started = self._tracker.started if self._tracker is not None else now
        if self.pending == "spawn" and now - started < self.cpu_start_weight_seconds:
            # the start's own CPU (stretched out by a login wave) is not a busy
            # server: its demand is counted from the first check after it
            self._demand = IdleTracker(now)
            if self.cpu_weight != self.cpu_start_weight and set_cpu_weight(self.backend, self.group_key, self.cpu_start_weight):
                self.cpu_weight = self.cpu_start_weight
            return
        if not self.cpu_busy_seconds and self.cpu_weight == DEFAULT_CPU_WEIGHT:
            return
        # busy by what it asks for, not what it got: under contention a loop
        # gets a fraction of a core and waits the rest
        threshold = self.cpu_busy_fraction * min(self.cpu_limit or 1.0, 1.0)
        share = self._demand.busy_share(now, self.cpu_busy_seconds, threshold) if self.cpu_busy_seconds else None
        busy = share is not None and share >= self.cpu_busy_share
        weight = self.cpu_busy_weight if busy else DEFAULT_CPU_WEIGHT
        if weight == self.cpu_weight or not set_cpu_weight(self.backend, self.group_key, weight):
            return
        previous, self.cpu_weight = self.cpu_weight, weight
        if busy:  # (the end of a start's precedence is not worth a line)
            self.log.info(
                "CPU: %s asked for at least %.2f cores in %.0f%% of the last %s s: weight %s (others 100) until it pauses",
                self._log_name,
                threshold,
                100 * share,
                self.cpu_busy_seconds,
                weight,
            )
        elif previous == self.cpu_busy_weight:
            self.log.info("CPU: %s paused: weight %s again", self._log_name, weight)

    def idle_seconds(self, now=None):
        if self._tracker is None:
            return None
        return self._tracker.idle_seconds(now or time.time(), timestamp(self.orm_spawner.last_activity))

    def _cull(self, reason):
        self.log.info("Culling %s: %s", self._log_name, reason)
        self.host.in_background(asyncio.ensure_future(stop_server(self.user, self.name, self.log, reason)))

    def usage_report(self):
        """What admins, instructors and the usage API see of this server."""
        return {
            "user": self.user.name,
            "server": self.name,
            "tier": self.tier,
            "enforcement": self.backend.name,
            "mem_limit": self.mem_limit or None,
            "cpu_limit": self.cpu_limit or None,
            "idle_seconds": self.idle_seconds(),
            **self.usage,
            "oom_kills": self.oom_kills,
            "oom_kills_total": self.oom_kills_total,
        }


def cpu_demand_seconds(pids):
    """Seconds the processes *pids* ran plus waited to run on a CPU (their
    /proc/PID/schedstat): what they asked of the cores, whoever got them."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat", "rb") as f:
                ran, waited = f.read().split()[:2]
        except (OSError, ValueError):
            continue  # exited meanwhile, or a kernel without schedstats
        total += int(ran) + int(waited)
    return total / 1e9


def set_cpu_weight(backend, key, weight):
    """Write *weight* (cgroup v2 scale, 100 the default) into the group's
    ``cpu.weight`` (v2) or ``cpu.shares`` (v1, x 1024 / 100); False where
    the backend has no CPU group (psutil, none) or the write fails."""
    for folder in getattr(backend, "group_dirs", lambda key: [])(key):
        for name, value in (("cpu.weight", weight), ("cpu.shares", max(2, weight * 1024 // DEFAULT_CPU_WEIGHT))):
            path = os.path.join(folder, name)
            if not os.path.exists(path):
                continue
            try:
                write_text(path, value)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.EINVAL):
                    raise
                return False
            return True
    return False


def timestamp(dt):
    """A naive-UTC datetime from the hub's database as a Unix time."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
