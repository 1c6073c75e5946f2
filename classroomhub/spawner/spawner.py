"""ClassroomSpawner: LocalProcessSpawner with enforced per-tier limits."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time
import weakref

from jupyterhub.spawner import LocalProcessSpawner
from tornado import web
from traitlets import (
    Bool,
    Dict,
    Float,
    Integer,
    List,
    Unicode,
    Enum,
    default,
    validate,
)

from ..accounts import AccountPolicy, AccountRefused
from ..servers import stop_server
from ..units import human_bytes
from ..tiers import DEFAULT_TIER, DEFAULT_TIER_SETTINGS, TIERS, tier_of, unknown_tier
from ..synchook import sync_before_start
from . import metrics, notices
from .culling import IdleTracker, idlest_first, mem_available
from .detection import detect
from .enforcement import KEY_ENV, Enforcement, EnforcementUnavailable, Limits, group_key
from .users import ensure_system_user

class SpawnRefused(web.HTTPError):
    """A start refused by policy; JupyterHub shows the message to the user."""

    def __init__(self, status, message):
        super().__init__(status, message)
        self.jupyterhub_message = message


#: running ClassroomSpawners of this hub process (for memory pressure, usage)
RUNNING = weakref.WeakSet()

# one backend per (preference, cgroup_parent) and hub process
_BACKENDS = {}
# cgroups left by servers that no longer run are swept once per hub process
_SWEPT = set()
# background cull tasks must be referenced until done
_TASKS = set()
_last_pressure_check = [0.0]
# seconds between checks that a stopping server has exited
DEATH_POLL_INTERVAL = 0.05


class ClassroomSpawner(LocalProcessSpawner):
    """Local processes with their owner's tier limits, enforced by the kernel.

    Each server runs in its own cgroup (v2, else v1), or under a psutil
    watchdog when no cgroup is writable; stopping it kills every process of
    the group. The spawner samples usage cheaply, culls servers idle by hub
    activity *and* CPU use, and configures jupyter_server's kernel culler.
    """

    # -- limits and their sources ---------------------------------------------

    tier_settings = Dict(
        help="""Settings per roster tier: {tier: {trait name: value}}.

        Applied before `group_overrides` and `user_settings`; merged over the
        built-in defaults, so ``{"student": {"mem_limit": "2G"}}`` changes
        only that. Keys are ClassroomSpawner traits such as ``mem_limit``,
        ``cpu_limit``, ``idle_timeout``, ``max_age``, ``kernel_cull_timeout``,
        ``kernel_cull_connected`` and ``named_server_limit``.
        """,
    ).tag(config=True)

    @default("tier_settings")
    def _default_tier_settings(self):
        return {tier: dict(values) for tier, values in DEFAULT_TIER_SETTINGS.items()}

    @validate("tier_settings")
    def _validate_tier_settings(self, proposal):
        merged = {tier: dict(values) for tier, values in DEFAULT_TIER_SETTINGS.items()}
        for tier, values in proposal.value.items():
            if tier not in TIERS:
                raise ValueError(f"tier_settings: {unknown_tier(tier)}")
            self._check_setting_names(f"tier_settings[{tier!r}]", values)
            merged[tier].update(values)
        return merged

    user_settings = Dict(
        help="""Per-user overrides: {login: {trait name: value}}, applied last.

        For the researcher who needs 16G for a term, without a new tier.
        """,
    ).tag(config=True)

    @validate("user_settings")
    def _validate_user_settings(self, proposal):
        result = {}
        for login, values in proposal.value.items():
            self._check_setting_names(f"user_settings[{login!r}]", values)
            result[login.lower()] = values
        return result

    def _check_setting_names(self, where, values):
        unknown = [k for k in values if not self.has_trait(k) or not self.trait_metadata(k, "config")]
        if unknown:
            raise ValueError(f"{where}: {', '.join(map(repr, unknown))} are not configurable spawner traits")

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

    named_server_limit = Integer(
        0,
        help="""How many named servers this user may run at once (needs
        ``c.JupyterHub.allow_named_servers = True``); 0 allows none.""",
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

    # -- culling -------------------------------------------------------------------

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

    kernel_cull_timeout = Integer(
        0,
        help="jupyter_server's MappingKernelManager.cull_idle_timeout: idle kernels are shut down after this many seconds; 0 never.",
    ).tag(config=True)

    kernel_cull_interval = Integer(
        0,
        help="MappingKernelManager.cull_interval; 0 picks a sixth of `kernel_cull_timeout` (at least 10 s).",
    ).tag(config=True)

    kernel_cull_connected = Bool(
        False,
        help="MappingKernelManager.cull_connected: also cull idle kernels an open tab is connected to.",
    ).tag(config=True)

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

    # -- multi-user safety -----------------------------------------------------------

    kernel_transport = Enum(
        ["ipc", "tcp"],
        "ipc",
        help="""ZeroMQ transport between the server and its kernels. ``ipc`` uses
        sockets in the user's private runtime folder: kernels of different
        users cannot collide on TCP ports (jupyter_client only avoids ports it
        picked itself).""",
    ).tag(config=True)

    hub_auth_cache_max_age = Integer(
        5,
        help="""Seconds the server trusts the hub's answer about a visitor's
        token (``HubOAuth.cache_max_age``; JupyterHub's default is 300). When
        the roster takes someone's staff role, their access to others'
        servers ends within the roster's poll interval plus this.""",
    ).tag(config=True)

    create_system_users = Bool(
        False,
        help="Create a missing system user at first spawn (useradd), with a private home.",
    ).tag(config=True)

    home_mode = Integer(
        0o700,
        help="Mode of the home folder of users this spawner creates.",
    ).tag(config=True)

    skeleton_dir = Unicode(
        "/etc/skel",
        help="Skeleton copied into the homes of created users (useradd -k).",
    ).tag(config=True)

    shared_data_dir = Unicode(
        "",
        help="""A read-only data folder (e.g. /srv/data) linked as ``~/data`` into
        the home of each created user; empty for none.""",
    ).tag(config=True)

    classroom_service_url = Unicode(
        "",
        help="""URL of the classroom service (e.g.
        ``http://127.0.0.1:10101/services/classroom/``). When set, every
        start first asks it to deliver the current releases of the owner's
        courses that they have not had yet (late joiners), after the system
        user is created and before the server runs. Empty: no sync.""",
    ).tag(config=True)

    classroom_sync_timeout = Float(
        60,
        help="""Seconds a start waits for the classroom sync; after that the server
        starts anyway, with a warning in the log. The sync never takes more than
        half of `start_timeout`: the other half is kept for launching the server
        and waiting for its port, so a slow service cannot fail a start.""",
    ).tag(config=True)

    port_wait_timeout = Float(
        10,
        help="""Seconds `start` waits for the new server to accept connections
        (within what is left of `start_timeout`), so the hub's first readiness
        check succeeds instead of backing off. A server that is slower is not
        failed here: `start` returns and the hub waits up to `http_timeout`, as
        with LocalProcessSpawner. 0 returns as soon as the process runs.""",
    ).tag(config=True)

    # -- state -----------------------------------------------------------------------

    tier = Unicode(DEFAULT_TIER, help="The owner's tier, from their roster group (set at start).")

    oom_kills = Integer(0, help="Processes of this server's current run killed for memory (persisted; 0 at each start).")

    oom_kills_total = Integer(0, help="Processes killed for memory over every run of this server (persisted).")

    oom_events = List(
        help="""Recent OOM kills as ``[unix time, count, memory limit]``, kept for
        the notice on the hub's pages (`notices.NOTICE_SECONDS`); persisted, and
        kept across stops and hub restarts.""",
    )

    usage = Dict(help="The last usage sample (see `usage_report`).")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._monitor_task = None
        self._tracker = None
        self._oom_base = None
        self._adjusted = set()
        self._run = {}  # what a restarted hub needs of the current run (see get_state)
        self._restore_settings = False
        template_vars = self.user.settings.get("template_vars") if self.user else None
        if template_vars is not None:
            notices.install(template_vars)

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
        key = (self._run.get("enforcement", self.enforcement), self._run.get("cgroup_parent", self.cgroup_parent))
        if key not in _BACKENDS:
            try:
                backend, skipped = detect(*key, log=self.log)
            except EnforcementUnavailable as e:
                # only an explicit choice can be unavailable; start() refuses
                self.log.error("ClassroomSpawner: enforcement %r unavailable: %s", key[0], e)
                backend, skipped = Enforcement(log=self.log), []
                backend.unavailable = str(e)
            for reason in skipped:
                self.log.info("ClassroomSpawner: skipped %s", reason)
            _BACKENDS[key] = backend
        return _BACKENDS[key]

    # -- settings ----------------------------------------------------------------------

    async def apply_group_overrides(self):
        self.tier = tier_of(g.name for g in self.user.groups)
        self._apply_overrides(self.tier_settings.get(self.tier, {}))
        await super().apply_group_overrides()
        personal = self.user_settings.get(self.user.name.lower())
        if personal:
            self.log.info("Applying user_settings for %s: %s", self.user.name, ", ".join(personal))
            self._apply_overrides(personal)

    def get_args(self):
        args = list(super().get_args())
        args.append(f"--KernelManager.transport={self.kernel_transport}")
        args.append(f"--HubOAuth.cache_max_age={self.hub_auth_cache_max_age}")
        if self.kernel_cull_timeout:
            interval = self.kernel_cull_interval or max(10, self.kernel_cull_timeout // 6)
            args += [
                f"--MappingKernelManager.cull_idle_timeout={self.kernel_cull_timeout}",
                f"--MappingKernelManager.cull_interval={interval}",
                f"--MappingKernelManager.cull_connected={self.kernel_cull_connected}",
            ]
        return args

    def get_env(self):
        env = super().get_env()
        env[KEY_ENV] = self.group_key
        return env

    # -- start -------------------------------------------------------------------------

    def make_preexec_fn(self, name):
        become_user = super().make_preexec_fn(name)
        attach = self._attach
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
        self._check_named_server_limit()
        accounts = AccountPolicy(parent=self)
        if self.create_system_users:
            await asyncio.to_thread(
                ensure_system_user,
                self.user.name,
                home_mode=self.home_mode,
                skeleton=self.skeleton_dir,
                shared_data=self.shared_data_dir,
                log=self.log,
                group=accounts.managed_group,
            )
        try:  # never a server as root, a system account or someone else's account
            accounts.check(self.user.name)
        except AccountRefused as e:
            self.log.warning("ClassroomSpawner: %s", e)
            raise SpawnRefused(403, f"No server for {self.user.name}: {e}") from None
        if self.classroom_service_url:
            await self._sync_classroom(deadline)
        await self._make_room()
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
        await self._sweep_stale()
        await backend.destroy(key)  # leftovers of an earlier run of this server
        self._attach = None
        if backend.enforcing:
            await asyncio.to_thread(backend.create, key, limits)
            self._attach = backend.attach_fn(key)
        try:
            ip, port = await super().start()
        except BaseException:
            await backend.destroy(key)
            raise
        finally:
            self._attach = None
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

    _attach = None

    def _check_named_server_limit(self):
        if not self.name:
            return
        running = [
            name
            for name, spawner in self.user.spawners.items()
            if name and name != self.name and (spawner.active or spawner.pending)
        ]
        if len(running) >= self.named_server_limit:
            raise SpawnRefused(
                403,
                f"Your tier ({self.tier}) allows {self.named_server_limit} named server(s) at once; "
                f"running: {', '.join(running) or 'none'}. Stop one first."
            )

    async def _sync_classroom(self, deadline):
        """Deliver missing course content, within half of what is left of
        `start_timeout`: a slow or hung service delays a start, never fails it."""
        budget = min(self.classroom_sync_timeout, (deadline - time.monotonic()) / 2)
        try:
            await asyncio.wait_for(sync_before_start(self, self.classroom_service_url, budget), budget)
        except asyncio.TimeoutError:
            self.log.warning(
                "Classroom sync for %s did not finish in %.0f s; starting the server without it",
                self.user.name,
                budget,
            )
        except Exception as e:  # e.g. the hub cannot make the sync's token
            self.log.warning("Classroom sync for %s failed; starting the server without it: %s", self.user.name, e)

    async def _wait_for_port(self, ip, port, timeout):
        """Return once the server accepts connections, so the hub's first check
        succeeds, or after *timeout* s (the hub then waits with its own checks)."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            status = self.proc.poll() if self.proc is not None else None
            if status is not None:
                raise RuntimeError(f"The jupyter server of {self._log_name} exited with status {status} while starting")
            if time.monotonic() >= deadline:
                self.log.info("%s not listening on port %s after %.1f s; the hub keeps checking", self._log_name, port, timeout)
                return
            try:
                _, writer = await asyncio.open_connection(ip or "127.0.0.1", port)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 0.1)
                continue
            writer.close()
            return

    # -- poll / stop ---------------------------------------------------------------

    async def poll(self):
        status = await super().poll()  # on exit, clear_state() counts the last OOM kills
        if status is not None:
            # the server is gone: so must be its kernels, daemons and cgroup
            self._stop_monitor()
            RUNNING.discard(self)
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
            RUNNING.discard(self)
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

    def _count_last_oom_kills(self):
        if self._oom_base is None and not self._run:
            return
        try:
            self._note_oom(self.backend.usage(self.group_key).oom_kills)
        except OSError as e:  # the group is gone already
            self.log.debug("ClassroomSpawner: no last OOM count of %s: %s", self._log_name, e)

    async def _sweep_stale(self):
        """Remove cgroups of servers that no longer run (after a hub restart)."""
        if self.cgroup_parent in _SWEPT or not self.backend.enforcing:
            return
        _SWEPT.add(self.cgroup_parent)
        from jupyterhub import orm

        live = {
            group_key(sp.user.name, sp.name)
            for sp in self.user.db.query(orm.Spawner).filter(orm.Spawner.server_id.isnot(None))
        }
        for key in self.backend.keys():
            if key not in live and key != self.group_key:
                self.log.info("ClassroomSpawner: removing stale group %s", key)
                await self.backend.destroy(key)

    # -- monitoring ------------------------------------------------------------------

    def _start_monitor(self, fresh=True):
        RUNNING.add(self)
        started = self._run.get("started")
        if started is None and self.orm_spawner is not None:
            started = _timestamp(self.orm_spawner.started)
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
            now, _timestamp(self.orm_spawner.last_activity), self.idle_timeout, self.max_age, self.idle_cpu_fraction
        )
        if reason:
            self._cull(reason)
        elif now - _last_pressure_check[0] >= self.monitor_interval:
            _last_pressure_check[0] = now
            await self._relieve_pressure(now, spawning=False)

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
        self.oom_events = notices.recent(self.oom_events) + [[time.time(), new, self.mem_limit or 0]]
        metrics.OOM_KILLS.labels(user=self.user.name, server=self.name).inc(new)
        self.log.warning(
            "OOM: %s process(es) of %s (%s tier) killed at the memory limit of %s (%s this run, %s in all)",
            new,
            self._log_name,
            self.tier,
            human_bytes(self.mem_limit),
            self.oom_kills,
            self.oom_kills_total,
        )
        if self.orm_spawner is not None:
            self.orm_spawner.state = self.get_state()
            self.user.db.commit()

    def _protect_server(self, pids):
        """Make kernels and terminals, not the server, the OOM killer's choice."""
        if self.kernel_oom_score_adj is None:
            return
        value = str(self.kernel_oom_score_adj).encode()
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

    def idle_seconds(self, now=None):
        if self._tracker is None:
            return None
        return self._tracker.idle_seconds(now or time.time(), _timestamp(self.orm_spawner.last_activity))

    def _cull(self, reason):
        self.log.info("Culling %s: %s", self._log_name, reason)
        task = asyncio.ensure_future(stop_server(self.user, self.name, self.log, reason))
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)

    async def _make_room(self):
        await self._relieve_pressure(time.time(), spawning=True)

    async def _relieve_pressure(self, now, spawning):
        if not self.memory_reserve:
            return
        available = mem_available(self.meminfo_path)
        if available >= self.memory_reserve:
            return
        stopping = [s for s in list(RUNNING) if s.pending == "stop"]
        if stopping and not spawning:
            return  # memory is about to be freed: do not stop a second server for it
        if stopping:
            # a start waits for those stops (a cull may have just begun one)
            # before it judges whether another server must go
            await asyncio.wait([asyncio.ensure_future(_stopped(s)) for s in stopping], timeout=30)
            available = mem_available(self.meminfo_path)
            if available >= self.memory_reserve:
                return
        for victim in idlest_first(list(RUNNING), now):
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


async def _stopped(spawner, poll=0.05):
    while spawner.pending == "stop":
        await asyncio.sleep(poll)


def _timestamp(dt):
    """A naive-UTC datetime from the hub's database as a Unix time."""
    if dt is None:
        return None
    from datetime import timezone

    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
