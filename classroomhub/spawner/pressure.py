"""Host memory pressure: below `memory_reserve` of MemAvailable, idle servers
are stopped, idlest first; a start that cannot be made room for is refused.

Monitors check the host at most once per `monitor_interval` between them
(the time is kept in the process's :class:`.host.Host`); a start always checks.
"""

from __future__ import annotations

import asyncio
import time

from traitlets import Integer, Unicode, validate
from traitlets.config import LoggingConfigurable

from ..servers import stop_server
from ..units import human_bytes
from .culling import idlest_first, mem_available
from .refusal import SpawnRefused


class MemoryPressure(LoggingConfigurable):
    """ClassroomSpawner's share in relieving memory pressure (a mixin of it;
    uses the spawner's `host` and the monitor's idleness)."""

    memory_reserve = Integer(
        512 * 1024**2,
        help="""Bytes of the host's MemAvailable to keep free. Below it, idle
        servers are stopped idlest first; a new server is refused if that does
        not free enough.""",
    ).tag(config=True)

    @validate("memory_reserve")
    def _validate_memory_reserve(self, proposal):
        if proposal.value < 0:
            raise ValueError("memory_reserve must be >= 0")
        return proposal.value

    pressure_min_idle = Integer(
        300,
        help="""Under memory pressure, this server may be stopped once idle (by
        activity and CPU) for this many seconds.""",
    ).tag(config=True)

    meminfo_path = Unicode(
        "/proc/meminfo",
        help="Where MemAvailable is read (tests point it at a file).",
    ).tag(config=True)

    async def make_room(self):
        """Before a start: stop idle servers until the reserve is free, or
        refuse the start (503) if they cannot free it."""
        await self._relieve_pressure(time.time(), spawning=True)

    async def relieve_pressure(self, now):
        """From a monitor: stop idle servers while the reserve is not free
        (one host check per `monitor_interval` for all servers)."""
        host = self.host
        if now - host.pressure_checked >= self.monitor_interval:
            host.pressure_checked = now
            await self._relieve_pressure(now, spawning=False)

    async def _relieve_pressure(self, now, spawning):
        if not self.memory_reserve:
            return
        available = mem_available(self.meminfo_path)
        if available >= self.memory_reserve:
            return
        running = list(self.host.running)
        stopping = [s for s in running if s.pending == "stop"]
        if stopping and not spawning:
            return  # memory is about to be freed: do not stop a second server for it
        if stopping:
            # a start waits for those stops (a cull may have just begun one)
            # before it judges whether another server must go
            await asyncio.wait([asyncio.ensure_future(_stopped(s)) for s in stopping], timeout=30)
            available = mem_available(self.meminfo_path)
            if available >= self.memory_reserve:
                return
        for victim in idlest_first(list(self.host.running), now):
            self.log.warning(
                "Memory pressure (%s available, %s reserved): stopping idle %s",
                human_bytes(available),
                human_bytes(self.memory_reserve),
                victim._log_name,
            )
            await stop_server(victim.user, victim.name, self.log, "host memory pressure")
            available = mem_available(self.meminfo_path)
            if available >= self.memory_reserve or not spawning:
                return
        if spawning and available < self.memory_reserve:
            raise SpawnRefused(
                503,
                f"The server is short of memory ({human_bytes(available)} available, "
                f"{human_bytes(self.memory_reserve)} kept in reserve) and no idle server can be "
                "stopped to make room. Please try again in a few minutes."
            )


async def _stopped(spawner, poll=0.05):
    while spawner.pending == "stop":
        await asyncio.sleep(poll)
