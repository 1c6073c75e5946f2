"""File work inside one person's home, run *as that person*.

The classroom service never touches a home as root. It starts this script
(``python -I -S worker.py MODE``) or forks its fork server, and the process
takes on the person's file-system identity (:func:`become`) before it reads
its JSON job, so the kernel itself forbids every escape. On top of that, everything below the starting folder
is reached through directory fds opened with ``O_NOFOLLOW``: a symlink
planted in a home is never followed, a FIFO or device is never opened, and
a folder swapped for a link mid-run does not redirect a write.

Modes:

``deliver``
    Place released files under ``HOME/<course>/<material>/`` without
    clobbering what the person changed (see :func:`deliver_file`).
``export``
    Open the regular files of a folder and pass their descriptors to the
    service over a Unix socket (with limits on entries, depth and bytes);
    the service imports releases from an instructor's folder this way and
    collects students' work. The files are opened as the person; the
    service only copies from descriptors it was given.

Only the standard library is imported: ``-I -S`` keeps the person's
environment and site-packages out of a process the service relies on.
"""

import errno
import hashlib
import itertools
import json
import os
import resource
import secrets
import socket
import stat
import struct
import sys

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted under a file's name must not hang
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 1 << 20
# an export's messages: a 4-byte length, then JSON (with an fd or not)
FRAME = struct.Struct("!I")
# files an export hands over before it waits for the service to finish one
WINDOW = 64


class Refused(Exception):
    """A path the worker will not use; the message goes into the report."""


def kind_of(mode):
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a file"


def split_relpath(relpath):
    """Components of a release path; refuses anything that could climb out."""
    parts = relpath.split("/")
    if not relpath or any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise Refused(f"unsafe path {relpath!r}")
    return parts


def lstat_at(dir_fd, name):
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_dir(dir_fd, name, create, shown):
    """Open (or make) the folder *name* below *dir_fd* without following links."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            st = lstat_at(dir_fd, name)
            raise Refused(f"{shown} is {kind_of(st.st_mode) if st else 'gone'}, not a folder; left alone") from None
        raise
    try:
        os.mkdir(name, 0o755, dir_fd=dir_fd)
    except FileExistsError:
        pass  # made meanwhile: open it below, with the same checks
    return open_dir(dir_fd, name, False, shown)


def open_path(root_fd, parts, create, shown_root="~"):
    """An fd of the folder reached by *parts* from *root_fd*, each step no-follow."""
    fd = os.dup(root_fd)
    shown = shown_root
    try:
        for part in parts:
            shown = f"{shown}/{part}"
            child = open_dir(fd, part, create, shown)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def sha256_fd(fd):
    digest = hashlib.sha256()
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)


def regular_sha256(dir_fd, name, st, sizes):
    """Hash of the regular file *name*, or None if its size matches none of *sizes*.

    Opened no-follow and non-blocking, then checked to be the file that was
    lstat'ed: a swap between the two calls is seen, not followed.
    """
    if st.st_size not in sizes:
        return None
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise Refused("changed while it was read; left alone")
        return sha256_fd(fd)
    finally:
        os.close(fd)


def copy_into(dir_fd, name, source, mode):
    """Write *source* to a new temporary file in *dir_fd*, then rename it to *name*.

    rename() replaces whatever is at *name* without following it; the
    temporary name is created with O_EXCL, so it cannot be a planted link.
    """
    tmp = f".{name[:100]}.classroomhub-{secrets.token_hex(4)}"
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        try:
            size = os.fstat(src).st_size
            copied = 0
            while copied < size:
                try:
                    n = os.copy_file_range(src, dst, size - copied)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    n = os.sendfile(dst, src, None, size - copied)
                if n == 0:
                    break
                copied += n
            os.fchmod(dst, mode)  # the umask must not strip the exec bit of a script
        finally:
            os.close(dst)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    finally:
        os.close(src)


def beside_name(name, version):
    """``hw1.ipynb`` -> ``hw1.release-3.ipynb``: the new version next to the person's."""
    stem, dot, suffix = name.rpartition(".")
    if not stem:  # no suffix, or a dot file such as .env
        return f"{name}.release-{version}"
    return f"{stem}.release-{version}{dot}{suffix}"


def stamp_of(st):
    """What identifies a file's state without reading it: size, inode, ctime.

    ctime cannot be set by the owner and changes with every write, chmod or
    rename, so an equal stamp means the file is as the service left it.
    """
    return [st.st_size, st.st_ino, st.st_ctime_ns]


def deliver_file(dir_fd, name, entry, version, restore_deleted):
    """Bring one file up to *entry*; return (status, detail, stamp).

    *entry* has the new ``sha256``, ``size``, ``mode``, the store ``object``
    to copy from, and ``previous``: what was delivered to this person last
    time (``sha256``, ``size``, and the ``stamp`` of the file as it was
    left) or None. Statuses: ``added``, ``unchanged``, ``updated`` (the
    person never touched it), ``kept`` (they changed it: theirs stays, the
    new version goes beside it when there is one), ``restored`` /
    ``left-deleted`` (they deleted it). *stamp* is that of the file now at
    *name* when it holds the new version, else None.
    """
    previous = entry.get("previous")
    st = lstat_at(dir_fd, name)
    if st is None:
        if previous and not restore_deleted:
            return "left-deleted", "deleted by its owner; not restored", None
        return ("restored" if previous else "added"), "", write_file(dir_fd, name, entry)
    if not stat.S_ISREG(st.st_mode):
        return "failed", f"is {kind_of(st.st_mode)} where a file was expected; left alone", None
    if st.st_nlink > 1:
        current = None  # a hard link: writing would change its other names too
    elif previous and previous.get("stamp") == stamp_of(st):
        current = previous["sha256"]  # untouched since delivery: no need to read it
    else:
        sizes = {entry["size"]} | ({previous["size"]} if previous else set())
        current = regular_sha256(dir_fd, name, st, sizes)
    if current == entry["sha256"]:
        return "unchanged", "", stamp_of(st)
    if previous and current == previous["sha256"]:
        return "updated", "", write_file(dir_fd, name, entry)
    if previous and previous["sha256"] == entry["sha256"]:
        return "kept", "changed by its owner; this release did not change it", None
    why = "has other hard links" if st.st_nlink > 1 else "changed by its owner"
    beside = place_beside(dir_fd, name, entry, version)
    if beside is None:
        return "kept", f"{why}; no free name for the new version beside it", None
    return "kept", f"{why}; the new version is {beside}", None


def write_file(dir_fd, name, entry):
    """Write *entry* at *name*; return the stamp of the written file."""
    copy_into(dir_fd, name, entry["object"], entry["mode"])
    return stamp_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))


def place_beside(dir_fd, name, entry, version):
    """Write the new version next to the person's file, never over another of theirs.

    ``hw1.release-3.ipynb``; if that name is taken by something else,
    ``hw1.release-3-1.ipynb`` and so on. Returns the name used, or None.
    """
    for attempt in range(10):
        beside = beside_name(name, version if attempt == 0 else f"{version}-{attempt}")
        st = lstat_at(dir_fd, beside)
        if st is None:
            copy_into(dir_fd, beside, entry["object"], entry["mode"])
            return beside
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            if regular_sha256(dir_fd, beside, st, {entry["size"]}) == entry["sha256"]:
                return beside  # delivered there before
    return None


def deliver(job):
    """Deliver every file of *job*; one result per file, never an exception."""
    results = []
    home_fd = os.open(job["home"], DIR_FLAGS)
    try:
        folders = {}
        base = job["base"]  # e.g. ["data101", "week1"]
        for entry in job["files"]:
            path = entry["path"]
            try:
                parts = split_relpath(path)
                folder = tuple(parts[:-1])
                if folder not in folders:
                    try:
                        folders[folder] = open_path(home_fd, [*split_relpath("/".join(base)), *folder], create=True)
                    except (Refused, OSError) as e:
                        folders[folder] = e
                target = folders[folder]
                if isinstance(target, BaseException):
                    raise target
                status, detail, stamp = deliver_file(target, parts[-1], entry, job["version"], job["restore_deleted"])
            except Refused as e:
                status, detail, stamp = "failed", str(e), None
            except OSError as e:
                status, detail, stamp = "failed", describe_error(e), None
            result = {"path": path, "status": status, "detail": detail}
            if stamp:
                result["stamp"] = stamp
            results.append(result)
        for fd in folders.values():
            if isinstance(fd, int):
                os.close(fd)
    finally:
        os.close(home_fd)
    return results


def link_shared(job):
    """Point ``~/<course>/<material>`` at a read-only shared tree (a symlink the person owns).

    Replaces an earlier link atomically; anything else at that name is left alone.
    """
    *parents, name = split_relpath("/".join(job["base"]))
    home_fd = os.open(job["home"], DIR_FLAGS)
    try:
        dir_fd = open_path(home_fd, parents, create=True)
        try:
            st = lstat_at(dir_fd, name)
            if st is not None and not stat.S_ISLNK(st.st_mode):
                return [{"path": "", "status": "failed", "detail": f"~/{'/'.join(job['base'])} is {kind_of(st.st_mode)}; left alone"}]
            if st is not None and os.readlink(name, dir_fd=dir_fd) == job["target"]:
                return [{"path": "", "status": "unchanged", "detail": ""}]
            tmp = f".{name}.classroomhub-{secrets.token_hex(4)}"
            os.symlink(job["target"], tmp, dir_fd=dir_fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return [{"path": "", "status": "updated" if st else "added", "detail": ""}]
        finally:
            os.close(dir_fd)
    except Refused as e:
        return [{"path": "", "status": "failed", "detail": str(e)}]
    except OSError as e:
        return [{"path": "", "status": "failed", "detail": describe_error(e)}]
    finally:
        os.close(home_fd)


def describe_error(e):
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left (disk full or quota reached)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (a folder made read-only?)"
    return e.strerror or str(e)


# -- export: the one walker over a tree someone else controls ----------------------


def walk(root_fd, limits, skip=(), skip_top=()):
    """Yield (relative path, dir fd, name, lstat) of regular files below *root_fd*.

    Depth-first through directory fds, never following a link; only the
    chain of ancestors is open at a time. Entries that are neither regular
    files nor folders are reported, never opened. Stops at ``limits["entries"]``
    (a folder's names are read only up to that many: memory stays bounded
    however many a student made) and does not descend below
    ``limits["depth"]``; what was left out is appended to ``limits["skipped"]``
    as (path, reason). With ``limits["since_ns"]``, folders whose ctime is
    later (an entry added, removed or renamed since) are appended to
    ``limits["changed"]``, checked once their names were read.
    """
    limits.setdefault("skipped", [])
    limits.setdefault("changed", [])
    limits["seen"] = 0
    yield from _walk(root_fd, "", 0, limits, set(skip), set(skip_top))


def _walk(fd, prefix, depth, limits, skip, skip_top=frozenset()):
    room = max(0, limits["entries"] - limits["seen"]) + 1  # one more shows the limit was reached
    with os.scandir(fd) as entries:
        names = sorted(itertools.islice((e.name for e in entries), room))
    yield from _walk_names(fd, names, prefix, depth, limits, skip, skip_top)
    since = limits.get("since_ns")
    if since is not None and os.fstat(fd).st_ctime_ns > since:  # at the end: a change while walking counts
        limits["changed"].append(prefix or "./")


def _walk_names(fd, names, prefix, depth, limits, skip, skip_top):
    for name in names:
        limits["seen"] += 1
        if limits["seen"] > limits["entries"]:
            if limits["seen"] == limits["entries"] + 1:
                limits["skipped"].append((prefix + name, f"over the limit of {limits['entries']} entries"))
            return
        if name in skip or (not prefix and name in skip_top):
            continue
        rel = prefix + name
        st = lstat_at(fd, name)
        if st is None:
            continue
        if stat.S_ISREG(st.st_mode):
            yield rel, fd, name, st
        elif not stat.S_ISDIR(st.st_mode):
            limits["skipped"].append((rel, f"is {kind_of(st.st_mode)}; skipped"))
        elif depth + 1 >= limits["depth"]:
            limits["skipped"].append((rel + "/", f"deeper than {limits['depth']} levels; skipped"))
        else:
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                limits["skipped"].append((rel + "/", describe_error(e)))
                continue
            try:
                yield from _walk(child, rel + "/", depth + 1, limits, skip)
            finally:
                os.close(child)


def open_export_root(job):
    """The folder to export: ``path`` as given (an instructor's own choice of
    source), or ``base`` below ``home`` reached without following any link
    (a student's work, collected)."""
    if "path" in job:
        return os.open(job["path"], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    home_fd = os.open(job["home"], DIR_FLAGS)
    try:
        return open_path(home_fd, split_relpath("/".join(job["base"])), create=False)
    finally:
        os.close(home_fd)


def send_frame(sock, message, fd=None):
    """One length-prefixed JSON message, with *fd* attached to it if given."""
    data = json.dumps(message).encode()
    frame = FRAME.pack(len(data)) + data
    sent = socket.send_fds(sock, [frame], [fd]) if fd is not None else 0
    sock.sendall(frame[sent:])


def export(job, sock):
    """Hand the service the regular files below the job's folder, opened.

    Each file is opened here, as the person, without following links, and
    its descriptor passed over *sock* with its path: the service copies it
    into the store in the kernel, so no byte crosses a pipe. At most
    ``WINDOW`` files are in flight; the service answers one byte per file
    done. Leaves out names in ``skip`` (anywhere) and ``skip_top`` (directly
    in the folder), files on another file system, files over
    ``max_file_bytes`` and everything once ``max_bytes`` are taken; the last
    message lists what was left out and why, and the folders changed after
    ``since_ns`` (see :func:`walk`).
    """
    limits = {"entries": job.get("max_entries", 100_000), "depth": job.get("max_depth", 64), "since_ns": job.get("since_ns")}
    max_bytes = job.get("max_bytes", 10 * 1024**3)
    max_file = job.get("max_file_bytes") or max_bytes
    total = in_flight = 0
    skipped = limits["skipped"] = []
    try:
        root_fd = open_export_root(job)
    except Refused as e:
        raise OSError(errno.ENOTDIR, str(e)) from None
    try:
        device = os.fstat(root_fd).st_dev
        for rel, dir_fd, name, st in walk(root_fd, limits, job.get("skip", ()), job.get("skip_top", ())):
            if st.st_dev != device:
                skipped.append((rel, "on another file system; skipped"))
                continue
            if st.st_size > max_file:
                skipped.append((rel, f"larger than {max_file} bytes; skipped"))
                continue
            if total + st.st_size > max_bytes:
                skipped.append((rel, f"over the limit of {max_bytes} bytes"))
                continue
            try:
                fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
            except OSError as e:
                skipped.append((rel, describe_error(e)))
                continue
            try:
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    continue  # swapped after the walk saw it
                while in_flight >= WINDOW:
                    done = sock.recv(in_flight)
                    if not done:
                        raise OSError(errno.EPIPE, "the service went away")
                    in_flight -= len(done)
                send_frame(sock, {"path": rel}, fd)
                in_flight += 1
                total += now.st_size
            finally:
                os.close(fd)
        send_frame(sock, {"skipped": skipped, "changed": limits["changed"]})
    finally:
        os.close(root_fd)


# -- the fork server ---------------------------------------------------------------

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
    import selectors
    import signal

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
