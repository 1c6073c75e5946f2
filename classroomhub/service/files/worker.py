"""The worker: file work inside one person's home, run *as that person*.

The classroom service never touches a home as root. It starts a worker
process (:func:`main`, see :func:`.runas.worker_command`) or asks the
worker's fork server (:func:`serve`) for a forked child; either takes on the
person's file-system identity (:func:`become`) before it reads its JSON job,
so the kernel itself forbids every escape. On top of that, everything in
the home is reached without following a link (:mod:`.nofollow`).

Modes (the first argument, or a request's ``mode``):

``deliver``
    Place released files under ``HOME/<course>/<material>/`` without
    clobbering what the person changed (:func:`.placing.deliver`).
``link``
    Point ``HOME/<course>/<material>`` at a read-only shared tree
    (:func:`.placing.link_shared`).
``export``
    Open the regular files of a folder and pass their descriptors to the
    service over a Unix socket (:func:`.exporting.export`); the service
    imports releases from an instructor's folder this way and collects
    students' work.
``serve PATH``
    The fork server: answer requests for the modes above on the Unix
    socket *PATH*, one forked child per request.

Only the standard library is imported: ``-I -S`` keeps the person's
environment and site-packages out of a process the service relies on, and
this package is all the worker loads (imported as the top-level package
``files``, nothing else of classroomhub).
"""

import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys

from .exporting import export, send_frame
from .nofollow import describe_error
from .placing import deliver, link_shared

# -- the protocol ------------------------------------------------------------------


#: modes whose answer is JSON (export passes open files instead)
JSON_MODES = {"deliver": deliver, "link": link_shared}


def error_text(e):
    """One line for the service's report: the path and the reason."""
    if isinstance(e, OSError):
        return f"{e.filename}: {describe_error(e)}" if e.filename else describe_error(e)
    return f"{type(e).__name__}: {e}"


def run_export(job, sock):
    """:func:`export`, its failure sent as the last message (shown to the user)."""
    try:
        export(job, sock)
    except Exception as e:  # reported to the service, which fails this folder only
        try:
            send_frame(sock, {"error": error_text(e)})
        except OSError:
            pass  # the service is gone: nobody to tell


def serve(path):
    """Answer jobs on the Unix socket *path*, one forked child per job.

    Runs as root with this module already loaded, so a job costs a fork
    instead of a new interpreter (~30 ms per home). Each child becomes the
    job's user (:func:`become`) before it touches anything, exactly as a
    freshly started worker does. The server exits when its parent closes stdin.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(128)
    events = selectors.DefaultSelector()
    events.register(listener, selectors.EVENT_READ)
    events.register(sys.stdin, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in events.select():
            if key.fileobj is sys.stdin:
                if not os.read(sys.stdin.fileno(), 4096):
                    return  # the service is gone
                continue
            conn, _ = listener.accept()
            if os.fork() == 0:
                code = 1
                try:
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    listener.close()
                    os.close(0)
                    code = serve_one(conn)
                finally:
                    os._exit(code)
            conn.close()


def become(request):
    """Take on the person of *request* for everything this process touches.

    Groups, gid, the effective uid and with it the file-system uid are the
    person's: the kernel checks every open, write and rename against their
    rights. The real and saved uid stay root's, so the person cannot signal
    this process (a worker they could SIGSTOP could be held past a due date
    while they edit) nor trace it (changing the effective uid makes it
    non-dumpable). The code run from here is this module's only; it never
    executes anything from the home. ``memory`` bounds its address space;
    a job's ``cgroups`` (``cgroup.procs`` files of the person's server) put
    the worker inside the person's own limits first.
    """
    for procs in request["job"].get("cgroups", ()) if isinstance(request.get("job"), dict) else ():
        try:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        except OSError:
            pass  # the server stopped meanwhile: the memory limit below still holds
    if request.get("memory"):
        resource.setrlimit(resource.RLIMIT_AS, (request["memory"], request["memory"]))
    os.setgroups(request["groups"])
    os.setresgid(request["gid"], request["gid"], request["gid"])
    os.setresuid(0, request["uid"], 0)
    os.umask(0o022)
    os.chdir("/")
    os.environ.clear()
    os.environ.update(request["env"])


def serve_one(conn):
    uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
    if uid != 0:
        return 1  # only the service (root) may ask for jobs
    stream = conn.makefile("rwb")
    request = json.loads(stream.readline())
    os.setsid()  # a timeout kills the whole group
    stream.write(b"%d\n" % os.getpid())
    stream.flush()
    become(request)
    if request["mode"] == "export":
        run_export(request["job"], conn)
        return 0
    try:
        answer = {"result": JSON_MODES[request["mode"]](request["job"])}
    except Exception as e:  # reported to the service, which fails this home only
        answer = {"error": error_text(e)}
    stream.write(json.dumps(answer).encode())
    stream.close()
    return 0


def main():
    """``serve PATH``, or one job: started as root, the request (the
    person's ids and the job, as the fork server gets it) on stdin."""
    mode = sys.argv[1]
    if mode == "serve":
        serve(sys.argv[2])
        return
    request = json.loads(sys.stdin.buffer.read())
    if os.geteuid() == 0:
        become(request)
    job = request["job"]
    if mode == "export":  # argv[2]: the fd of the service's socket
        run_export(job, socket.socket(fileno=int(sys.argv[2])))
    elif mode in JSON_MODES:
        try:
            json.dump(JSON_MODES[mode](job), sys.stdout)
        except OSError as e:
            sys.exit(error_text(e))
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
