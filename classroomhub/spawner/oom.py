"""Out of memory: whom the kernel's OOM killer picks in a server, and
counting its kills for the owner, the admins and the metrics.

The backend's counter of kills in the group (memory.events, the watchdog's
own) starts at 0 with the group; a kill is counted once, in this run's
`oom_kills` and the lifetime `oom_kills_total`, and recorded as an event for
the notice on the hub's pages (:mod:`.notices`).
"""

from __future__ import annotations

import errno
import time

from traitlets import Integer, List
from traitlets.config import LoggingConfigurable

from ..units import human_bytes
from . import metrics, notices


class OomAccounting(LoggingConfigurable):
    """ClassroomSpawner's OOM priorities and kill counts (a mixin of it;
    uses the spawner's `backend`, `group_key`, `_run` and budget)."""

    server_oom_score_adj = Integer(
        0,
        help="""oom_score_adj of the jupyter server process; 0 leaves it alone.
        A negative value protects the server further but needs CAP_SYS_RESOURCE
        (not granted in many containers; ignored where refused).""",
    ).tag(config=True)

    kernel_oom_score_adj = Integer(
        300,
        help="""oom_score_adj given to every other process of the server (kernels,
        terminals) at each check, so the OOM killer picks them before the
        server that reports the kill. Raising needs no privilege.""",
    ).tag(config=True)

    idle_kernel_oom_score_adj = Integer(
        800,
        help="""oom_score_adj of the kernels and terminals of a server that has
        been idle for `pressure_min_idle` seconds (instead of
        `kernel_oom_score_adj`): when the servers' budget is full, the OOM
        killer then takes an idle student's kernel before the kernel of one
        at work, whatever their sizes.""",
    ).tag(config=True)

    oom_kills = Integer(0, help="Processes of this server's current run killed for memory (persisted; 0 at each start).")

    oom_kills_total = Integer(0, help="Processes killed for memory over every run of this server (persisted).")

    oom_events = List(
        help="""Recent OOM kills as ``[unix time, count, memory limit]`` (and
        the servers' budget fourth when that, not the limit, was reached), kept for
        the notice on the hub's pages (`notices.NOTICE_SECONDS`); persisted, and
        kept across stops and hub restarts.""",
    )

    #: the group's kill counter already counted; None: not read yet in this run
    _oom_base = None

    def _note_oom(self, counter):
        """*counter*: the group's OOM-kill count (0 when the server started)."""
        if self._oom_base is None:
            self._oom_base = counter  # state without a counter: counted before
        new = counter - self._oom_base
        if new <= 0:
            return
        self._oom_base = counter
        self.oom_kills += new
        self.oom_kills_total += new
        event = [time.time(), new, self.mem_limit or 0]
        budget = self._budget_reached()
        if budget:
            event.append(budget)  # the cause was the servers' common budget, not this limit
        self.oom_events = notices.recent(self.oom_events) + [event]
        metrics.OOM_KILLS.labels(user=self.user.name, server=self.name).inc(new)
        self.log.warning(
            "OOM: %s process(es) of %s (%s tier) killed at the %s of %s (%s this run, %s in all)",
            new,
            self._log_name,
            self.tier,
            "servers' memory budget" if budget else "memory limit",
            human_bytes(budget or self.mem_limit),
            self.oom_kills,
            self.oom_kills_total,
        )
        if self.orm_spawner is not None:
            self.orm_spawner.state = self.get_state()
            self.user.db.commit()

    def _budget_reached(self):
        """The servers' budget (bytes) if it, not this server's own limit,
        made the kernel kill: the group never came near its own limit."""
        budget = self.servers_memory_budget
        if not budget or not self.backend.enforcing:
            return 0
        if not self.mem_limit:
            return budget
        try:
            peak = self.backend.usage(self.group_key).mem_peak_bytes
        except OSError:
            return 0
        return budget if peak and peak < 0.95 * self.mem_limit else 0

    def _count_last_oom_kills(self):
        """Read the group's counter once more (the run ends): a kill since the
        last check still counts."""
        if self._oom_base is None and not self._run:
            return
        try:
            self._note_oom(self.backend.usage(self.group_key).oom_kills)
        except OSError as e:  # the group is gone already
            self.log.debug("ClassroomSpawner: no last OOM count of %s: %s", self._log_name, e)

    #: the oom_score_adj the pids in `_adjusted` were given
    _adjusted_to = None

    def _protect_server(self, pids, idle=False):
        """Make kernels and terminals, not the server, the OOM killer's choice
        (those of an *idle* server first)."""
        if self.kernel_oom_score_adj is None:
            return
        adj = self.idle_kernel_oom_score_adj if idle else self.kernel_oom_score_adj
        if adj != self._adjusted_to:
            self._adjusted = set()  # idleness changed: every kernel again
            self._adjusted_to = adj
        value = str(adj).encode()
        for pid in pids:
            if pid == self.pid or pid in self._adjusted:
                continue
            try:
                with open(f"/proc/{pid}/oom_score_adj", "wb") as f:
                    f.write(value)
            except OSError as e:
                if e.errno not in (errno.ESRCH, errno.ENOENT, errno.EACCES, errno.EPERM):
                    raise
            self._adjusted.add(pid)
        self._adjusted &= set(pids)
