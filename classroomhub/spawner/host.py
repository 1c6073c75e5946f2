"""What the ClassroomSpawners of one hub process share about their host.

One :class:`Host` per hub process (:meth:`Host.current`) holds the
enforcement backends, the servers running now (memory-pressure relief picks
among them), which cgroup parents were swept of stale groups, and the culls
in flight. A test that needs a fresh hub process's view calls
:meth:`Host.fresh`.
"""

from __future__ import annotations

import logging
import weakref

from jupyterhub import orm

from ..units import human_bytes
from .detection import detect
from .enforcement import Enforcement, EnforcementUnavailable, group_key


class Host:
    """State of this hub process's servers on this host."""

    _current = None

    def __init__(self):
        #: ``{(enforcement, cgroup_parent): backend}``, made at first use
        self.backends = {}
        #: running ClassroomSpawners (for memory pressure and the usage API)
        self.running = weakref.WeakSet()
        #: cgroup parents whose stale groups were removed (once per process)
        self.swept = set()
        #: background stops (culls) in flight, referenced until done
        self.tasks = set()
        #: when a monitor last checked the host's memory (one check per interval for all servers)
        self.pressure_checked = 0.0
        #: ``{backend: (total, high fraction)}`` of the servers' budget set on each backend's parent
        self.budgets = {}

    @classmethod
    def current(cls):
        """This process's Host, made at first use."""
        if cls._current is None:
            cls._current = cls()
        return cls._current

    @classmethod
    def fresh(cls):
        """Replace this process's Host with a new one, as a restarted hub
        starts with (tests); returns it."""
        cls._current = cls()
        return cls._current

    def backend(self, preference, cgroup_parent, log=None):
        """The backend for *preference* and *cgroup_parent*, detected once.

        A *preference* this host does not offer gives a stand-in that enforces
        nothing, with ``unavailable`` saying why (the spawner then refuses to
        start), so the error is logged once instead of at each use.
        """
        key = (preference, cgroup_parent)
        if key not in self.backends:
            log = log or logging.getLogger(__name__)
            try:
                backend, skipped = detect(preference, cgroup_parent, log=log)
            except EnforcementUnavailable as e:
                log.error("ClassroomSpawner: enforcement %r unavailable: %s", preference, e)
                backend, skipped = Enforcement(log=log), []
                backend.unavailable = str(e)
            for reason in skipped:
                log.info("ClassroomSpawner: skipped %s", reason)
            self.backends[key] = backend
        return self.backends[key]

    async def sweep_stale(self, backend, cgroup_parent, db, keep, log):
        """Remove the groups of servers that no longer run (a hub that stopped
        without stopping them, then a restart), once per *cgroup_parent*:
        every group of *backend* that no running server in the hub's
        database *db* owns, except *keep* (the group being started)."""
        if cgroup_parent in self.swept or not backend.enforcing:
            return
        self.swept.add(cgroup_parent)
        live = {
            group_key(spawner.user.name, spawner.name)
            for spawner in db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None))
        }
        for key in backend.keys():
            if key not in live and key != keep:
                log.info("ClassroomSpawner: removing stale group %s", key)
                await backend.destroy(key)

    def apply_budget(self, backend, total, high_fraction, log):
        """Set the servers' memory budget on *backend*'s parent folder once per
        hub process and again when the configuration changes (a restarted hub
        sets it afresh, so a changed value takes effect)."""
        wanted = (total, high_fraction)
        if self.budgets.get(backend) == wanted:
            return
        self.budgets[backend] = wanted  # tried once per value: no error at every check
        try:
            done = backend.set_budget(total, high_fraction)
        except OSError as e:
            log.error("ClassroomSpawner: cannot set the servers' memory budget of %s: %s", human_bytes(total), e)
            return
        if done:
            log.info("ClassroomSpawner: all servers together limited to %s (%s)", human_bytes(total), backend.describe())
        elif total:
            log.warning(
                "ClassroomSpawner: %s cannot hold servers to a common memory budget; "
                "servers_memory_budget (%s) is not enforced, only memory_reserve of the host",
                backend.name,
                human_bytes(total),
            )

    def in_background(self, task):
        """Keep *task* (e.g. a cull's stop) referenced until it is done."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task
