"""Sub-second starts: servers forked from a spawn template instead of exec'd.

``spawn_method = "template"`` makes ClassroomSpawner ask the hub process's
:class:`Template` (:mod:`.template_process`, started at the first such spawn
and again if it died) for a server: the template has the server's modules
imported, forks, and only the child reads the person's request. The pid
comes back; poll, stop and a hub restart work on it as on an exec'd server.
Whatever the template cannot start as exec would (a shell, another command,
pipes) starts by exec, as does every server while the template is unusable.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import threading

from jupyterhub.utils import random_port
from traitlets import Enum, List, Unicode
from traitlets.config import LoggingConfigurable

from .template_env import differs, placeholders
from .template_process import CHILD, EXIT, INT, KILL, READY, SPAWN

#: the hub's environment the template keeps (as LocalProcessSpawner's env_keep)
TEMPLATE_ENV = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH")
#: seconds a child may take to report its pid and to become the user
CHILD_TIMEOUT = 30


class TemplateUnavailable(RuntimeError):
    """The template cannot take a spawn now; the server starts by exec."""


class Template:
    """The hub's handle on its template process (one per hub process)."""

    #: how the template process is started: -P keeps the current folder off
    #: sys.path (it runs as root; the hub's folder may be writable by others)
    command = (sys.executable, "-P", "-c", "from classroomhub.spawner.template_process import main; main()")
    #: seconds the template may take to import the server's modules
    start_timeout = 120

    _current = None
    _starting = None

    def __init__(self, log, names, preload=()):
        """*names*: the environment variables a server gets (for placeholders);
        *preload*: modules to import besides the server and its extensions."""
        self.log = log
        self.exits = {}  # (pid, fork number) -> exit status, as the template reports them
        self.alive = False
        #: variables the template's imports read ({name: value then})
        self.reads = {}
        self.ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {name: os.environ[name] for name in TEMPLATE_ENV if name in os.environ}
        #: the per-server variables it imports with placeholders for
        # (HOME always: unset, the imports would take root's home from the password database)
        self.marked = placeholders(f"classroomhub-template-{secrets.token_hex(4)}", {*names, "HOME"})
        env.update(self.marked)
        try:
            self.process = subprocess.Popen(
                [*self.command, str(theirs.fileno()), *preload],
                pass_fds=[theirs.fileno()],
                env=env,
                stdin=subprocess.DEVNULL,
                cwd="/",  # nothing relative resolves in the hub's folder
                start_new_session=True,  # the hub's terminal signals are not its
            )
        finally:
            theirs.close()
        self.pid = self.process.pid

    @classmethod
    async def running(cls, log, names, preload=()):
        """This hub process's template, started (once at a time) if needed
        (see :meth:`__init__` for *names* and *preload*)."""
        current = cls._current
        if current is not None and current.alive:
            return current
        if cls._starting is None or cls._starting.done():
            cls._starting = asyncio.ensure_future(cls._start(log, names, preload))
        return await asyncio.shield(cls._starting)

    @classmethod
    async def _start(cls, log, names, preload):
        template = cls(log, names, preload)
        try:
            answer = await asyncio.wait_for(_recv_exactly(template.ctl, len(READY) + INT.size), cls.start_timeout)
            if answer[: len(READY)] != READY:
                raise OSError(f"it said {answer!r}")
            (size,) = INT.unpack(answer[len(READY) :])
            report = json.loads(await _recv_exactly(template.ctl, size))
        except (asyncio.TimeoutError, OSError, ValueError) as e:
            template.close()
            raise TemplateUnavailable(f"the spawn template did not start ({e!r})") from None
        template.reads = report["reads"]
        template.ctl.setblocking(True)
        template.alive = True
        threading.Thread(target=template._read_exits, name="spawn-template-exits", daemon=True).start()
        log.info("ClassroomSpawner: spawn template %s started", template.pid)
        cls._current = template
        return template

    def _read_exits(self):
        """Record the exit statuses the template reports, until it is gone."""
        buffer = b""
        while True:
            try:
                data = self.ctl.recv(EXIT.size * 64)
            except OSError:
                data = b""
            if not data:
                break
            buffer += data
            while len(buffer) >= EXIT.size:
                pid, number, status = EXIT.unpack(buffer[: EXIT.size])
                buffer = buffer[EXIT.size :]
                self.exits[pid, number] = status
        closing, self.alive = not self.alive, False
        self.process.wait()
        log = self.log.info if closing else self.log.warning
        log("ClassroomSpawner: spawn template %s exited (%s)", self.pid, self.process.returncode)

    async def spawn(self, request, stdio):
        """A new server for *request*, with *stdio* as its standard streams:
        its :class:`TemplateChild`.

        Raises TemplateUnavailable if the template did not fork (the server
        can start by exec), RuntimeError if the child failed to become the
        server (the message says why, as a failed preexec_fn would).
        """
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.setblocking(False)  # the hub's event loop never waits on the template or the child
        sending = None
        try:
            try:
                socket.send_fds(self.ctl, [SPAWN], [theirs.fileno()])
            except OSError as e:
                self.alive = False
                raise TemplateUnavailable(f"spawn template gone: {e}") from None
            finally:
                theirs.close()
            payload = json.dumps(request).encode()
            socket.send_fds(mine, [INT.pack(len(payload))], list(stdio))  # a new socket's buffer takes it
            # the rest flows while the pid is awaited (whoever reads the socket gets all of it)
            sending = asyncio.ensure_future(asyncio.get_running_loop().sock_sendall(mine, payload))
            try:
                head = await asyncio.wait_for(_recv_exactly(mine, CHILD.size), CHILD_TIMEOUT)
            except asyncio.TimeoutError:
                head = b""
            if len(head) != CHILD.size:
                raise TemplateUnavailable("the spawn template did not fork")
            pid, number = CHILD.unpack(head)
            try:
                answer = await asyncio.wait_for(self._answer(mine, sending), CHILD_TIMEOUT)
            except BaseException as e:
                # e.g. its owner stopped it after it became theirs: it must not
                # live on untracked (nor the hub's spawn end in a 500)
                self.kill(pid, number)
                if not isinstance(e, Exception):
                    raise  # cancelled
                why = f"no answer in {CHILD_TIMEOUT} s" if isinstance(e, asyncio.TimeoutError) else repr(e)
                raise RuntimeError(f"server process {pid} could not start: {why}") from None
        finally:
            if sending is not None:
                sending.cancel()
                await asyncio.gather(sending, return_exceptions=True)  # its writer is removed before the close
            mine.close()
        if answer != READY:
            self.kill(pid, number)
            raise RuntimeError(f"server process {pid} could not start: {answer.decode(errors='replace') or 'it died'}")
        return TemplateChild(self, pid, number)

    @staticmethod
    async def _answer(mine, sending):
        """The child's answer (READY or why not), once *sending* sent its request."""
        await sending
        return await _recv_exactly(mine, 4096)

    def kill(self, pid, number):
        """SIGKILL fork *number* if it is *pid* and still running (the template
        decides: only it knows whether the pid was reaped and maybe reused)."""
        try:
            self.ctl.sendall(KILL + CHILD.pack(pid, number))
        except OSError as e:
            self.log.warning("ClassroomSpawner: cannot have server process %s killed: %s", pid, e)

    def close(self):
        """Close the control socket: the template exits, its servers run on."""
        self.alive = False
        try:
            self.ctl.shutdown(socket.SHUT_RDWR)  # wakes the exit reader; EOF for the template
        except OSError:
            pass
        self.ctl.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if type(self)._current is self:
            type(self)._current = None

    @classmethod
    def stop_current(cls):
        """Close this hub process's template, if any (tests; a hub's exit does it by EOF)."""
        if cls._current is not None:
            cls._current.close()


async def _recv_exactly(sock, size):
    """Up to *size* bytes from non-blocking *sock*; fewer only at EOF."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class TemplateChild:
    """A server forked by the template: its pid and, once reported, its exit status."""

    def __init__(self, template, pid, number):
        self.template = template
        self.pid = pid
        self.number = number  # the template's fork count: a reused pid is another fork
        self.returncode = None

    def poll(self):
        """The exit status, or None while it runs or while nobody can tell
        (the template is gone: the spawner then checks the pid)."""
        if self.returncode is None:
            self.returncode = self.template.exits.pop((self.pid, self.number), None)
        return self.returncode


#: the `make_preexec_fn`s whose steps the child repeats (ClassroomSpawner's, on
#: top of LocalProcessSpawner's); a spawner class with another starts by exec
STANDARD_PREEXECS = {
    (__name__.rsplit(".", 1)[0] + ".spawner", "ClassroomSpawner.make_preexec_fn"),
    ("jupyterhub.spawner", "LocalProcessSpawner.make_preexec_fn"),
}


class TemplateSpawning(LoggingConfigurable):
    """ClassroomSpawner's start by fork from the spawn template (a mixin of
    it, before LocalProcessSpawner; uses the spawner's `_attach_files` and
    `server_oom_score_adj`)."""

    spawn_method = Enum(
        ["exec", "template"],
        "exec",
        help="""How a server process starts. ``exec`` (the default) runs the
        server's command, as LocalProcessSpawner does. ``template`` forks it
        from a root process of the hub that has the single-user server's
        modules imported (started at the first such spawn): the server is up
        in well under a second instead of about two, and idle servers share
        those modules' memory (62 MiB per idle server instead of 126 in the
        class day); recommended for a class (see the spawner docs for when
        not to use it). The child joins the server's cgroup, drops to the
        user and only then reads the person's request; the template holds
        nothing of anyone. Servers whose command is not this environment's
        ``jupyterhub-singleuser``, or that use `shell_cmd` or `popen_kwargs`
        beyond the standard streams, start by exec. See the spawner docs.""",
    ).tag(config=True)

    template_preload = List(
        Unicode(),
        [
            # what the extensions of classroomhub's single-user environment
            # import only when they load (measured: ~0.4 s of each start)
            "nbdime.webapp.nb_server_extension",
            "jupyterlab_git.handlers",
            "jupyter_lsp.serverextension",
            "jupyterlab.extensions.pypi",
            "IPython",
        ],
        help="""Modules the spawn template imports besides the single-user
        server and the server extensions enabled in its environment: those an
        extension imports only when the server loads it. One that is missing
        is skipped. Read when the template starts (the first template spawn of
        a hub process).""",
    ).tag(config=True)

    _template_child = None

    async def start(self):
        if self.spawn_method != "template":
            return await super().start()
        if self.port == 0:
            self.port = random_port()
        env = self.get_env()  # may settle cmd[0] (ManagedKernels)
        cmd = [*self.cmd, *self.get_args()]
        try:
            template = await Template.running(self.log, env, self.template_preload)
        except TemplateUnavailable as e:
            self.log.warning("ClassroomSpawner: %s starts by exec: %s", self._log_name, e)
            return await super().start()
        reason = self._template_unsuitable(cmd, env) or differs(env, template.reads, template.marked)
        stdio = None if reason else self._template_stdio()
        if stdio is None:
            self.log.info("ClassroomSpawner: %s starts by exec: %s", self._log_name, reason or "popen_kwargs")
            return await super().start()
        request = {
            "argv": cmd,
            "env": env,
            "user": self.user.name,
            "attach": self._attach_files,
            "oom_score_adj": self.server_oom_score_adj,
        }
        self.log.info("Spawning %s (forked from spawn template %s)", shlex.join(cmd), template.pid)
        try:
            child = await template.spawn(request, stdio[0])
        except TemplateUnavailable as e:
            self.log.warning("ClassroomSpawner: %s starts by exec: %s", self._log_name, e)
            return await super().start()
        finally:
            for fd in stdio[1]:
                os.close(fd)
        self._template_child = child
        self.pid = child.pid
        return (self.ip or "127.0.0.1", self.port)

    def _template_unsuitable(self, cmd, env):
        """Why the template cannot run this server as its command would; "" if it can."""
        if self.shell_cmd:
            return "shell_cmd is set"
        preexecs = {
            (f.__module__, f.__qualname__) for c in type(self).__mro__ if (f := c.__dict__.get("make_preexec_fn"))
        }
        if preexecs - STANDARD_PREEXECS:
            # the child's steps are these; a class that starts servers
            # otherwise (as the hub's user, say) is not
            return "make_preexec_fn is overridden"
        script = os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")
        found = shutil.which(cmd[0], path=env.get("PATH", os.defpath)) if cmd else None
        if not found or os.path.realpath(found) != os.path.realpath(script):
            return f"its command is not {script}"
        return ""

    def _template_stdio(self):
        """``([stdin, stdout, stderr] fds, fds to close after)`` from
        `popen_kwargs` (the hub's own by default, as Popen inherits them);
        None if it asks for more than the standard streams."""
        kwargs = dict(self.popen_kwargs)
        fds, opened = [], []
        for target, name in enumerate(("stdin", "stdout", "stderr")):
            value = kwargs.pop(name, None)
            if value is None:
                fds.append(target)
            elif value == subprocess.STDOUT and name == "stderr":
                fds.append(fds[1])
            elif value == subprocess.DEVNULL:
                opened.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
                fds.append(opened[-1])
            elif isinstance(value, int) and value >= 0:
                fds.append(value)
            elif hasattr(value, "fileno"):
                fds.append(value.fileno())
            else:
                kwargs[name] = value  # PIPE: only exec gives a handle to read it
        if kwargs:
            for fd in opened:
                os.close(fd)
            return None
        return fds, opened

    def process_status(self):
        """The server's exit status if this hub saw it exit, else None (no side effects)."""
        if self.proc is not None:
            return self.proc.poll()
        if self._template_child is not None:
            return self._template_child.poll()
        return None

    async def poll(self):
        child = self._template_child
        if child is not None:
            status = child.poll()
            if status is not None:
                self.clear_state()
                return status
            if child.template.alive:
                return None
        return await super().poll()  # by pid, as after a hub restart

    def clear_state(self):
        super().clear_state()
        self._template_child = None
