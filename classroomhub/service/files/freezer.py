"""Stopping every process a student controls while their work is copied.

A deadline snapshot must show the folder as it was at the due date. Any
process the student can signal (real or saved uid theirs: their server, its
kernels, a shell from ssh, a loop they left running) is moved into a cgroup v1
freezer group of its own and frozen, all at once, for the copy; then thawed
and put back where it was. Processes started meanwhile (a new login) are
caught by the ctime check of the copy instead (see :mod:`.collect`).

A group left frozen by a service that was killed is thawed when the next one
starts (:meth:`Freezer.sweep`).
"""

from __future__ import annotations

import errno
import os
import time

FREEZER_ROOT = "/sys/fs/cgroup/freezer"


def processes_of(uid):
    """Pids of live processes whose real or saved uid is *uid*: those it may
    signal (a zombie runs nothing and is in no cgroup). Every process is
    looked at: one that made itself non-dumpable shows root as the owner of
    its /proc folder, not its uid."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/status", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile
        try:
            head = os.read(fd, 1024)  # State and Uid are in the first lines
        except OSError:
            continue
        finally:
            os.close(fd)
        state = head.partition(b"\nState:")[2].split(None, 1)[:1]
        uids = head.partition(b"\nUid:")[2].split(None, 4)[:4]
        if len(uids) == 4 and state not in ([b"Z"], [b"X"]) and uid in (int(uids[0]), int(uids[2])):
            found.append(int(name))
    return found


def freezer_cgroup_of(pid):
    """The freezer cgroup path of *pid* (``/`` for the root), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "freezer" in controllers.split(","):
                    return path
    except (FileNotFoundError, ProcessLookupError):
        return None
    return "/"


def _write(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _move(pid, folder):
    """Put *pid* into the cgroup *folder*; False if it is gone."""
    try:
        _write(os.path.join(folder, "cgroup.procs"), str(pid))
        return True
    except OSError as e:
        if e.errno in (errno.ESRCH, errno.ENOENT):
            return False
        raise


def _pids_in(folder):
    try:
        with open(os.path.join(folder, "cgroup.procs")) as f:
            return [int(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


class Frozen:
    """One student's frozen processes (what :meth:`Freezer.freeze` returns)."""

    def __init__(self, folder, origins, complete):
        self.folder = folder
        self.origins = origins  # pid -> the freezer cgroup it came from
        #: every process the student could signal was frozen (none kept forking past the rounds)
        self.complete = complete

    @property
    def pids(self):
        return sorted(self.origins)


class Freezer:
    """Freezes a student's processes in ``<root>/<parent>/<uid>`` (cgroup v1 freezer)."""

    def __init__(self, root=FREEZER_ROOT, parent="classroomhub-collect", log=None, timeout=2.0):
        self.root = root
        self.base = os.path.join(root, parent)
        self.log = log
        self.timeout = timeout

    @property
    def available(self):
        return os.access(os.path.join(self.root, "cgroup.procs"), os.W_OK)

    def freeze(self, uid, rounds=20):
        """Freeze every process *uid* may signal; returns a :class:`Frozen` (thaw it).

        Moved in and frozen in rounds: a process that forked before the group
        froze has its child caught in the next round (a child of a frozen
        process joins the group, frozen).
        """
        if uid == 0:
            raise ValueError("root's processes are never frozen")
        folder = os.path.join(self.base, str(uid))
        try:
            os.makedirs(folder, exist_ok=True)
        except FileNotFoundError:  # the parent was just removed by another thaw
            os.makedirs(folder, exist_ok=True)
        origins = {}
        own = os.getpid()
        complete = False
        try:
            for attempt in range(rounds):
                inside = set(_pids_in(folder))  # with children born in there: frozen already
                new = [p for p in processes_of(uid) if p not in origins and p not in inside and p != own]
                if not new:  # (none at all: nothing to freeze)
                    complete = True
                    break
                for pid in new:
                    origin = freezer_cgroup_of(pid)
                    if origin is not None and _move(pid, folder):
                        origins[pid] = origin
                _write(os.path.join(folder, "freezer.state"), "FROZEN")
                self._wait_state(folder, "FROZEN")
        except BaseException:
            self.thaw(Frozen(folder, origins, False))
            raise
        return Frozen(folder, origins, complete)

    def _wait_state(self, folder, state):
        deadline = time.monotonic() + self.timeout
        while True:
            with open(os.path.join(folder, "freezer.state")) as f:
                if f.read().strip() == state:
                    return True
            if time.monotonic() > deadline:
                # a process stuck in the kernel (D state) keeps the group FREEZING:
                # the copy goes on, the ctime check still sees what changes
                if self.log:
                    self.log.warning("freezer %s: not %s after %s s", folder, state, self.timeout)
                return False
            time.sleep(0.001)

    def thaw(self, frozen):
        """Let the processes run again, each back in the group it came from."""
        folder = frozen.folder
        try:
            _write(os.path.join(folder, "freezer.state"), "THAWED")
        except FileNotFoundError:
            return
        for pid in _pids_in(folder):
            back = os.path.join(self.root, frozen.origins.get(pid, "/").lstrip("/"))
            try:
                _move(pid, back)
            except OSError:  # its old group is gone: the root of the hierarchy
                _move(pid, self.root)
        self._remove(folder)

    def _remove(self, folder):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                os.rmdir(folder)
                try:
                    os.rmdir(self.base)  # nothing left behind in the hierarchy once nobody is frozen
                except OSError:
                    pass  # another student is frozen now
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    if self.log:
                        self.log.warning("freezer: cannot remove %s: %s", folder, e.strerror)
                    return
                for pid in _pids_in(folder):  # forked while thawing
                    _move(pid, self.root)
                time.sleep(0.01)

    def sweep(self):
        """Thaw groups a killed service left frozen; returns the uids they held."""
        try:
            names = [e.name for e in os.scandir(self.base) if e.is_dir()]
        except FileNotFoundError:
            return []
        for name in names:
            if self.log:
                self.log.warning("Thawing the processes of uid %s, frozen by a service that stopped mid-snapshot", name)
            self.thaw(Frozen(os.path.join(self.base, name), {}, False))
        return names
