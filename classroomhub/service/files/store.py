"""The release store: every released file once, by content, immutable.

``objects/ab/cdef…`` holds a file whose SHA-256 is ``abcdef…``; a release is a
manifest ``{path: {sha256, size, mode}}`` kept in the service's database.
Two areas, by where the content came from:

- ``objects/``: released content. Root-owned and world-readable (0444), but
  the folders above are not listable (0711): a worker running as a student
  opens the objects named in its job and can find no others. Shared
  datasets are materialized once under ``shared/`` (hard links to these
  objects, read-only) and linked into homes.
- ``private/`` (0700, objects 0400): what was collected from homes, i.e.
  students' submissions and graders' feedback. No student can open, list
  or probe it. When a worker must read such content (a grader's copy,
  feedback returned to its student), the store lends a copy owned by that
  reader alone for the length of the job (``lent/<random>/``).

Content that is both released and collected (a notebook handed in
unchanged) has a public copy, which tells nothing: it was released.
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
from datetime import datetime, timedelta, timezone

from . import runas
from .nofollow import Refused, kind_of, split_relpath

# files up to this size are read into memory (hashed before anything is written)
SMALL_FILE = 1 << 20
# folders and files an import never takes from a source folder or repository
SKIP_NAMES = (".git", ".ipynb_checkpoints", "__pycache__", ".DS_Store")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class SourceError(ValueError):
    """The source could not be imported; the message says why (shown to the instructor)."""


class TooLarge(SourceError):
    """A file past the size limit it was copied under."""


#: mode of an object, by area: released content is readable by the workers that deliver it
OBJECT_MODE = {False: 0o444, True: 0o400}


class ReleaseStore:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.objects = os.path.join(self.root, "objects")
        self.private = os.path.join(self.root, "private")
        self.shared = os.path.join(self.root, "shared")
        self.lent = os.path.join(self.root, "lent")
        self.tmp = os.path.join(self.root, "tmp")
        for folder, mode in (
            (self.root, 0o711),
            (self.objects, 0o711),
            (self.private, 0o700),
            (self.shared, 0o711),  # each tree is reached by the links in homes; nobody lists them
            (self.lent, 0o711),
            (self.tmp, 0o700),
        ):
            os.makedirs(folder, mode=mode, exist_ok=True)
            os.chmod(folder, mode)

    def area_path(self, sha256, private):
        """Where content *sha256* lies (or would) in one area."""
        return os.path.join(self.private if private else self.objects, sha256[:2], sha256[2:])

    def object_path(self, sha256):
        """A path root reads content *sha256* from (released copy first)."""
        public = self.area_path(sha256, False)
        if os.path.exists(public):
            return public
        private = self.area_path(sha256, True)
        return private if os.path.exists(private) else public

    def add_bytes(self, data, private=False):
        """Keep *data* in the store; returns (sha256, size). Content the
        area holds already costs no write. *private*: collected from a home
        (a submission, feedback), never readable by other people."""
        sha = hashlib.sha256(data).hexdigest()
        if not os.path.exists(self.area_path(sha, private)):
            with self._new_object(private) as (out, place):
                view = memoryview(data)
                while view:
                    view = view[os.write(out, view) :]
                place(sha)
        return sha, len(data)

    def add_fd(self, fd, size_limit, private=False):
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
                return self.add_bytes(data, private)
            if len(data) > size_limit:
                raise TooLarge(f"larger than the limit of {size_limit} bytes")
            # it grew past SMALL_FILE meanwhile: copied as a large file below
        with self._new_object(private) as (out, place):
            size = copy_fd(fd, out, size_limit + 1)
            if size > size_limit:
                raise TooLarge(f"larger than the limit of {size_limit} bytes")
            digest = hashlib.sha256()
            if size:
                with mmap.mmap(out, size, prot=mmap.PROT_READ) as copied:
                    digest.update(copied)  # no copy into Python; the GIL is released
            return place(digest.hexdigest()), size

    @contextlib.contextmanager
    def _new_object(self, private=False):
        """A fresh root-only temporary file and ``place(sha256)`` that moves it
        to its name in its area (or drops it: the content is there already)."""
        tmp = os.path.join(self.tmp, secrets.token_hex(8))
        out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

        def place(sha):
            final = self.area_path(sha, private)
            if os.path.exists(final):
                os.unlink(tmp)
            else:
                os.makedirs(os.path.dirname(final), mode=0o700 if private else 0o711, exist_ok=True)
                os.fchmod(out, OBJECT_MODE[private])
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

    def add_export(self, export, max_bytes, max_file_bytes=None, private=False):
        """Copy what a worker's :class:`~.runas.Export` hands over (into the
        private area if *private*).

        Returns ``(files, skipped)``: the manifest and what was left out, as
        ``[(path, reason)]`` (the worker's notes and the store's own: a file
        that grew past a limit while it was copied, or that cannot be read
        like a file, e.g. in /proc).
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
                sha, size = self.add_fd(fd, min(max_file_bytes, room), private)
            except Refused as e:
                skipped.append((rel, str(e)))
            except OSError as e:  # EIO, EINVAL: a file of a kernel interface, not content
                skipped.append((rel, f"could not be read ({e.strerror or e}); skipped"))
            except TooLarge:  # it grew after the worker looked
                reason = f"over the limit of {max_bytes} bytes" if room < max_file_bytes else None
                skipped.append((rel, reason or f"larger than {max_file_bytes} bytes; skipped"))
            else:
                total += size
                files[rel] = {"sha256": sha, "size": size, "mode": 0o755 if st.st_mode & 0o111 else 0o644}
            finally:
                try:
                    export.done_with_one(rel, fd)  # after the copy: its ctime says whether it changed since
                finally:
                    os.close(fd)

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
                os.link(self.area_path(meta["sha256"], False), path)  # released: public
            os.makedirs(building, mode=0o755, exist_ok=True)
            os.rename(building, target)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        return target


    def sweep_lent(self):
        """Remove what a service that stopped mid-job left lent (call at start,
        before any job: a lent folder is in use while its job runs)."""
        for name in os.listdir(self.lent):
            shutil.rmtree(os.path.join(self.lent, name), ignore_errors=True)

    @contextlib.asynccontextmanager
    async def lent_to(self, account, entries):
        """Let *account*'s worker read the objects of *entries* (a delivery
        job's ``files``) for the length of the ``async with`` block.

        Released objects are readable as they are. Each private one is
        copied (in the kernel) into ``lent/<random>/``, a root-owned folder
        nobody can list, as a file owned by *account* alone (0400), and the
        entry's ``object`` points there; the folder goes at the end.
        """
        folder = os.path.join(self.lent, secrets.token_hex(16))
        try:
            await asyncio.to_thread(self._lend, folder, account.uid, entries)
            yield entries
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)

    def _lend(self, folder, uid, entries):
        copies = {}
        for entry in entries:
            source = entry["object"]
            if not source.startswith(self.private + os.sep):
                continue
            if source not in copies:
                if not copies:
                    os.mkdir(folder, 0o711)
                copies[source] = self._lend_copy(source, folder, uid)
            entry["object"] = copies[source]

    @staticmethod
    def _lend_copy(source, folder, uid):
        path = os.path.join(folder, os.path.basename(source))
        src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
            try:
                os.fchown(out, uid, -1)  # before a byte is in it
                os.fchmod(out, 0o400)
                copy_fd(src, out, os.fstat(src).st_size)
            finally:
                os.close(out)
        finally:
            os.close(src)
        return path

    def make_private(self, shas):
        """Move objects in *shas* from the released area to the private one
        (a store written before the areas existed kept submissions there).
        Returns how many moved."""
        moved = 0
        for sha in shas:
            public, private = self.area_path(sha, False), self.area_path(sha, True)
            if not os.path.exists(public):
                continue
            os.makedirs(os.path.dirname(private), mode=0o700, exist_ok=True)
            os.chmod(public, OBJECT_MODE[True])  # unreadable before it moves: no window
            if os.path.exists(private):
                os.unlink(public)
            else:
                os.rename(public, private)
            moved += 1
        return moved


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


def _export_to_store(store, runner, account, job, max_bytes, max_file_bytes, timeout, changed=None, private=False):
    export = (runner or runas.Subprocesses).open_export(account, job, timeout)
    if changed is not None:
        export.changed = changed
    try:
        return store.add_export(export, max_bytes, max_file_bytes, private)
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
    changed_since=None,
    changed=None,
    cgroups=(),
):
    """Store what lies in ``~/<base...>`` of *account*, read as them, in the
    store's private area (someone's work, or feedback on it).

    The folder is reached from the home without following links; below it
    the same walker and limits as an import apply. *runner* starts the
    worker (see :mod:`.runas`; default a new process). Returns (files, skipped).
    With *changed_since* (an aware datetime), the paths of files and folders
    changed after it are appended to the list *changed*. *cgroups*: groups
    the worker joins first (see :func:`.runas.server_cgroups`).
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
    if cgroups:
        job["cgroups"] = list(cgroups)
    if changed_since is not None:
        job["since_ns"] = (changed_since - EPOCH) // timedelta(microseconds=1) * 1000
    return await asyncio.to_thread(
        _export_to_store, store, runner, account, job, max_bytes, max_file_bytes, timeout, changed, True
    )


#: kernel interfaces, not content: a release from there is refused at once
VIRTUAL_FOLDERS = ("/proc", "/sys", "/dev")


def check_source(path):
    """Refuse a release source inside a kernel interface (/proc, /sys, /dev),
    also when reached through links: its files are not content, and some
    cannot be read like files."""
    real = os.path.realpath(path)
    for folder in VIRTUAL_FOLDERS:
        if real == folder or real.startswith(folder + "/"):
            raise SourceError(f"{path} is in {folder}, a kernel interface, not a folder of course material")


async def import_folder(store, account, path, max_bytes=10 * 1024**3, max_entries=100_000, timeout=600, runner=None):
    """Import the folder *path* as *account* would read it.

    The folder is read by a worker with *account*'s privileges: a path they
    cannot read fails for them as it would in a terminal.
    """
    check_source(path)
    job = {"path": path, "skip": list(SKIP_NAMES), "max_bytes": max_bytes, "max_entries": max_entries}
    return await asyncio.to_thread(_export_to_store, store, runner, account, job, max_bytes, None, timeout)
