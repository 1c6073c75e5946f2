"""Which environment versions running processes use, read from /proc.

A process uses a version folder when its ``argv[0]`` (a kernel started from
the version's kernelspec runs ``<version>/bin/python``), its executable,
or a ``PATH`` entry in its environment (a server whose PATH holds that
version's ``bin``, and everything it starts) lies inside the folder. The
interpreter of a virtual environment is a symlink to the base interpreter,
so the executable alone would not tell.

Other users' process environments are readable by root only: another
user's process that could not be inspected is counted in ``blind``, and a
removal refuses to guess.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


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


def processes_using(folders, proc="/proc"):
    """An :class:`InUse` for *folders* (absolute paths, without symlinks)."""
    folders = [os.path.normpath(f) for f in folders]
    result = InUse(pids={f: set() for f in folders})
    me = os.getpid()
    for entry in os.listdir(proc):
        if not entry.isdigit() or int(entry) == me:
            continue
        base = os.path.join(proc, entry)
        hits = []
        try:
            argv = _read(os.path.join(base, "cmdline")).split(b"\0")
            if argv and argv[0].startswith(b"/"):
                hits += _inside(os.fsdecode(argv[0]), folders)
            try:
                hits += _inside(os.readlink(os.path.join(base, "exe")), folders)
            except FileNotFoundError:
                pass  # a kernel thread, or the process is exiting
            for var in _read(os.path.join(base, "environ")).split(b"\0"):
                if var.startswith(b"PATH="):
                    for part in os.fsdecode(var[5:]).split(os.pathsep):
                        if part.startswith("/"):
                            hits += _inside(part, folders)
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
