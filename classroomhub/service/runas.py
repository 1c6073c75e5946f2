"""Running the file worker as one person (their uid, gid and groups).

The classroom service runs as root; it never reads or writes a home itself.
Each job is a short-lived ``python -I -S worker.py MODE`` process with the
person's credentials, a clean environment and a timeout, so a planted link
or FIFO meets the kernel's permission checks and cannot hang the service.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import signal
import subprocess
import sys
from dataclasses import dataclass

from . import worker

WORKER = os.path.abspath(worker.__file__)


class WorkerError(RuntimeError):
    """The worker failed as a whole (crashed, timed out); the message says how."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: tuple
    home: str

    @classmethod
    def of(cls, login):
        try:
            entry = pwd.getpwnam(login)
        except KeyError:
            raise LookupError(f"{login} has no system account on this host (yet)") from None
        groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != entry.pw_gid)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)

    @property
    def group_name(self):
        return grp.getgrgid(self.gid).gr_name


def worker_command(mode):
    # -I: no environment, no user site; -S: no site-packages at all
    return [sys.executable, "-I", "-S", WORKER, mode]


def popen_options(account):
    return {
        "user": account.uid,
        "group": account.gid,
        "extra_groups": list(account.groups),
        "umask": 0o022,
        "cwd": "/",
        "env": {"PATH": "/usr/bin:/bin", "HOME": account.home, "LANG": "C.UTF-8"},
        "start_new_session": True,  # a timeout kills the whole group
        "close_fds": True,
    }


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


async def run_json(account, mode, job, timeout):
    """Run *mode* with *job* as *account*; return the worker's JSON answer."""
    proc = await asyncio.create_subprocess_exec(
        *worker_command(mode),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        **popen_options(account),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(job).encode()), timeout)
    except asyncio.TimeoutError:
        _kill_group(proc)
        await proc.wait()
        raise WorkerError(f"gave up after {timeout:g} s in the home of {account.name}") from None
    except BaseException:
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise WorkerError(f"worker for {account.name} failed: {last[0]}")
    return json.loads(out)


def open_export(account, job):
    """Start an export as *account*; returns the Popen whose stdout is the tar stream.

    Synchronous on purpose: the caller reads the stream with tarfile in a thread.
    """
    proc = subprocess.Popen(
        worker_command("export"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen_options(account),
    )
    proc.stdin.write(json.dumps(job).encode())
    proc.stdin.close()
    return proc


def kill_export(proc):
    _kill_group(proc)
