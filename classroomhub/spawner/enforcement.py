"""The one interface every limit-enforcement backend implements.

A backend keeps a *group* of processes per server (a cgroup, or a process
tree the watchdog follows), identified by a key such as ``alice`` or
``alice--analysis``. ClassroomSpawner talks to it only through
:class:`Enforcement`; :func:`detect` picks the best backend this host offers.
"""

from __future__ import annotations

import logging
import os
import re
import resource
from dataclasses import asdict, dataclass

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

    def attach_fn(self, key):
        """A function to run in the forked child before exec: it joins the group.

        Memory already charged does not migrate between cgroups, so the server
        must be in its group before it allocates anything.
        """
        return None

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

    def keys(self):
        """Keys of groups that exist now (for the stale sweep after a restart)."""
        return []

    def remove_parent(self):
        """Remove whatever holds the groups, if it is empty (nothing to do here)."""


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


def read_small(path):
    """The bytes of a small (pseudo-)file, or None if it cannot be read.

    os.open/os.read rather than open(): no buffered file object, which is
    most of the cost when a usage sample reads five cgroup files per server.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)


class OpenFiles:
    """Small files read again and again (cgroup usage), kept open: pread on
    an open fd costs ~1 us, open/read/close ~10 us."""

    def __init__(self, limit=None):
        self._fds = {}
        if limit is None:
            # a quarter of the hub's fd budget at most: sockets need the rest
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            limit = max(0, min(4096, soft // 4)) if soft != resource.RLIM_INFINITY else 4096
        self.limit = limit

    def read(self, path):
        fd = self._fds.get(path)
        if fd is None:
            if len(self._fds) >= self.limit:
                return read_small(path)  # over budget: open, read, close
            try:
                fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        try:
            return os.pread(fd, 65536, 0)
        except OSError:  # the cgroup went away under us
            self._close(path)
            return None

    def forget(self, folder):
        """Close every file below *folder* (before it is removed)."""
        prefix = folder.rstrip("/") + "/"
        for path in [p for p in self._fds if p.startswith(prefix)]:
            self._close(path)

    def _close(self, path):
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)


def read_int(path, default=0, read=read_small):
    text = read(path)
    if text is None:
        return default
    text = text.strip()
    if text == b"max":
        return default
    try:
        return int(text)
    except ValueError:
        return default


def read_keyed(path, read=read_small):
    """``key value`` lines (memory.events, cpu.stat, memory.oom_control) as a dict."""
    result = {}
    for line in (read(path) or b"").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                result[parts[0].decode()] = int(parts[1])
            except ValueError:
                pass
    return result


def write_text(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def detect(preference="auto", cgroup_parent="classroomhub", log=None):
    """The best backend available, given *preference*.

    *preference* is ``auto`` (cgroup v2, then v1, then psutil), or one of
    ``cgroup-v2``, ``cgroup-v1``, ``psutil``, ``none`` to insist on it.
    Returns ``(backend, reasons)``: *reasons* says why better ones were skipped.
    """
    from .cgroups import CgroupV1, CgroupV2
    from .watchdog import PsutilWatchdog

    log = log or logging.getLogger(__name__)
    candidates = {
        "cgroup-v2": lambda: CgroupV2.from_host(cgroup_parent, log=log),
        "cgroup-v1": lambda: CgroupV1.from_host(cgroup_parent, log=log),
        "psutil": lambda: PsutilWatchdog(log=log),
        "none": lambda: Enforcement(log=log),
    }
    order = list(candidates) if preference == "auto" else [preference]
    reasons = []
    for name in order:
        try:
            return candidates[name](), reasons
        except EnforcementUnavailable as e:
            reasons.append(f"{name}: {e}")
    # only reachable with an explicit preference that is unavailable
    raise EnforcementUnavailable("; ".join(reasons))
