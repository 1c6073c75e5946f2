"""Running the file worker as one person (their uid, gid and groups).

The classroom service runs as root; it never reads or writes a home itself.
Each job is a short-lived ``python -I -S worker.py MODE`` process with the
person's credentials, a clean environment and a timeout, so a planted link
or FIFO meets the kernel's permission checks and cannot hang the service.
"""

from __future__ import annotations

import asyncio
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
        "env": worker_env(account),
        "start_new_session": True,  # a timeout kills the whole group
        "close_fds": True,
    }


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def worker_env(account):
    return {"PATH": "/usr/bin:/bin", "HOME": account.home, "LANG": "C.UTF-8"}


async def run_json(account, mode, job, timeout):
    """Run *mode* with *job* as *account* in a new worker process; return its JSON answer."""
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
        _kill_group(proc.pid)
        await proc.wait()
        raise WorkerError(f"gave up after {timeout:g} s in the home of {account.name}") from None
    except BaseException:
        _kill_group(proc.pid)
        raise
    if proc.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise WorkerError(f"worker for {account.name} failed: {last[0]}")
    return json.loads(out)


class ForkServer:
    """A root process with the worker loaded that forks one child per job.

    Same privileges model as :func:`run_json` (the child becomes the user
    before it does anything), without starting an interpreter per home.
    The socket lives in a root-only folder and the server only answers root.
    """

    def __init__(self, socket_dir, log=None):
        self.socket_dir = socket_dir
        self.path = os.path.join(socket_dir, "worker.sock")
        self.log = log
        self.proc = None

    async def start(self):
        os.makedirs(self.socket_dir, mode=0o700, exist_ok=True)
        os.chmod(self.socket_dir, 0o700)
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.proc = await asyncio.create_subprocess_exec(
            *worker_command("serve"), self.path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise WorkerError(f"the worker fork server did not start (exit status {self.proc.returncode})")

    async def stop(self):
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.stdin.close()  # the server exits at end of input
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def run_json(self, account, mode, job, timeout):
        request = {
            "uid": account.uid,
            "gid": account.gid,
            "groups": list(account.groups),
            "env": worker_env(account),
            "mode": mode,
            "job": job,
        }
        reader, writer = await asyncio.open_unix_connection(self.path, limit=1 << 26)
        pid = None
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            deadline = asyncio.get_running_loop().time() + timeout
            pid = int(await asyncio.wait_for(reader.readline(), timeout))
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            answer = await asyncio.wait_for(reader.read(), remaining)
        except (asyncio.TimeoutError, ValueError):
            if pid:
                _kill_group(pid)
            raise WorkerError(f"gave up after {timeout:g} s in the home of {account.name}") from None
        except BaseException:
            if pid:
                _kill_group(pid)
            raise
        finally:
            writer.close()
        if not answer:
            raise WorkerError(f"worker for {account.name} ended without an answer")
        answer = json.loads(answer)
        if "error" in answer:
            raise WorkerError(f"worker for {account.name} failed: {answer['error']}")
        return answer["result"]


class Subprocesses:
    """The runner without a fork server: one new worker process per job."""

    run_json = staticmethod(run_json)


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
    _kill_group(proc.pid)
