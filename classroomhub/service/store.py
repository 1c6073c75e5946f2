"""The release store: every released file once, by content, immutable.

``objects/ab/cdef…`` holds a file whose SHA-256 is ``abcdef…``; a release is a
manifest ``{path: {sha256, size, mode}}`` kept in the service's database.
Objects are root-owned and world-readable, but the folders above them are
not listable (0711): a worker running as a student opens the objects named in
its job and can find no others. Shared datasets are materialized once under
``shared/`` (hard links to the objects, read-only) and linked into homes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import mmap
import os
import secrets
import shutil
import stat

from . import runas
from .worker import Refused, kind_of, split_relpath

# files up to this size are read into memory (hashed before anything is written)
SMALL_FILE = 1 << 20
# folders and files an import never takes from a source folder or repository
SKIP_NAMES = (".git", ".ipynb_checkpoints", "__pycache__", ".DS_Store")


class SourceError(ValueError):
    """The source could not be imported; the message says why (shown to the instructor)."""


class TooLarge(SourceError):
    """A file past the size limit it was copied under."""


class ReleaseStore:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.objects = os.path.join(self.root, "objects")
        self.shared = os.path.join(self.root, "shared")
        self.tmp = os.path.join(self.root, "tmp")
        for folder, mode in ((self.root, 0o711), (self.objects, 0o711), (self.shared, 0o755), (self.tmp, 0o700)):
            os.makedirs(folder, mode=mode, exist_ok=True)
            os.chmod(folder, mode)

    def object_path(self, sha256):
        return os.path.join(self.objects, sha256[:2], sha256[2:])

    def add_bytes(self, data):
        """Keep *data* in the store; returns (sha256, size). Content the store
        holds already costs no write."""
        sha = hashlib.sha256(data).hexdigest()
        if not os.path.exists(self.object_path(sha)):
            with self._new_object() as (out, place):
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view) :]
                place(sha)
        return sha, len(data)

    def add_fd(self, fd, size_limit):
        """Copy the regular file open as *fd* into the store.

        A small file is read once (an unchanged copy of released material
        then costs no write); a large one is copied in the kernel and the
        hash taken of the store's copy. Either way a file changing meanwhile
        is kept as it was read, its hash true. Returns (sha256, size);
        :class:`TooLarge` past *size_limit*.
        """
        if os.fstat(fd).st_size <= SMALL_FILE:
            fits = min(size_limit, SMALL_FILE)
            data = read_up_to(fd, fits + 1)
            if len(data) <= fits:
                return self.add_bytes(data)
            if len(data) > size_limit:
                raise TooLarge(f"larger than the limit of {size_limit} bytes")
            # it grew past SMALL_FILE meanwhile: copied as a large file below
        with self._new_object() as (out, place):
            size = copy_fd(fd, out, size_limit + 1)
            if size > size_limit:
                raise TooLarge(f"larger than the limit of {size_limit} bytes")
            digest = hashlib.sha256()
            if size:
                with mmap.mmap(out, size, prot=mmap.PROT_READ) as copied:
                    digest.update(copied)  # no copy into Python; the GIL is released
            return place(digest.hexdigest()), size

    @contextlib.contextmanager
    def _new_object(self):
        """A fresh root-only temporary file and ``place(sha256)`` that moves it
        to its name (or drops it: the content is there already)."""
        tmp = os.path.join(self.tmp, secrets.token_hex(8))
        out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

        def place(sha):
            final = self.object_path(sha)
            if os.path.exists(final):
                os.unlink(tmp)
            else:
                os.makedirs(os.path.dirname(final), mode=0o711, exist_ok=True)
                os.fchmod(out, 0o444)
                os.rename(tmp, final)
            return sha

        try:
            yield out, place
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        finally:
            os.close(out)

    def add_export(self, export, max_bytes, max_file_bytes=None):
        """Copy what a worker's :class:`~.runas.Export` hands over.

        Returns ``(files, skipped)``: the manifest and what was left out, as
        ``[(path, reason)]`` (the worker's notes and the store's own: a file
        that grew past a limit while it was copied).
        """
        max_file_bytes = max_file_bytes or max_bytes
        files, skipped, total = {}, [], 0
        while True:
            message, fd = export.message()
            if fd is None:
                if "error" in message:
                    raise SourceError(message["error"])
                return files, skipped + [tuple(s) for s in message.get("skipped", [])]
            rel, room = message["path"], max_bytes - total
            try:
                split_relpath(rel)
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise Refused(f"is {kind_of(st.st_mode)}; skipped")
                sha, size = self.add_fd(fd, min(max_file_bytes, room))
            except Refused as e:
                skipped.append((rel, str(e)))
            except TooLarge:  # it grew after the worker looked
                reason = f"over the limit of {max_bytes} bytes" if room < max_file_bytes else None
                skipped.append((rel, reason or f"larger than {max_file_bytes} bytes; skipped"))
            else:
                total += size
                files[rel] = {"sha256": sha, "size": size, "mode": 0o755 if st.st_mode & 0o111 else 0o644}
            finally:
                os.close(fd)
                export.done_with_one()

    def shared_tree(self, key, files):
        """A read-only tree of *files* under ``shared/<key>`` (hard links to the objects)."""
        target = os.path.join(self.shared, key)
        if os.path.isdir(target):
            return target
        building = f"{target}.building-{secrets.token_hex(4)}"
        try:
            for rel, meta in files.items():
                path = os.path.join(building, *split_relpath(rel))
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                os.link(self.object_path(meta["sha256"]), path)
            os.makedirs(building, mode=0o755, exist_ok=True)
            os.rename(building, target)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        return target


def read_up_to(fd, count):
    """The first *count* bytes of the file open as *fd* (fewer at its end)."""
    chunks, got = [], 0
    while got < count:
        chunk = os.pread(fd, count - got, got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def copy_fd(source, out, count):
    """Copy up to *count* bytes from the start of *source* to *out* in the
    kernel (copy_file_range, else sendfile); returns the bytes copied."""
    copied = 0
    use_sendfile = False
    while copied < count:
        try:
            if use_sendfile:
                n = os.sendfile(out, source, copied, count - copied)
            else:
                n = os.copy_file_range(source, out, count - copied, copied)
        except OSError as e:
            if use_sendfile or e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            use_sendfile = True  # another file system, or one without copy_file_range
            continue
        if n == 0:
            break
        copied += n
    return copied


def _export_to_store(store, runner, account, job, max_bytes, max_file_bytes, timeout):
    export = (runner or runas.Subprocesses).open_export(account, job, timeout)
    try:
        return store.add_export(export, max_bytes, max_file_bytes)
    except BaseException:
        export.kill()
        raise
    finally:
        export.close()


async def snapshot_folder(
    store,
    account,
    base,
    max_bytes=10 * 1024**3,
    max_file_bytes=None,
    max_entries=100_000,
    skip_top=(),
    timeout=600,
    runner=None,
):
    """Store what lies in ``~/<base...>`` of *account*, read as them.

    The folder is reached from the home without following links; below it
    the same walker and limits as an import apply. *runner* starts the
    worker (see :mod:`.runas`; default a new process). Returns (files, skipped).
    """
    job = {
        "home": account.home,
        "base": list(base),
        "skip": list(SKIP_NAMES),
        "skip_top": list(skip_top),
        "max_bytes": max_bytes,
        "max_file_bytes": max_file_bytes,
        "max_entries": max_entries,
    }
    return await asyncio.to_thread(_export_to_store, store, runner, account, job, max_bytes, max_file_bytes, timeout)


async def import_folder(store, account, path, max_bytes=10 * 1024**3, max_entries=100_000, timeout=600, runner=None):
    """Import the folder *path* as *account* would read it.

    The folder is read by a worker with *account*'s privileges: a path they
    cannot read fails for them as it would in a terminal.
    """
    job = {"path": path, "skip": list(SKIP_NAMES), "max_bytes": max_bytes, "max_entries": max_entries}
    return await asyncio.to_thread(_export_to_store, store, runner, account, job, max_bytes, None, timeout)
