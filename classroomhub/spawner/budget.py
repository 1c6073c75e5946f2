"""One memory budget for all servers together.

Every server's group lives in the folder `cgroup_parent`; the hub, the proxy
and the services it starts stay in the hub's own cgroup, above it. A limit on
that folder holds the servers together, so students can push only their own
servers into the OOM killer, never the host (and never the hub).
"""

from __future__ import annotations

from jupyterhub.traitlets import ByteSpecification
from traitlets import Float, TraitError, validate
from traitlets.config import LoggingConfigurable


class ServersBudget(LoggingConfigurable):
    """ClassroomSpawner's budget for all servers (a mixin of it; uses the
    spawner's `host` and `backend`)."""

    servers_memory_budget = ByteSpecification(
        0,
        help="""Memory of all servers of this hub together, in bytes or with a
        suffix (``8G``); 0 for no common limit. Set on the cgroup holding every
        server's group (`cgroup_parent`): cgroup v1 ``memory.limit_in_bytes``,
        cgroup v2 ``memory.max`` (and ``memory.high`` at
        `servers_memory_high_fraction` of it). A server past it has its
        largest process killed by the kernel; the hub, the proxy and the
        classroom service are outside it. The psutil watchdog cannot enforce
        it. Memory pressure relief also keeps `memory_reserve` of it free.""",
    ).tag(config=True)

    @validate("servers_memory_budget")
    def _validate_servers_memory_budget(self, proposal):
        value = proposal.value or 0
        if value < 0:
            raise TraitError("servers_memory_budget must be >= 0 (0: no common limit)")
        return value

    servers_memory_high_fraction = Float(
        0.95,
        help="""cgroup v2 only: reclaim (throttle) the servers' budget from this
        fraction of `servers_memory_budget` (memory.high), before the OOM
        killer acts at the budget. 0 leaves memory.high unset.""",
    ).tag(config=True)

    @validate("servers_memory_high_fraction")
    def _validate_servers_memory_high_fraction(self, proposal):
        if not 0 <= proposal.value <= 1:
            raise TraitError("servers_memory_high_fraction must be between 0 and 1")
        return proposal.value

    def apply_budget(self):
        """Set the budget on this server's backend (once per process and value)."""
        backend = self.backend
        if backend.enforcing or self.servers_memory_budget:
            self.host.apply_budget(backend, self.servers_memory_budget, self.servers_memory_high_fraction, self.log)

    def budget_usage(self):
        """``(used, limit)`` of the servers' budget, or None without one."""
        if not self.servers_memory_budget:
            return None
        reading = self.backend.budget_usage()
        if reading is None or not reading[1]:
            return None
        return reading
