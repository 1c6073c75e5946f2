"""The one interface every limit-enforcement backend implements.

A backend keeps a *group* of processes per server (a cgroup, or a process
tree the watchdog follows), identified by :func:`group_key`, such as
``alice`` or ``alice--analysis``. ClassroomSpawner talks to it only through
:class:`Enforcement`; :func:`.detection.detect` picks the best backend this
host offers. The backends: :mod:`.cgroups` (v2 and v1) and :mod:`.watchdog`
(psutil).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass

#: environment variable carrying the server's group key into every process it
#: starts (the watchdog finds double-forked daemons by it)
KEY_ENV = "CLASSROOMHUB_SERVER_KEY"


class EnforcementUnavailable(RuntimeError):
    """This backend cannot limit processes on this host; the message says why."""


@dataclass(frozen=True)
class Limits:
    """What a server may use. ``None`` means unlimited."""

    mem_bytes: int | None = None
    cpu: float | None = None  # cores
    pids: int | None = None
    mem_high_fraction: float = 0.0  # cgroup v2 memory.high as a fraction of mem_bytes; 0: unset
    swap: bool = False  # allow swap beyond mem_bytes


@dataclass
class Usage:
    """A cheap reading of one server's group."""

    mem_bytes: int = 0
    mem_peak_bytes: int = 0
    cpu_seconds: float = 0.0
    oom_kills: int = 0
    procs: int = 0

    def to_dict(self):
        return asdict(self)


class Enforcement:
    """Interface of a backend; see :mod:`.cgroups` and :mod:`.watchdog`."""

    #: short name logged at each start: ``cgroup-v2``, ``cgroup-v1``, ``psutil``, ``none``
    name = "none"
    #: True if memory/CPU limits are enforced (``none`` is not)
    enforcing = False
    #: why the backend that was asked for is missing (set on the stand-in)
    unavailable = ""

    def __init__(self, log=None):
        self.log = log or logging.getLogger(__name__)

    def describe(self):
        """One line for the log: what is enforced where."""
        return "no limits are enforced"

    def create(self, key, limits: Limits):
        """Make (or reset) the group for *key* with *limits*."""

    def attach_files(self, key):
        """The ``cgroup.procs`` files a server's process writes its pid into to
        join its group (none for a backend without cgroups)."""
        return []

    def attach_fn(self, key):
        """A function to run in the forked child before exec: it joins the group.

        Memory already charged does not migrate between cgroups, so the server
        must be in its group before it allocates anything.
        """
        files = self.attach_files(key)
        return pid_writer(files) if files else None

    def adopt(self, key, pid, limits=None):
        """Called with the server's pid once it runs, and again after a hub
        restart, then with the *limits* the backend may have forgotten."""

    def pids(self, key):
        """Pids currently in the group (empty if none or unknown)."""
        return []

    def usage(self, key) -> Usage:
        return Usage()

    def enforce(self, key, server_pid):
        """Act on limits the kernel does not enforce; returns pids killed."""
        return []

    async def destroy(self, key, timeout=10):
        """Kill every process of the group, wait for it to empty, remove it."""

    def set_budget(self, total, high_fraction=0.0):
        """Hold all servers together to *total* bytes (0: no limit) on the
        folder holding their groups; False if this backend cannot."""
        return False

    def budget_usage(self):
        """``(bytes in use, limit)`` of all servers together (limit 0: none);
        None if this backend cannot tell."""
        return None

    def keys(self):
        """Keys of groups that exist now (for the stale sweep after a restart)."""
        return []

    def remove_parent(self):
        """Remove whatever holds the groups, if it is empty (nothing to do here)."""


def pid_writer(procs_files):
    """A function writing the calling process's own pid into each cgroup.procs.

    Runs in a forked child (between fork and exec, or in a spawn template's
    child before it reads its request): open/write/close only.
    """
    paths = [os.fsencode(p) for p in procs_files]

    def attach():
        pid = str(os.getpid()).encode()
        for path in paths:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    return attach


_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")
# a dash at either end of a part or next to another dash
_EDGE_DASH = re.compile(r"^-|-$|-(?=-)|(?<=-)-")


def _escape(part):
    part = _UNSAFE.sub(lambda m: "".join(f"%{b:02x}" for b in m.group().encode()), part)
    part = _EDGE_DASH.sub("%2d", part)
    if part in (".", ".."):
        part = part.replace(".", "%2e")
    return part


def group_key(username, server_name=""):
    """A filesystem-safe, unambiguous key for a user's server: ``alice``,
    ``alice--analysis``.

    ``%`` starts every escape, and an escaped part neither contains ``--`` nor
    starts or ends with ``-``, so the ``--`` separator splits a key in exactly
    one way: keys of different servers never collide.
    """
    key = _escape(username)
    if server_name:
        key += "--" + _escape(server_name)
    return key
