"""Running work as one person: the file worker, and commands such as ``git``.

The classroom service runs as root; it never reads or writes a home itself.
File work goes to a worker (:mod:`.worker`) that starts as root, then takes
on the person's groups, gid and effective (so file-system) uid in a clean
environment (:func:`.worker.become`), with a timeout and a memory limit, so
a planted link or FIFO meets the kernel's permission checks and cannot hang
the service. Its real and saved uid stay root's: the person cannot stop or
kill it. Each job (one home, one folder) gets a worker process of its own,
from one of two runners: :class:`ForkServer` (the service's default, see
``fork_server``), a long-lived root process with the worker loaded that
forks a child per job, or :class:`Subprocesses`, a new ``python -I -S``
process per job (:func:`worker_command`).

:func:`popen_options` is the other way: a command (``git clone`` of a
release's source) started wholly as the person, real uid included.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import pwd
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from ...accounts import AccountPolicy
from ...spawner.cgroupfs import group_path, mountinfo, own_cgroups  # the spawner's layout, one definition
from ...spawner.enforcement import group_key
from .exporting import FRAME, WINDOW

#: the folder from which a worker imports this package, as the top-level package ``files``
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# files an export's worker is told about at once (it waits when WINDOW are in flight)
ACK_EVERY = WINDOW // 4


class WorkerError(RuntimeError):
    """The worker failed as a whole (crashed, timed out); the message says how."""


class NoAccount(LookupError):
    """The login has no system account here yet (ClassroomSpawner may create it at their first start)."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: tuple
    home: str

    #: which accounts may be worked as (the service configures it; strict by default)
    policy = AccountPolicy()

    @classmethod
    def of(cls, login):
        """*login*'s account; NoAccount if it has none, AccountRefused if the policy refuses it."""
        try:
            entry = pwd.getpwnam(login)
        except KeyError:
            raise NoAccount(f"{login} has no system account on this host (yet)") from None
        cls.policy.check(login)
        groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != entry.pw_gid)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)



def worker_command(mode):
    """A new worker process for *mode* (see :mod:`.worker`)."""
    # -I: no environment, no user site; -S: no site-packages at all. On the path
    # goes this package's parent only; the worker's modules use the standard library alone.
    boot = f"import sys; sys.path[:0] = [{PACKAGE_PARENT!r}]; from files.worker import main; main()"
    return [sys.executable, "-I", "-S", "-c", boot, mode]


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


#: the address space a worker may use (RLIMIT_AS), unless its runner says otherwise
WORKER_MEMORY = 512 * 1024**2


def request_line(account, mode, job, memory=WORKER_MEMORY):
    """What a worker is given: whom to become, its limits, and the job."""
    request = {
        "uid": account.uid,
        "gid": account.gid,
        "groups": list(account.groups),
        "env": worker_env(account),
        "memory": memory,
        "mode": mode,
        "job": job,
    }
    return json.dumps(request).encode() + b"\n"


def server_cgroups(login, parent="classroomhub"):
    """The ``cgroup.procs`` files of *login*'s server's groups, as ClassroomSpawner
    lays them out below the hub's own cgroup (whose child this service is):
    the memory and pids hierarchies of cgroup v1, the group of v2. Only
    those that exist (their server runs)."""
    own, found = own_cgroups(), []
    for mount, fstype, options in mountinfo():
        controllers = [""] if fstype == "cgroup2" else [c for c in ("memory", "pids") if c in options]
        for controller in controllers if fstype in ("cgroup", "cgroup2") else ():
            if controller in own:
                procs = os.path.join(group_path(mount, own[controller], parent), group_key(login), "cgroup.procs")
                if os.path.exists(procs):
                    found.append(procs)
    return found


def worker_options():
    """How a new worker process starts: as root (it becomes the person
    itself), in a session of its own so a timeout kills the whole group."""
    return {"cwd": "/", "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, "start_new_session": True, "close_fds": True}


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def worker_env(account):
    return {"PATH": "/usr/bin:/bin", "HOME": account.home, "LANG": "C.UTF-8"}


async def run_json(account, mode, job, timeout, memory=WORKER_MEMORY):
    """Run *mode* with *job* as *account* in a new worker process; return its JSON answer."""
    proc = await asyncio.create_subprocess_exec(
        *worker_command(mode),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        **worker_options(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(request_line(account, mode, job, memory)), timeout)
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

    def __init__(self, socket_dir, log=None, memory=WORKER_MEMORY):
        self.socket_dir = socket_dir
        self.path = os.path.join(socket_dir, "worker.sock")
        self.log = log
        self.memory = memory
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

    def request(self, account, mode, job):
        """The line that asks the server for *mode* with *job* as *account*."""
        return request_line(account, mode, job, self.memory)

    async def run_json(self, account, mode, job, timeout):
        reader, writer = await asyncio.open_unix_connection(self.path, limit=1 << 26)
        pid = None
        try:
            writer.write(self.request(account, mode, job))
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

    def open_export(self, account, job, timeout):
        """Start an export as *account* (see :class:`Export`); blocking, for a thread."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(self.path)
            sock.sendall(self.request(account, "export", job))
            export = Export(sock, account, timeout, since_ns=job.get("since_ns"))
            export.pid = int(export.line())
            return export
        except BaseException:
            sock.close()
            raise


class Subprocesses:
    """The runner without a fork server: one new worker process per job."""

    run_json = staticmethod(run_json)
    memory = WORKER_MEMORY

    @classmethod
    def open_export(cls, account, job, timeout):
        """Start an export as *account* (see :class:`Export`); blocking, for a thread."""
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [*worker_command("export"), str(theirs.fileno())],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                **worker_options(),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            proc.stdin.write(request_line(account, "export", job, cls.memory))
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it died at once: the end of its socket says so below
        return Export(ours, account, timeout, proc, since_ns=job.get("since_ns"))


class Export:
    """The service's end of an export: messages from a worker, each with the
    descriptor of a file it opened as *account*, or none.

    Descriptors arrive in the order of the messages that carry them, however
    the kernel splits the stream. Every wait is bounded by *timeout* seconds
    from the start; past it the worker's process group is killed.

    With *since_ns* (a due date), :attr:`changed` collects the files whose
    ctime is later once they were copied (the owner cannot set a ctime: a
    file that passes was copied as it was then) and the folders the worker
    saw changed; a caller may replace the list with its own.
    """

    def __init__(self, sock, account, timeout, proc=None, since_ns=None):
        self.sock, self.account, self.proc = sock, account, proc
        self.since_ns = since_ns
        self.changed = []
        self.pid = proc.pid if proc is not None else None
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.data = bytearray()
        self.fds = collections.deque()
        self.unacknowledged = 0
        sock.setblocking(False)  # waits are polls, bounded by the deadline
        self.poll = select.poll()
        self.poll.register(sock, select.POLLIN)

    def _receive(self):
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:  # a worker that keeps sending is stopped too
                self.kill()
                raise WorkerError(f"gave up after {self.timeout:g} s in the home of {self.account.name}")
            try:
                data, fds, flags, _ = socket.recv_fds(self.sock, 1 << 16, 8, socket.MSG_CMSG_CLOEXEC)
                break
            except BlockingIOError:
                self._acknowledge()  # before waiting: the worker may be waiting for these
                self.poll.poll(left * 1000)
        self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise WorkerError(f"worker for {self.account.name} passed more files at once than it may")
        if not data:
            raise WorkerError(f"worker for {self.account.name} ended without finishing{self._stderr()}")
        self.data += data

    def _stderr(self):
        if self.proc is None:
            return ""
        self.proc.wait()
        last = self.proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
        return f": {last[0]}" if last else f" (exit status {self.proc.returncode})"

    def line(self):
        while b"\n" not in self.data:
            self._receive()
        line, _, rest = bytes(self.data).partition(b"\n")
        self.data[:] = rest
        return line

    def message(self):
        """The next ``(message, fd or None)``; *fd* is the caller's to close."""
        while len(self.data) < FRAME.size:
            self._receive()
        (length,) = FRAME.unpack_from(self.data)
        end = FRAME.size + length
        while len(self.data) < end:
            self._receive()
        message = json.loads(self.data[FRAME.size : end])
        del self.data[:end]
        if "path" not in message:
            if self.since_ns is not None:
                self.changed.extend(p for p in message.get("changed", ()) if isinstance(p, str))
            return message, None
        if not isinstance(message["path"], str):
            raise WorkerError(f"worker for {self.account.name} sent a malformed message")
        if not self.fds:
            raise WorkerError(f"worker for {self.account.name} sent a file without its descriptor")
        return message, self.fds.popleft()

    def done_with_one(self, path=None, fd=None):
        """One more file (*path*, still open as *fd*) is copied: the worker
        keeps a bounded number in flight and is told in batches (one byte a file)."""
        if self.since_ns is not None and fd is not None and os.fstat(fd).st_ctime_ns > self.since_ns:
            self.changed.append(path)
        self.unacknowledged += 1
        if self.unacknowledged >= ACK_EVERY:
            self._acknowledge()

    def _acknowledge(self):
        if self.unacknowledged:
            try:  # never more than WINDOW bytes: they fit in the socket's buffer
                self.sock.send(b"." * self.unacknowledged)
            except OSError:
                pass  # it has finished and gone
            self.unacknowledged = 0

    def kill(self):
        if self.pid:
            _kill_group(self.pid)

    def close(self):
        while self.fds:
            os.close(self.fds.popleft())
        self.sock.close()
        if self.proc is not None:
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stderr.close()
