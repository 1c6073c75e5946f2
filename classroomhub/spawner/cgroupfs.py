"""The host's cgroup filesystems: where they are, where a process sits in
them, and reading and writing their small interface files.

The layout rule ClassroomSpawner follows, shared with the classroom service
(which joins a student's server group for its work in their home): a
server's group is ``group_path(mount, own, cgroup_parent)/<group_key>`` in
each hierarchy, where *own* is the hub's cgroup from :func:`own_cgroups`
(the service, a child of the hub, reads the same path).
"""

from __future__ import annotations

import os
import resource


def mountinfo(path="/proc/self/mountinfo"):
    """Yield ``(mount point, fstype, super options)`` of every mount."""
    with open(path) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(fields) >= 5 and len(rest) >= 3:
                yield fields[4], rest[0], rest[2].split(",")


def own_cgroups(path="/proc/self/cgroup"):
    """``{controller: path of this process's cgroup}``; the key is ``""`` for v2."""
    result = {}
    with open(path) as f:
        for line in f:
            _, controllers, cgpath = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                result[controller] = cgpath
    return result


def group_path(mount, own, parent):
    """The folder holding the servers' groups in the hierarchy mounted at
    *mount*: *parent* below *own* (the hub's cgroup there), or below the
    hierarchy's root when *parent* is absolute."""
    base = parent if parent.startswith("/") else os.path.join(own, parent)
    return os.path.normpath(os.path.join(mount, base.lstrip("/")))


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
    """A file holding one number; *default* if it is missing, unreadable or ``max``."""
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


def read_pids(path):
    """The pids listed in a ``cgroup.procs`` file; none if it cannot be read."""
    try:
        with open(path) as f:
            return [int(line) for line in f if line.strip()]
    except OSError:
        return []


def write_text(path, value):
    with open(path, "w") as f:
        f.write(str(value))
