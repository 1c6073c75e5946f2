"""Watching a server's Slurm job: usage from sstat, idle culling, and the
owner told when Slurm ended the job itself.

The usage sample is the one local servers give (:class:`..spawner.Usage`),
reported through the same `usage_report` (the usage API and
``classroomhub usage``) and the same Prometheus metrics; idleness is
decided by the same :class:`..spawner.culling.IdleTracker` (no hub activity
*and* CPU use below `idle_cpu_fraction`). A job that ends without the hub
stopping it (time limit, an operator's scancel, node failure, preemption,
out of memory) is recorded in the spawner's state and shown to its owner on
the hub's pages (:func:`..spawner.notices.ended_notice`), as an OOM kill is.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

from traitlets import Dict, Float, Integer, List
from traitlets.config import LoggingConfigurable

from ..servers import stop_server
from ..spawner import metrics
from ..spawner.culling import IdleTracker
from ..spawner.host import Host
from ..spawner.monitor import timestamp

#: end states of a job that Slurm ended itself, and what its owner is told
ENDED_BY_SLURM = {
    "TIMEOUT": "reached its time limit",
    "CANCELLED": "was cancelled on the cluster (by an operator), not from this hub",
    "NODE_FAIL": "was ended because its cluster node failed",
    "PREEMPTED": "was preempted by a job of higher priority",
    "OUT_OF_MEMORY": "ran out of memory: the job as a whole reached its memory limit",
    "BOOT_FAIL": "could not start because its cluster node failed to boot",
    "DEADLINE": "reached its deadline",
}


def end_message(server_name, job_id, status_line, now=None):
    """The owner's notice for a job whose last state line (``STATE REASON
    NODE``) says Slurm ended it; "" if it ended otherwise (completed,
    or the server exited)."""
    state = (status_line.split() or [""])[0]
    what = ENDED_BY_SLURM.get(state)
    if not what:
        return ""
    when = datetime.fromtimestamp(now or time.time(), timezone.utc).strftime("%H:%M UTC")
    server = f"Server {server_name!r}" if server_name else "Your server"
    return (
        f"{server} {what} (Slurm job {job_id}, {state}, noticed at {when}). What was not saved in its "
        "kernels is lost; you can start it again."
    )


class SlurmJobWatch(LoggingConfigurable):
    """Usage, culling and end notices of a ClassroomSlurmSpawner's job (a mixin
    of it; uses its `job_usage`, `job_id` and `job_status`)."""

    idle_timeout = Integer(
        3600,
        help="""Seconds without hub activity and with CPU use (from sstat) below
        `idle_cpu_fraction` before the job is cancelled; 0 never.""",
    ).tag(config=True)

    idle_cpu_fraction = Float(
        0.05,
        help="""Average CPU use (in cores) over the idle timeout below which a
        server with no hub activity counts as idle.""",
    ).tag(config=True)

    monitor_interval = Float(
        30.0,
        help="""Seconds between usage samples of the job (one sstat each, which
        asks the job's node) and cull decisions.""",
    ).tag(config=True)

    usage = Dict(help="The last usage sample (see `usage_report`).")

    ended = List(
        help="""``[unix time, message]`` when Slurm last ended this server's
        job itself, kept for the notice on the hub's pages
        (`notices.NOTICE_SECONDS`); persisted across stops and hub restarts.""",
    )

    _monitor_task = None
    _tracker = None
    #: the hub is stopping the job: its end is not Slurm's doing
    _stopping = False
    #: after a hub restart, the monitor first applies the settings a start would
    _restore_settings = False

    def _start_monitor(self, started=None):
        if started is None and self.orm_spawner is not None:
            started = timestamp(self.orm_spawner.started)
        self._tracker = IdleTracker(started or time.time())
        self._stopping = False
        if self._monitor_task is None:
            self._monitor_task = asyncio.ensure_future(self._monitor())

    def _stop_monitor(self):
        task, self._monitor_task = self._monitor_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        metrics.forget(self)

    async def _monitor(self):
        me = asyncio.current_task()
        if self._restore_settings:
            self._restore_settings = False
            await self.apply_group_overrides()
        while self._monitor_task is me:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("ClassroomSlurmSpawner: check of job %s of %s failed", self.job_id, self.user.name)
            await asyncio.sleep(self.monitor_interval)

    async def check(self, now=None):
        """One round: sample the job's usage, decide culling."""
        usage = await self.job_usage()
        if usage is None or self._stopping:
            return
        now = now or time.time()
        self._tracker.add(now, usage.cpu_seconds, self.idle_cpu_fraction, self.idle_timeout + 2 * self.monitor_interval)
        self.usage = {**usage.to_dict(), "sampled": now}
        metrics.record(self, usage)
        # max_age is the job's --time: Slurm ends it, and the owner is told why
        reason = self._tracker.cull_reason(
            now, timestamp(self.orm_spawner.last_activity), self.idle_timeout, 0, self.idle_cpu_fraction
        )
        if reason:
            self.log.info("Culling %s (job %s): %s", self.user.name, self.job_id, reason)
            Host.current().in_background(asyncio.ensure_future(stop_server(self.user, self.name, self.log, reason)))

    def idle_seconds(self, now=None):
        if self._tracker is None:
            return None
        return self._tracker.idle_seconds(now or time.time(), timestamp(self.orm_spawner.last_activity))

    def usage_report(self):
        """What admins, instructors and the usage API see of this server (the
        keys of ClassroomSpawner's; processes and OOM kills: unknown)."""
        return {
            "user": self.user.name,
            "server": self.name,
            "tier": self.tier,
            "enforcement": "slurm",
            "job_id": self.job_id,
            "mem_limit": self.mem_limit or None,
            "cpu_limit": self.cpu_limit or None,
            "idle_seconds": self.idle_seconds(),
            **self.usage,
            "procs": None,
            "oom_kills": None,
            "oom_kills_total": None,
        }

    def note_job_end(self):
        """The job is gone: if Slurm ended it, record why for the owner."""
        message = "" if self._stopping else end_message(self.name, self.job_id, self.job_status)
        if not message:
            return
        self.log.warning("Job %s of %s ended by Slurm: %s", self.job_id, self.user.name, self.job_status)
        self.ended = [time.time(), message]
        if self.orm_spawner is not None:
            self.orm_spawner.state = self.get_state()
            self.user.db.commit()
