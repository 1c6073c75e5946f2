"""ClassroomSpawner: LocalProcessSpawner with enforced per-tier limits.

This module starts, stops and restores a server in its group; each other
job is a mixin in a module of its own (settings, system users, classroom
sync, server arguments, the servers' memory budget, memory pressure, monitoring, OOM accounting,
starting from the spawn template), and
the host-wide state they share is the process's :class:`.host.Host`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Bool, Enum, Float, Integer, Unicode

from ..units import human_bytes
from . import metrics, notices
from .budget import ServersBudget
from .classroomsync import ClassroomSync
from .enforcement import KEY_ENV, Limits, group_key, pid_writer
from .host import Host
from .kernels import ManagedKernels
from .monitor import Monitoring
from .oom import OomAccounting
from .pressure import MemoryPressure
from .refusal import SpawnRefused
from .serverargs import ServerArguments
from .settings import TierSettings
from .template import TemplateSpawning
from .users import SystemUsers

# seconds between checks that a stopping server has exited
DEATH_POLL_INTERVAL = 0.05


class ClassroomSpawner(
    TierSettings,
    SystemUsers,
    ClassroomSync,
    ServerArguments,
    ManagedKernels,
    ServersBudget,
    MemoryPressure,
    Monitoring,
    OomAccounting,
    TemplateSpawning,
    LocalProcessSpawner,
):
    """Local processes with their owner's tier limits, enforced by the kernel.

    Each server runs in its own cgroup (v2, else v1), or under a psutil
    watchdog when no cgroup is writable; stopping it kills every process of
    the group. The spawner samples usage cheaply, culls servers idle by hub
    activity *and* CPU use, and configures jupyter_server's kernel culler.
    """

    # -- limits ------------------------------------------------------------------

    pids_limit = Integer(
        4096,
        help="Most processes and threads a server may run (cgroup pids.max); 0 for no limit.",
    ).tag(config=True)

    mem_high_fraction = Float(
        0.0,
        help="""cgroup v2 only: throttle at this fraction of `mem_limit` (memory.high) before
        the OOM killer acts at the limit. 0 leaves memory.high unset.""",
    ).tag(config=True)

    allow_swap = Bool(
        False,
        help="Let a server swap beyond `mem_limit` (memsw / memory.swap.max). Off: the limit is the limit.",
    ).tag(config=True)

    # -- enforcement -------------------------------------------------------------

    enforcement = Enum(
        ["auto", "cgroup-v2", "cgroup-v1", "psutil", "none"],
        "auto",
        help="""How limits are enforced. ``auto`` takes the first that works of
        cgroup v2, cgroup v1 and the psutil watchdog; naming one insists on it.""",
    ).tag(config=True)

    require_enforcement = Bool(
        False,
        help="""Refuse to start a server whose limits cannot be enforced by a
        cgroup (with the psutil watchdog or nothing in place), with a clear
        message on the spawn page.""",
    ).tag(config=True)

    cgroup_parent = Unicode(
        "classroomhub",
        help="""Where server cgroups are made: relative to the hub's own cgroup,
        or absolute from the hierarchy root. Everything under it belongs to
        this hub: cgroups of servers that no longer run are removed at the
        first start after the hub starts, so two hubs on one host need
        different values.""",
    ).tag(config=True)

    port_wait_timeout = Float(
        10,
        help="""Seconds `start` waits for the new server to accept connections
        (within what is left of `start_timeout`), so the hub's first readiness
        check succeeds instead of backing off. A server that is slower is not
        failed here: `start` returns and the hub waits up to `http_timeout`, as
        with LocalProcessSpawner. 0 returns as soon as the process runs.""",
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._adjusted = set()  # pids whose oom_score_adj was raised
        self._run = {}  # what a restarted hub needs of the current run (see get_state)
        template_vars = self.user.settings.get("template_vars") if self.user else None
        if template_vars is not None:
            notices.install(template_vars)

    @property
    def host(self):
        """What this hub process's servers share (backends, running servers)."""
        return Host.current()

    @property
    def group_key(self):
        return group_key(self.user.name, self.name)

    @property
    def limits(self):
        return Limits(
            mem_bytes=self.mem_limit or None,
            cpu=self.cpu_limit or None,
            pids=self.pids_limit or None,
            mem_high_fraction=self.mem_high_fraction,
            swap=self.allow_swap,
        )

    @property
    def backend(self):
        # a running server stays with the backend and parent it started under,
        # even if the configuration changed before a hub restart
        preference = self._run.get("enforcement", self.enforcement)
        return self.host.backend(preference, self._run.get("cgroup_parent", self.cgroup_parent), log=self.log)

    def get_env(self):
        env = super().get_env()
        env[KEY_ENV] = self.group_key
        return env

    # -- start -------------------------------------------------------------------------

    def make_preexec_fn(self, name):
        become_user = super().make_preexec_fn(name)
        attach = pid_writer(self._attach_files) if self._attach_files else None
        adj = str(self.server_oom_score_adj).encode() if self.server_oom_score_adj else None

        def preexec():
            if attach is not None:
                attach()  # join the cgroup before anything is charged
            if adj is not None:
                try:
                    fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
                    try:
                        os.write(fd, adj)
                    finally:
                        os.close(fd)
                except OSError:
                    pass  # lowering needs CAP_SYS_RESOURCE; kernels are raised anyway
            become_user()

        return preexec

    async def start(self):
        deadline = time.monotonic() + self.start_timeout  # the hub gives up then
        self.check_named_server_limit()
        await self.ensure_account()  # never a server as root, a system account or someone else's account
        await self.sync_classroom(deadline)
        await self.make_room()
        backend = self.backend
        limits = self.limits
        self.log.info(
            "ClassroomSpawner: %s (%s tier): %s; memory %s, CPU %s, pids %s",
            self._log_name,
            self.tier,
            backend.describe(),
            human_bytes(limits.mem_bytes),
            limits.cpu or "unlimited",
            limits.pids or "unlimited",
        )
        if backend.unavailable:
            raise SpawnRefused(
                503,
                f"This hub is configured to limit servers with {self.enforcement}, which this host "
                "does not offer. Ask the administrator to check the hub's log."
            )
        if self.require_enforcement and backend.name not in ("cgroup-v2", "cgroup-v1"):
            raise SpawnRefused(
                503,
                "This hub requires enforced limits, but no writable cgroup is available "
                f"(active: {backend.name}). Ask the administrator to check the hub's log."
            )
        key = self.group_key
        await self.host.sweep_stale(backend, self.cgroup_parent, self.user.db, key, self.log)
        await backend.destroy(key)  # leftovers of an earlier run of this server
        self._attach_files = []
        if backend.enforcing:
            await asyncio.to_thread(backend.create, key, limits)
            self._attach_files = backend.attach_files(key)
        try:
            ip, port = await super().start()  # exec, or fork from the spawn template
        except BaseException:
            await backend.destroy(key)
            raise
        finally:
            self._attach_files = []
        backend.adopt(key, self.pid)
        self._run = {
            "started": time.time(),
            "enforcement": backend.name,
            "cgroup_parent": self.cgroup_parent,
        }
        self._start_monitor()
        try:
            await self._wait_for_port(ip, port, min(self.port_wait_timeout, deadline - time.monotonic() - 1))
        except BaseException:
            await self.stop(now=True)
            raise
        return ip, port

    #: cgroup.procs files the starting server joins before it allocates anything
    _attach_files = []

    async def _wait_for_port(self, ip, port, timeout):
        """Return once the server accepts connections, so the hub's first check
        succeeds, or after *timeout* s (the hub then waits with its own checks,
        which end at once if the process exits: see `end_hub_wait_on_exit`)."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            status = self.process_status()
            if status is not None:
                raise self._exited_while_starting(status)
            if time.monotonic() >= deadline:
                self.log.info("%s not listening on port %s after %.1f s; the hub keeps checking", self._log_name, port, timeout)
                if self.server is not None:
                    end_hub_wait_on_exit(self.server, self)
                return
            try:
                _, writer = await asyncio.open_connection(ip or "127.0.0.1", port)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.1)
                continue
            writer.close()
            return

    def _exited_while_starting(self, status):
        return RuntimeError(f"The jupyter server of {self._log_name} exited with status {status} while starting")

    async def _process_exit(self, interval=0.2):
        """The server process's exit status, once it has exited (either spawn method)."""
        while (status := self.process_status()) is None:
            await asyncio.sleep(interval)
        return status

    # -- poll / stop ---------------------------------------------------------------

    async def poll(self):
        status = await super().poll()  # on exit, clear_state() counts the last OOM kills
        if status is not None:
            # the server is gone: so must be its kernels, daemons and cgroup
            self._stop_monitor()
            self.host.running.discard(self)
            key = self.group_key
            if key in self.backend.keys():
                self.log.info("ClassroomSpawner: cleaning up after the exited server of %s", self._log_name)
                await self.backend.destroy(key)
        return status

    async def stop(self, now=False):
        """SIGTERM, then SIGKILL; then kill whatever is left in the group.

        The stock spawner starts with SIGINT (skipped with *now*), which
        jupyter_server handles only with a terminal on stdin; a hub started
        from a script with ``&`` even passes SIGINT on as ignored, and every
        stop then waits the whole `interrupt_timeout`. jupyter_server always
        stops cleanly on SIGTERM, so that is the first signal either way.
        """
        self._stop_monitor()
        try:
            if await self.poll() is None:
                await self._signal(signal.SIGTERM)
                await self.wait_for_death(self.term_timeout)
            if await self.poll() is None:
                await self._signal(signal.SIGKILL)
                await self.wait_for_death(self.kill_timeout)
        finally:
            self._count_last_oom_kills()  # a kill since the last check still counts
            await self.backend.destroy(self.group_key)
            self.host.running.discard(self)
            metrics.forget(self)

    async def wait_for_death(self, timeout=10):
        """Poll at a steady short interval instead of backing off exponentially:
        a server that exits after 1.1 s is seen at once, not at 1.5 s or 3.1 s.
        poll() is a waitpid, so this costs nothing."""
        deadline = time.monotonic() + timeout
        while await self.poll() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(DEATH_POLL_INTERVAL)
        return True

    # -- state (hub database) ------------------------------------------------------
    #
    # Settings are not stored: a restarted hub recomputes them from the owner's
    # current groups and the config, as a start does. What cannot be recomputed
    # is: where the server's group is, when the run began, its OOM kills (and
    # the group's kill counter already counted), and the notice's events.

    def get_state(self):
        state = super().get_state()
        state["tier"] = self.tier
        if self.pid and self._run:
            state["run"] = {**self._run, "oom_kills": self.oom_kills, "oom_counter": self._oom_base or 0}
        if self.oom_kills_total:
            state["oom_kills_total"] = self.oom_kills_total
        events = notices.recent(self.oom_events)
        if events:
            state["oom_events"] = events
        return state

    def load_state(self, state):
        super().load_state(state)
        self.tier = state.get("tier", self.tier)
        # before runs were recorded, "oom_kills" was the only (lifetime) count
        self.oom_kills_total = state.get("oom_kills_total", state.get("oom_kills", 0))
        self.oom_events = notices.recent(state.get("oom_events", []))
        run = state.get("run") or {}
        if self.pid:
            # a server that outlived a hub restart: watch it again, with its settings
            self._run = {k: run[k] for k in ("started", "enforcement", "cgroup_parent") if k in run}
            self.oom_kills = run.get("oom_kills", 0)
            backend = self.backend
            backend.adopt(self.group_key, self.pid)
            if "oom_counter" in run:
                # kills while the hub was down count; a counter that restarted
                # (the watchdog's lives in the hub) counts from where it is
                try:
                    current = backend.usage(self.group_key).oom_kills
                except OSError:
                    current = 0
                self._oom_base = min(run["oom_counter"], current)
            self._restore_settings = True
            self._start_monitor(fresh=False)

    def clear_state(self):
        """The run is over (stopped or exited) or a new one begins: its OOM
        count restarts at 0; the lifetime total and the notice stay."""
        self._count_last_oom_kills()
        super().clear_state()
        self._run = {}
        self.oom_kills = 0
        self._oom_base = None



def end_hub_wait_on_exit(server, spawner):
    """Make *server*'s `wait_up` (JupyterHub's wait of up to `http_timeout`
    after `start`) fail as soon as *spawner*'s process exits. JupyterHub's
    own wait takes every failed check for "not yet" and ends only at its
    timeout: a server that exited (its port taken, a broken environment)
    would keep the student waiting for all of it. The hub's own Server
    object is changed, not replaced: the hub sets its port after `start`."""
    hub_wait_up = server.wait_up

    async def wait_up(*args, **kwargs):
        answered = asyncio.ensure_future(hub_wait_up(*args, **kwargs))
        exited = asyncio.ensure_future(spawner._process_exit())
        try:
            await asyncio.wait([answered, exited], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (answered, exited):
                task.cancel()
        if answered.done() and not answered.cancelled():
            return answered.result()
        raise spawner._exited_while_starting(exited.result())

    server.wait_up = wait_up
