"""Memory pressure: the host's MemAvailable below `memory_reserve`, or the
servers' budget (:mod:`.budget`) with less than `memory_reserve` free.

Two steps, each only on what is idle, never on a kernel or server in use:

1. below `kernel_memory_reserve` free (earlier than the servers' step), idle
   kernels are shut down through their server's API, those of servers over
   their share first, then the idlest: the server, its notebooks and the
   student's tab stay, and so does every kernel that ran something lately
   (the shorter memory is, the sooner "lately" ends); the owner is told;
2. below `memory_reserve` free, idle servers are stopped: first those using
   more than their share, then the idlest. A monitor warns the owner (a
   notice on the hub's pages) and stops the server `pressure_warning_seconds`
   later if it is still idle and the pressure lasts; a start that needs the
   room now stops idle servers at once, or is refused.

Monitors check at most once per `monitor_interval` between them (the time is
kept in the process's :class:`.host.Host`); a start always checks.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime

from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Float, Integer, List, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from ..servers import stop_server
from ..units import human_bytes
from . import notices
from .culling import idlest_first, mem_available
from .refusal import SpawnRefused

#: kernels of one server considered under pressure: a real class has a few;
#: a student's own server can claim any number
KERNELS_PER_SERVER = 64
#: seconds one request to a student's server may take (its answer is theirs)
SERVER_REQUEST_TIMEOUT = 3
#: shutdowns this close together are one line of the notice
NOTICE_MERGE_SECONDS = 60
_KERNEL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def excess(spawner, capacity, weights):
    """Bytes *spawner* uses beyond its share of *capacity*: shares are in
    proportion to the servers' memory limits (*weights*: their sum)."""
    share = capacity * (spawner.mem_limit or capacity) / (weights or 1)
    return (spawner.usage or {}).get("mem_bytes", 0) - share


def stop_order(spawners, now, capacity):
    """The servers that may be stopped under pressure, in order: idle ones
    over their share of *capacity* (the budget, else the host's memory; most
    over first), then the other idle ones, idlest first. A server in use is
    never in it."""
    idle = idlest_first(spawners, now)
    if not capacity:
        return idle
    weights = sum(s.mem_limit or capacity for s in spawners if s.active)
    over = sorted((s for s in idle if excess(s, capacity, weights) > 0), key=lambda s: -excess(s, capacity, weights))
    return over + [s for s in idle if s not in over]


class MemoryPressure(LoggingConfigurable):
    """ClassroomSpawner's share in relieving memory pressure (a mixin of it;
    uses the spawner's `host`, the budget and the monitor's idleness)."""

    memory_reserve = Integer(
        512 * 1024**2,
        help="""Bytes to keep free of the host's MemAvailable and of the
        servers' budget (`servers_memory_budget`). Below it, idle servers are
        stopped (over their share first, then idlest first); a new server is
        refused if that does not free enough. 0 turns this off.""",
    ).tag(config=True)

    @validate("memory_reserve")
    def _validate_memory_reserve(self, proposal):
        if proposal.value < 0:
            raise ValueError("memory_reserve must be >= 0")
        return proposal.value

    kernel_memory_reserve = Integer(
        1024**3,
        help="""Bytes to keep free of the servers' budget and of the host's
        MemAvailable by shutting down idle kernels (see
        `pressure_kernel_min_idle`), before `memory_reserve` stops whole
        servers. Set it above `memory_reserve`, so that kernels nobody uses
        go before anything else; 0 shuts no kernel down for memory.""",
    ).tag(config=True)

    @validate("kernel_memory_reserve")
    def _validate_kernel_memory_reserve(self, proposal):
        if proposal.value < 0:
            raise TraitError("kernel_memory_reserve must be >= 0")
        return proposal.value

    pressure_kernel_min_idle = Integer(
        180,
        help="""Under memory pressure, a kernel of this server that has run
        nothing for this many seconds may be shut down (its server and open
        tabs stay; the next cell starts a fresh kernel). A kernel that is
        running a cell never is.""",
    ).tag(config=True)

    pressure_kernel_min_idle_full = Integer(
        45,
        help="""The idle seconds after which a kernel may be shut down once no
        memory is left at all. The more memory is short, the sooner idle
        kernels go: the idle time needed falls from
        `pressure_kernel_min_idle` (`kernel_memory_reserve` only just short)
        to this (nothing free), in proportion to what is free. Kernels idle
        for a minute cost nothing to shut down, while a full budget kills the
        kernel running the largest cell. Above `pressure_kernel_min_idle`,
        that value is used.""",
    ).tag(config=True)

    @validate("pressure_kernel_min_idle_full")
    def _validate_pressure_kernel_min_idle_full(self, proposal):
        if proposal.value < 0:
            raise TraitError("pressure_kernel_min_idle_full must be >= 0")
        return proposal.value

    kernel_shutdowns = List(
        help="""``[[time, count]]`` of this server's idle kernels shut down for
        memory pressure in the last hour (persisted for the owner's notice).""",
    )

    pressure_kernel_timeout = Float(
        10,
        help="""Seconds the idle-kernel step (see `kernel_memory_reserve`) may
        take in all, for a monitor's round or a start waiting for room. The
        servers answer it, and a student controls theirs: whatever it answers
        or however slowly, the step ends by then and stopping idle servers
        (`memory_reserve`) follows.""",
    ).tag(config=True)

    @validate("pressure_kernel_timeout")
    def _validate_pressure_kernel_timeout(self, proposal):
        if proposal.value <= 0:
            raise TraitError("pressure_kernel_timeout must be > 0")
        return proposal.value

    pressure_min_idle = Integer(
        300,
        help="""Under memory pressure, this server may be stopped once idle (by
        activity and CPU) for this many seconds.""",
    ).tag(config=True)

    pressure_warning_seconds = Integer(
        120,
        help="""Under memory pressure found by a monitor, the owner of the idle
        server chosen first is warned (a notice on the hub's pages and a log
        line) and the server is stopped this many seconds later if it is still
        idle and the pressure lasts. 0 stops it at once. A start that needs
        the room does not wait: it stops idle servers at once.""",
    ).tag(config=True)

    @validate("pressure_warning_seconds")
    def _validate_pressure_warning_seconds(self, proposal):
        if proposal.value < 0:
            raise TraitError("pressure_warning_seconds must be >= 0")
        return proposal.value

    pressure_warning = List(
        help="""``[warned at, stop at]`` (unix times) while this server is
        warned that it will be stopped for memory pressure (persisted for the
        notice); empty otherwise.""",
    )

    meminfo_path = Unicode(
        "/proc/meminfo",
        help="Where MemAvailable is read (tests point it at a file).",
    ).tag(config=True)

    async def make_room(self):
        """Before a start: stop idle servers until the reserve is free, or
        refuse the start (503) if they cannot free it."""
        await self._relieve_pressure(time.time(), spawning=True)

    async def relieve_pressure(self, now):
        """From a monitor: warn, then stop, an idle server while the reserve is
        not free (one check per `monitor_interval` for all servers)."""
        host = self.host
        if now - host.pressure_checked >= self.monitor_interval:
            host.pressure_checked = now
            await self._relieve_pressure(now, spawning=False)

    def memory_free(self):
        """Bytes free for the servers: the host's MemAvailable, or the room
        left in the budget if that is less."""
        free = mem_available(self.meminfo_path)
        budget = self.budget_usage()
        return min(free, budget[1] - budget[0]) if budget else free

    def memory_shortage(self, reserve=None):
        """``(why, capacity)``: why memory is short now ("" if it is not: at
        least *reserve*, by default `memory_reserve`, is free), and the memory
        the servers share (the budget, else the host's MemTotal)."""
        reserve = self.memory_reserve if reserve is None else reserve
        available = mem_available(self.meminfo_path)
        budget = self.budget_usage()
        if budget:
            capacity = budget[1]
        else:
            try:
                capacity = mem_available(self.meminfo_path, "MemTotal")
            except ValueError:
                capacity = 0  # no shares: idlest first only
        if available < reserve:
            return f"{human_bytes(available)} available on the host, {human_bytes(reserve)} reserved", capacity
        if budget and budget[1] - budget[0] < reserve:
            used, limit = budget
            return (
                f"servers use {human_bytes(used)} of their {human_bytes(limit)} budget, {human_bytes(reserve)} reserved"
            ), capacity
        return "", capacity

    async def _relieve_pressure(self, now, spawning):
        self.apply_budget()  # at the first start of a hub process, and after a config change
        if self.kernel_memory_reserve:
            reserve = max(self.kernel_memory_reserve, self.memory_reserve)
            try:
                await asyncio.wait_for(self._shut_down_idle_kernels(now, reserve), self.pressure_kernel_timeout)
            except asyncio.TimeoutError:
                self.log.warning("Memory pressure: idle kernels not all shut down in %s s", self.pressure_kernel_timeout)
            except Exception:
                # never in the way of stopping idle servers
                self.log.exception("Memory pressure: shutting down idle kernels failed")
        if not self.memory_reserve:
            return
        why, capacity = self.memory_shortage()
        if not why:
            self._withdraw_warnings(keep=())
            return
        stopping = [s for s in self.host.running if s.pending == "stop"]
        if stopping and not spawning:
            return  # memory is about to be freed: do not stop a second server for it
        if stopping:
            # a start waits for those stops (a cull may have just begun one)
            # before it judges whether another server must go
            await asyncio.wait([asyncio.ensure_future(_stopped(s)) for s in stopping], timeout=30)
            why, capacity = self.memory_shortage()
            if not why:
                return
        order = stop_order(list(self.host.running), now, capacity)
        self._withdraw_warnings(keep=order)  # back in use: no longer warned
        if not spawning:
            if order:
                await self._warn_or_stop(order[0], why, now)
            return
        for victim in order:
            await self._stop_for_pressure(victim, why)
            why, capacity = self.memory_shortage()
            if not why:
                return
        raise SpawnRefused(
            503,
            f"The server is short of memory ({why}) and no idle server can be stopped to make room. "
            "Please try again in a few minutes."
        )

    async def _shut_down_idle_kernels(self, now, reserve):
        """Shut down idle kernels until *reserve* is free or none is left: in
        rounds, each the idlest kernel left of every server (servers over
        their share first), so one server's kernels never hold up another's.
        A server that answers wrongly, slowly or not at all is left out."""
        why, capacity = self.memory_shortage(reserve)
        if not why:
            return
        free_share = max(0.0, min(1.0, self.memory_free() / reserve))  # 1: only just short, 0: nothing free
        servers = [s for s in self.host.running if s.active and not s.pending and s.server is not None]
        lists = await asyncio.gather(*(_idle_kernels(s, now) for s in servers))
        weights = sum(s.mem_limit or capacity for s in servers) if capacity else 0
        queues = []
        for spawner, kernels in zip(servers, lists):
            needed = kernel_idle_needed(spawner, free_share)
            idle = sorted((k for k in kernels if k[0] >= needed), reverse=True)
            if idle:
                over = bool(capacity) and excess(spawner, capacity, weights) > 0
                queues.append((over, idle[0][0], spawner, idle))
        queues.sort(key=lambda q: q[:2], reverse=True)
        while queues:
            round_ = [(spawner, kernels.pop(0)) for _, _, spawner, kernels in queues]
            for spawner, (idle, kernel_id) in round_:
                self.log.warning(
                    "Memory pressure (%s): shutting down kernel %s of %s, idle for %.0f s",
                    why,
                    kernel_id,
                    spawner._log_name,
                    idle,
                )
            answers = await asyncio.gather(*(_server_api(s, f"kernels/{k}", "DELETE") for s, (_, k) in round_))
            for (spawner, _), answer in zip(round_, answers):
                if answer is not None:
                    spawner.record_kernel_shutdown(now)
            # a server that did not answer is not asked again
            queues = [q for q, answer in zip(queues, answers) if q[3] and answer is not None]
            why, _ = self.memory_shortage(reserve)
            if not why:
                return

    def record_kernel_shutdown(self, now):
        """Count one idle kernel shut down for memory, for the owner's notice."""
        shutdowns = notices.recent(self.kernel_shutdowns, now)
        if shutdowns and now - shutdowns[-1][0] < NOTICE_MERGE_SECONDS:
            shutdowns[-1] = [now, shutdowns[-1][1] + 1]
        else:
            shutdowns.append([now, 1])
        self.kernel_shutdowns = shutdowns
        self._save_state()

    async def _warn_or_stop(self, victim, why, now):
        if not victim.pressure_warning:
            if victim.pressure_warning_seconds:
                victim._set_pressure_warning([now, now + victim.pressure_warning_seconds])
                self.log.warning(
                    "Memory pressure (%s): %s warned, stopped in %s s if still idle",
                    why,
                    victim._log_name,
                    victim.pressure_warning_seconds,
                )
                return
        elif now < victim.pressure_warning[1]:
            return
        await self._stop_for_pressure(victim, why)

    async def _stop_for_pressure(self, victim, why):
        self.log.warning("Memory pressure (%s): stopping idle %s", why, victim._log_name)
        await stop_server(victim.user, victim.name, self.log, "host memory pressure")

    def _withdraw_warnings(self, keep):
        for spawner in list(self.host.running):
            if spawner.pressure_warning and spawner not in keep:
                spawner._set_pressure_warning([])

    def _set_pressure_warning(self, warning):
        """Record (or clear, with []) the warning where the notice reads it."""
        self.pressure_warning = warning
        self._save_state()

    def _save_state(self):
        if self.orm_spawner is not None:
            self.orm_spawner.state = self.get_state()
            self.user.db.commit()

    def get_state(self):
        state = super().get_state()
        if self.pressure_warning:
            state["pressure_warning"] = list(self.pressure_warning)
        shutdowns = notices.recent(self.kernel_shutdowns)
        if shutdowns:
            state["kernel_shutdowns"] = shutdowns
        return state

    def load_state(self, state):
        super().load_state(state)
        self.pressure_warning = list(state.get("pressure_warning") or []) if self.pid else []
        self.kernel_shutdowns = notices.recent(state.get("kernel_shutdowns", []))

    def clear_state(self):
        super().clear_state()
        self.pressure_warning = []


def kernel_idle_needed(spawner, free_share):
    """Seconds a kernel of *spawner* must have been idle to be shut down when
    *free_share* (0 to 1) of the kernel reserve is free: from
    `pressure_kernel_min_idle` at 1 down to `pressure_kernel_min_idle_full`
    at 0."""
    most = spawner.pressure_kernel_min_idle
    least = min(spawner.pressure_kernel_min_idle_full, most)
    return least + (most - least) * free_share


async def _server_api(spawner, path, method="GET"):
    """A request to *spawner*'s jupyter server with the server's own token
    (its ``access:servers!server`` scope lets it in): the decoded JSON
    answer, or None if the server did not answer in time, with an error, a
    redirect (never followed: it would take the token elsewhere) or not JSON."""
    url = spawner.server.url.rstrip("/") + "/api/" + path
    try:
        response = await AsyncHTTPClient().fetch(
            url,
            method=method,
            headers={"Authorization": f"token {spawner.api_token}"},
            follow_redirects=False,
            request_timeout=SERVER_REQUEST_TIMEOUT,
        )
        return json.loads(response.body) if response.body else {}
    except (HTTPClientError, OSError, ValueError) as e:
        spawner.log.info("%s %s of %s: %s", method, path, spawner._log_name, e)
        return None


async def _idle_kernels(spawner, now):
    """``[(idle seconds, kernel id)]`` of *spawner*'s kernels that are not
    running anything (jupyter_server's execution_state and last_activity);
    [] if its answer is not a list of kernels (the student controls it)."""
    kernels = await _server_api(spawner, "kernels")
    try:
        return _parse_idle_kernels(kernels or [], now)
    except (TypeError, ValueError, OverflowError) as e:
        spawner.log.warning("Memory pressure: ignoring the kernels of %s: %s", spawner._log_name, e)
        return []


def _parse_idle_kernels(kernels, now):
    if not isinstance(kernels, list):
        raise TypeError(f"a list of kernels expected, not {type(kernels).__name__}")
    found = []
    for kernel in kernels[:KERNELS_PER_SERVER]:
        if not isinstance(kernel, dict):
            raise TypeError(f"a kernel must be an object, not {type(kernel).__name__}")
        kernel_id, state, last = kernel.get("id"), kernel.get("execution_state"), kernel.get("last_activity")
        if not isinstance(kernel_id, str) or not _KERNEL_ID.fullmatch(kernel_id):
            raise ValueError(f"not a kernel id: {kernel_id!r:.80}")
        # "starting": it never ran anything since it started (no client asked it yet)
        if state not in ("idle", "starting") or not last:
            continue
        if not isinstance(last, str):
            raise TypeError(f"last_activity must be a string, not {type(last).__name__}")
        found.append((now - datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp(), kernel_id))
    return found


async def _stopped(spawner, poll=0.05):
    while spawner.pending == "stop":
        await asyncio.sleep(poll)
