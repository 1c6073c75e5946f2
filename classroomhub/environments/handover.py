"""Taking a built version from the build account: every file and folder
made read-only and (as root) owned by root, through directory fds opened
without following links, so nothing the build left behind (a symlink to
``/etc``, a folder swapped for a link) redirects a change of owner or mode.

A file the installer hard-linked from its cache gets a copy of its own in
the version (the cache's link stays the build account's): with Linux's
``protected_hardlinks`` any file the build account can link, it can write,
so a version sharing files with its cache would be a version it can
change; and a cache file root took would be copied by every later build.
"""

from __future__ import annotations

import os
import stat

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under a file's name must not hang the walk
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def take(top, owner=None, read_only=True):
    """Make the tree *top* read-only (folders 0555, files 0444, 0555 if
    executable) and, with *owner* ``(uid, gid)``, owned by it. Symlinks
    are kept (a venv's ``bin/python``) but never followed; FIFOs, sockets
    and devices have no place in an environment and are removed. With
    *read_only* False the modes are left for a second pass."""
    fd = os.open(top, DIR_FLAGS)
    try:
        _take_dir(fd, owner, read_only)
    finally:
        os.close(fd)


def _take_dir(fd, owner, read_only):
    if owner is not None:
        os.fchown(fd, *owner)  # first: from now on only root changes what is in it
    for entry in os.scandir(fd):
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            sub = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
            try:
                _take_dir(sub, owner, read_only)
            finally:
                os.close(sub)
        elif stat.S_ISREG(mode):
            f = os.open(entry.name, FILE_FLAGS, dir_fd=fd)
            try:
                if owner is not None and os.fstat(f).st_nlink > 1:
                    f = _own_copy(fd, entry.name, f)
                if owner is not None:
                    os.fchown(f, *owner)
                if read_only:
                    os.fchmod(f, 0o555 if os.fstat(f).st_mode & stat.S_IXUSR else 0o444)
            finally:
                os.close(f)
        elif stat.S_ISLNK(mode):
            if owner is not None:
                os.chown(entry.name, *owner, dir_fd=fd, follow_symlinks=False)
        else:
            os.unlink(entry.name, dir_fd=fd)
    if read_only:
        os.fchmod(fd, 0o555)


def _own_copy(dir_fd, name, f):
    """Replace *name* (open as *f*, which is closed) by a copy; returns the copy's fd."""
    tmp = f".{name}.handover"
    out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        st = os.fstat(f)
        left = st.st_size
        while left > 0:
            done = os.copy_file_range(f, out, left)
            if done == 0:
                break
            left -= done
        os.fchmod(out, stat.S_IMODE(st.st_mode) & 0o755)
        # the same times: bytecode compiled from the linked file records its mtime, and a
        # source newer than its .pyc would be compiled again at every import (read-only)
        os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        os.close(out)
        raise
    finally:
        os.close(f)
    return out


def give(top, uid, gid):
    """Make the installer's cache *top* the build account's: its folders and
    its files that no environment shares (one link). A file hard-linked into
    a version stays root's: giving it away would let the build account
    change that version. The installer copies such files instead of linking."""
    fd = os.open(top, DIR_FLAGS)
    try:
        _give_dir(fd, uid, gid)
    finally:
        os.close(fd)


def _give_dir(fd, uid, gid):
    os.fchown(fd, uid, gid)
    for entry in os.scandir(fd):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
            try:
                _give_dir(sub, uid, gid)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            continue
        else:
            os.chown(entry.name, uid, gid, dir_fd=fd, follow_symlinks=False)
