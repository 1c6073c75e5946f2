"""File operations in a tree someone else controls: never following a link.

Everything below a starting folder is reached through directory fds opened
with ``O_NOFOLLOW``: a symlink planted in a home is never followed, a FIFO or
device is never opened, and a folder swapped for a link mid-run does not
redirect a write. :func:`walk` is the one walker over such a tree (delivery,
import, collection and feedback all go through it or through
:func:`open_path`). Run inside the worker: the standard library only.
"""

import errno
import hashlib
import itertools
import os
import secrets
import stat

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted under a file's name must not hang
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 1 << 20


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


def describe_error(e):
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left (disk full or quota reached)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (a folder made read-only?)"
    return e.strerror or str(e)



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
