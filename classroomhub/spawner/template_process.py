"""The spawn template: a root process that has imported what a jupyter
server imports, and forks one server per request.

Started by the hub (:mod:`.template`) with ``main([FD, *MODULES])``, FD
being its end of a private socketpair (the control socket), MODULES the
extra modules to import (``template_preload``). It imports the single-user
server and the server extensions this environment enables, then
``gc.freeze()``\\ s them, so that the forked servers share those pages
copy-on-write.

The template never sees anything of a person. A spawn request is a socket
the hub passes over the control socket (SCM_RIGHTS) with a single byte; the
template forks *first* and only the child reads the request from that socket
(argv, environment incl. tokens, user name, cgroup files), joins the
server's cgroups, starts a session, drops to the user and runs the server's
``main`` in-process. The template reaps its children at once and tells the
hub their exit status, so a dead server is never a zombie that ``kill(pid,
0)`` still finds. At EOF on the control socket (the hub is gone) it exits
and leaves the servers running, as a hub restart does in exec mode.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import glob
import importlib
import itertools
import json
import os
import selectors
import signal
import site
import socket
import struct
import sys
import time
import traceback

from jupyterhub.spawner import set_user_setuid
from setproctitle import getproctitle, setproctitle

from .enforcement import pid_writer
from .template_env import PER_SERVER, Captures, RecordedReads

#: a spawn request on the control socket: this byte and the child's socket
SPAWN = b"S"
#: a kill request on the control socket: this byte and CHILD (a spawn that failed)
KILL = b"K"
#: an exit report from the template: (pid, fork number, status as Popen.returncode);
#: the fork number tells a reused pid from the server that had it before
EXIT = struct.Struct("!iQi")
#: what the child sends first: its pid and fork number
CHILD = struct.Struct("!iQ")
#: the length prefix of the request and of the template's start report
INT = struct.Struct("!i")
#: the child's answer once it is about to run the server
READY = b"ok"

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36

#: what a fresh interpreter has, so the server's own handlers behave as after exec
FRESH_SIGNALS = {signal.SIGINT: signal.default_int_handler, signal.SIGPIPE: signal.SIG_IGN, signal.SIGXFSZ: signal.SIG_IGN}


class ServerExit(BaseException):
    """A forked child's server has ended with ``code``: leave the template's loop."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


def server_modules():
    """The modules a single-user server imports at start: jupyterhub's
    singleuser extension, jupyter_server, and the server extensions enabled
    in this environment's and the system's configuration (never a user's)."""
    import jupyter_core.paths

    modules = ["jupyterhub.singleuser", "jupyter_server.serverapp"]
    folders = jupyter_core.paths.ENV_CONFIG_PATH + jupyter_core.paths.SYSTEM_CONFIG_PATH
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "jupyter_server_config.d", "*.json"))):
            try:
                with open(path) as f:
                    enabled = json.load(f).get("ServerApp", {}).get("jpserver_extensions", {})
            except (OSError, ValueError):
                continue
            modules += [name for name, on in enabled.items() if on]
    return modules


def preload(modules, log=sys.stderr):
    """Import *modules* and the modules their extension points name."""
    for name in modules:
        try:
            module = importlib.import_module(name)
            points = getattr(module, "_jupyter_server_extension_points", None)
            for point in points() if points else []:
                if point.get("module"):
                    importlib.import_module(point["module"])
        except Exception as e:  # the server reports a broken extension itself
            print(f"classroomhub spawn template: not preloaded {name}: {e}", file=log)


def serve(ctl, captures):
    """Fork a child per spawn request on *ctl* until EOF; report exits."""
    # orphans of the servers (a kernel whose server died) come here to be
    # reaped, instead of to an init that may never reap them
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    servers = {}  # pid -> fork number
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    selector = selectors.DefaultSelector()
    selector.register(ctl, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    context = (ctl, selector, wake_r, wake_w, captures, servers, itertools.count())
    while True:
        for key, _ in selector.select():
            if key.fileobj is ctl:
                message, fds, _, _ = socket.recv_fds(ctl, 1, 1)
                if not message:
                    return  # EOF: the hub is gone; the servers live on
                if message == KILL:
                    kill(ctl.recv(CHILD.size, socket.MSG_WAITALL), servers)
                for fd in fds:
                    spawn(fd, context)
            else:
                _drain(wake_r)
        reap(ctl, servers)


def _drain(fd):
    """Empty the (non-blocking) signal wake-up pipe."""
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def spawn(conn_fd, context):
    """Fork; the child becomes the server. The parent keeps nothing of it."""
    number = next(context[-1])
    try:
        pid = os.fork()
    except OSError as e:
        print(f"classroomhub spawn template: cannot fork: {e}", file=sys.stderr, flush=True)
        os.close(conn_fd)  # the hub sees EOF instead of a pid
        return
    if pid == 0:
        try:
            code = become_server(conn_fd, number, context)
        except BaseException:  # as a script's uncaught exception
            traceback.print_exc()
            os._exit(1)
        raise ServerExit(code)  # out of the template's loop, to exit as the server's script does
    context[-2][pid] = number
    os.close(conn_fd)


def kill(request, servers):
    """SIGKILL the fork *request* names if it is still a server (not reaped:
    its pid is not another process's yet)."""
    pid, number = CHILD.unpack(request)
    if servers.get(pid) == number:
        os.kill(pid, signal.SIGKILL)


def reap(ctl, servers):
    """Collect every exited child; report the servers' exits to the hub."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        number = servers.pop(pid, None)
        if number is None:
            continue  # an orphan of a server, not a server
        try:
            ctl.sendall(EXIT.pack(pid, number, os.waitstatus_to_exitcode(status)))
        except OSError:
            pass  # the hub is gone; the loop ends at EOF


def become_server(conn_fd, number, context):
    """In the forked child: leave the template, read the request, become the
    user's server, run it; its exit status."""
    ctl, selector, wake_r, wake_w, captures, _, _ = context
    signal.set_wakeup_fd(-1)
    selector.close()
    ctl.close()
    for fd in (wake_r, wake_w):
        os.close(fd)
    reset_signals()
    conn = socket.socket(fileno=conn_fd)
    conn.sendall(CHILD.pack(os.getpid(), number))
    try:
        request, stdio = read_request(conn)
        argv = become_user(request, stdio, captures)
    except BaseException as e:
        conn.sendall(f"{type(e).__name__}: {e}".encode(errors="replace")[:4000])
        os._exit(71)
    conn.sendall(READY)
    conn.close()
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    return run_server(argv)


def reset_signals():
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, FRESH_SIGNALS.get(sig, signal.SIG_DFL))
        except (OSError, ValueError):
            pass  # not settable (e.g. real-time signals the libc reserves)


def read_request(conn):
    """The request and the server's stdin, stdout and stderr from *conn*."""
    header, stdio, _, _ = socket.recv_fds(conn, INT.size, 3, socket.MSG_WAITALL)
    if len(header) != INT.size or len(stdio) != 3:
        raise RuntimeError("incomplete spawn request")
    (size,) = INT.unpack(header)
    payload = b""
    while len(payload) < size:
        chunk = conn.recv(size - len(payload))
        if not chunk:
            raise RuntimeError("incomplete spawn request")
        payload += chunk
    return json.loads(payload), stdio


def become_user(request, stdio, captures):
    """Join the cgroups, start a session, take the standard streams, drop to
    the user (as jupyterhub's set_user_setuid does for exec), take the
    environment and what the imports derived from it; returns the server's argv."""
    if request["attach"]:
        pid_writer(request["attach"])()  # before anything is charged
    if request.get("oom_score_adj"):
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(request["oom_score_adj"]))
        except OSError:
            pass  # lowering needs CAP_SYS_RESOURCE, as in exec mode
    os.setsid()
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
        os.close(fd)
    set_user_setuid(request["user"])()  # gid, groups, uid, then the home as cwd
    # readable /proc/<pid> files for the user, as after an exec
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    os.environ.clear()
    os.environ.update(request["env"])
    captures.apply(os.environ)
    if site.ENABLE_USER_SITE and os.path.isdir(site.USER_SITE) and site.USER_SITE not in sys.path:
        site.addsitedir(site.USER_SITE)  # as the interpreter does at start (USER_SITE is the user's now)
    return request["argv"]


def run_server(argv):
    """The single-user server's ``main`` in this process, as its script runs
    it; its exit status (the interpreter's exit then waits for the server's
    threads and runs its exit handlers, as after exec)."""
    from jupyterhub.singleuser import main

    gc.enable()
    atexit._clear()  # the template's exit handlers are not the server's
    # the script's folder first, as the interpreter puts it when it runs the
    # script (the hub checked that argv[0] is this one); never the current folder
    script = os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")
    sys.path.insert(0, os.path.dirname(os.path.realpath(script)))
    sys.argv = list(argv)
    # ps, top and pgrep show the server's command, as for an exec'd server
    setproctitle(" ".join(argv))
    try:
        return main()
    except SystemExit as e:
        return e.code


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ctl = socket.socket(fileno=int(argv[0]))
    ctl.setblocking(True)
    gc.disable()  # no collection moves objects' pages before the freeze
    t0 = time.monotonic()
    marks = {name: os.environ[name] for name in PER_SERVER if name in os.environ}
    environ, os.environ = os.environ, RecordedReads(os.environ)
    try:
        preload(server_modules() + argv[1:])
    finally:
        reads, os.environ = os.environ.read, environ
    captures = Captures(marks).scan()
    # set up the title here: it needs the interpreter's own environment to
    # find the argv area, and a child has replaced that when it retitles
    setproctitle(getproctitle())
    gc.collect()
    gc.freeze()  # the forked servers share these pages copy-on-write
    print(
        f"classroomhub spawn template {os.getpid()}: ready in {time.monotonic() - t0:.1f} s; "
        f"re-derived per server: {', '.join(captures.describe()) or 'nothing'}",
        file=sys.stderr,
        flush=True,
    )
    report = json.dumps({"reads": {name: environ.get(name) for name in sorted(reads)}}).encode()
    ctl.sendall(READY + INT.pack(len(report)) + report)
    try:
        serve(ctl, captures)
    except ServerExit as e:  # in a forked child: the server has ended
        sys.exit(e.code)


if __name__ == "__main__":
    main()
