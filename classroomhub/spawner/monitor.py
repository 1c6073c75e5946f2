"""Watching a running server: usage samples, OOM counts, the psutil
watchdog's rounds, and stopping it when it is idle or too old.

One asyncio task per running server (:meth:`Monitoring._monitor`); what
counts as idle is decided by :mod:`.culling`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timezone

from traitlets import Dict, Float, Integer
from traitlets.config import LoggingConfigurable

from ..servers import stop_server
from . import metrics
from .culling import IdleTracker


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

    usage = Dict(help="The last usage sample (see `usage_report`).")

    _monitor_task = None
    _tracker = None
    #: after a hub restart, the monitor first applies the settings a start would
    _restore_settings = False

    def _start_monitor(self, fresh=True):
        self.host.running.add(self)
        started = self._run.get("started")
        if started is None and self.orm_spawner is not None:
            started = timestamp(self.orm_spawner.started)
        self._tracker = IdleTracker(started or time.time())
        if fresh:
            self._oom_base = 0
        self._adjusted = set()
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
        self._protect_server(backend.pids(key))
        self._tracker.add(now, usage.cpu_seconds, self.idle_cpu_fraction, self.idle_timeout + 2 * self.monitor_interval)
        self.usage = {**usage.to_dict(), "sampled": now}
        metrics.record(self, usage)
        reason = self._tracker.cull_reason(
            now, timestamp(self.orm_spawner.last_activity), self.idle_timeout, self.max_age, self.idle_cpu_fraction
        )
        if reason:
            self._cull(reason)
        else:
            await self.relieve_pressure(now)

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


def timestamp(dt):
    """A naive-UTC datetime from the hub's database as a Unix time."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
