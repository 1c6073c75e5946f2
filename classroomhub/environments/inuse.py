"""Which environment versions running processes use, read from /proc.

Only what the kernel says counts: a process uses a version folder when its
executable, its working folder, a file it maps (a kernel maps the
version's compiled extensions, e.g. pyzmq's) or a file it holds open lies
inside the folder. ``argv[0]`` and the environment are the process's own
words: any user could name a version in them and keep it forever.

One exception: the hub's own servers. A server whose ``PATH`` holds a
version's ``bin`` keeps it while it runs (its terminals run that
``python``), but only a process in one of the servers' cgroups counts so:
below a root-owned cgroup folder named as ``ClassroomSpawner.cgroup_parent``
(*server_cgroup*), which no user can make or join.

Other users' processes are readable by root only: another user's process
that could not be inspected is counted in ``blind``, and a removal refuses
to guess.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass
class InUse:
    pids: dict = field(default_factory=dict)  # folder -> set of pids
    blind: int = 0  # processes that could not be inspected


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _inside(path, folders):
    path = os.path.normpath(path)
    return [f for f in folders if path == f or path.startswith(f + os.sep)]


def _link(path):
    try:
        return os.readlink(path)
    except (FileNotFoundError, ProcessLookupError):
        return ""  # a kernel thread, a closed fd, or the process is exiting


def _mapped(base):
    """The files *base*'s process maps (each once)."""
    paths = set()
    for line in _read(os.path.join(base, "maps")).split(b"\n"):
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith(b"/"):
            paths.add(os.fsdecode(parts[5]).removesuffix(" (deleted)"))
    return paths


def _kernel_evidence(base):
    """The paths the kernel holds for *base*'s process: executable, working folder, maps, open files."""
    paths = {_link(os.path.join(base, "exe")), _link(os.path.join(base, "cwd"))}
    paths |= _mapped(base)
    fds = os.path.join(base, "fd")
    for fd in os.listdir(fds):
        paths.add(_link(os.path.join(fds, fd)))
    return [p for p in paths if p.startswith("/")]


def _path_entries(base):
    for var in _read(os.path.join(base, "environ")).split(b"\0"):
        if var.startswith(b"PATH="):
            return [p for p in os.fsdecode(var[5:]).split(os.pathsep) if p.startswith("/")]
    return []


def in_server_cgroup(base, server_cgroup, cgroup_root=CGROUP_ROOT):
    """Whether *base*'s process is in a cgroup below a root-owned folder whose
    path ends in *server_cgroup* (``classroomhub``, or ``a/b``), in any hierarchy."""
    wanted = [p for p in server_cgroup.split("/") if p]
    if not wanted:
        return False
    for line in _read(os.path.join(base, "cgroup")).decode(errors="replace").splitlines():
        _, controllers, path = line.split(":", 2)
        parts = [p for p in path.split("/") if p]
        for end in range(len(wanted), len(parts)):  # a server's group is below the folder
            if parts[end - len(wanted) : end] != wanted:
                continue
            relative = os.path.join(*parts[:end])
            # v1: <root>/<controllers> (or name=systemd's <root>/systemd); v2: <root> or <root>/unified
            mounts = [controllers.removeprefix("name=")] if controllers else ["", "unified"]
            for mount in mounts:
                try:
                    st = os.stat(os.path.join(cgroup_root, mount, relative))
                except OSError:
                    continue
                if st.st_uid == 0:
                    return True
    return False


def processes_using(folders, server_cgroup="", proc="/proc", cgroup_root=CGROUP_ROOT):
    """An :class:`InUse` for *folders* (absolute paths, without symlinks); ``PATH``
    counts for processes in the servers' cgroups below *server_cgroup* only."""
    folders = [os.path.normpath(f) for f in folders]
    result = InUse(pids={f: set() for f in folders})
    me = os.getpid()
    for entry in os.listdir(proc):
        if not entry.isdigit() or int(entry) == me:
            continue
        base = os.path.join(proc, entry)
        hits = set()
        try:
            for path in _kernel_evidence(base):
                hits.update(_inside(path, folders))
            if server_cgroup and len(hits) < len(folders):
                entries = _path_entries(base)
                if any(_inside(p, folders) for p in entries) and in_server_cgroup(base, server_cgroup, cgroup_root):
                    for part in entries:
                        hits.update(_inside(part, folders))
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile
        except PermissionError:
            # another user's process, seen without root; a process of our own user that even
            # we may not inspect (e.g. a container's init seen by root) runs nothing of ours
            try:
                if os.stat(base).st_uid != os.geteuid():
                    result.blind += 1
            except FileNotFoundError:
                pass
            continue
        for folder in hits:
            result.pids[folder].add(int(entry))
    return result
