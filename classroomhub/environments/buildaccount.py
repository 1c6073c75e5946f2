"""The system account shared environments are built as: never root.

Package lists come from instructors too, and a build runs an installer and,
with ``allow_builds``, a package's own build code. Run as root, that code
could change anything on the host; run as this account, it can write only
the new version's folder and the installer's cache (both the account's
while it builds; the version is root's once built, see :mod:`.handover`).

The account is made at first use: a system user with its own group, no
login shell and no home (``/nonexistent``). One build at a time runs as it
(a lock per account), so that at the end of each build every process of
the account can be killed: nothing a package started outlives its build
(to change the version after root took it, through a file it kept open).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pwd
import subprocess
from dataclasses import dataclass

from .installers import BuildError

#: where the per-account build locks live (root's; made at first use)
LOCK_DIR = "/run/classroomhub"
COMMENT = "classroomhub environment builds"
# kill(-1) from the account itself: every process it may signal, in one step that a fork cannot escape
KILL_ALL = "import os, signal\ntry:\n os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n pass\n"


@dataclass(frozen=True)
class BuildAccount:
    name: str
    uid: int
    gid: int

    def popen_options(self):
        """How a command starts as the account: its uid and group, no other groups."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def ensure_build_account(name, log):
    """The :class:`BuildAccount` *name*, created if missing (as a no-login
    system user without a home). Refuses root and accounts with uid 0."""
    if not name:
        raise BuildError("EnvironmentManager.build_user is empty: builds never run as root")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
        cmd += ["--shell", "/usr/sbin/nologin", "--comment", COMMENT, name]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 and "already exists" not in result.stderr:  # made meanwhile is fine
            raise BuildError(f"cannot create the build account {name!r}: {result.stderr.strip()}")
        entry = pwd.getpwnam(name)
        log.info("Created the system user %s that builds environments", name)
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise BuildError(f"the build account {name!r} has uid or gid 0: builds never run as root")
    return BuildAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)


@contextlib.asynccontextmanager
async def build_slot(account, progress=None, poll=0.2):
    """Hold *account*'s build lock, waiting for another build as it to end
    (the caller kills the account's processes, :func:`kill_all`, before leaving)."""
    os.makedirs(LOCK_DIR, mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(LOCK_DIR, f"build-{account.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if progress is not None and not told:
                    progress(f"waiting for another build as {account.name} to finish")
                    told = True
                await asyncio.sleep(poll)
        yield
    finally:
        os.close(fd)


async def kill_all(account, python):
    """SIGKILL every process of *account* (a build's leftovers)."""
    proc = await asyncio.create_subprocess_exec(
        python, "-I", "-S", "-c", KILL_ALL, env={}, cwd="/", stdin=subprocess.DEVNULL, **account.popen_options()
    )
    await proc.wait()
