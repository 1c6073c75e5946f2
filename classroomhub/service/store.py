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
import hashlib
import json
import os
import secrets
import shutil
import tarfile
import threading

from . import runas
from .worker import EXPORT_NOTES, Refused, split_relpath

CHUNK = 1 << 20
# folders and files an import never takes from a source folder or repository
SKIP_NAMES = (".git", ".ipynb_checkpoints", "__pycache__", ".DS_Store")


class SourceError(ValueError):
    """The source could not be imported; the message says why (shown to the instructor)."""


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

    def add_file(self, fileobj, size_limit):
        """Copy *fileobj* into the store; returns (sha256, size)."""
        digest = hashlib.sha256()
        tmp = os.path.join(self.tmp, secrets.token_hex(8))
        size = 0
        try:
            with open(tmp, "xb") as out:
                while chunk := fileobj.read(CHUNK):
                    size += len(chunk)
                    if size > size_limit:
                        raise SourceError(f"larger than the limit of {size_limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            sha = digest.hexdigest()
            final = self.object_path(sha)
            if os.path.exists(final):
                os.unlink(tmp)
            else:
                os.makedirs(os.path.dirname(final), mode=0o711, exist_ok=True)
                os.chmod(tmp, 0o444)
                os.rename(tmp, final)
            return sha, size
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def add_tar_stream(self, stream, max_bytes):
        """Import the regular files of an uncompressed tar stream.

        Returns ``(files, skipped)``: the manifest and what the exporting
        worker left out, as ``[(path, reason)]``.
        """
        files, skipped, total = {}, [], 0
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if member.name == EXPORT_NOTES:
                    skipped += [tuple(s) for s in json.load(tar.extractfile(member))["skipped"]]
                    continue
                if not member.isfile():
                    skipped.append((member.name, "not a regular file; skipped"))
                    continue
                try:
                    split_relpath(member.name)
                except Refused as e:
                    skipped.append((member.name, str(e)))
                    continue
                sha, size = self.add_file(tar.extractfile(member), max_bytes - total)
                total += size
                files[member.name] = {"sha256": sha, "size": size, "mode": 0o755 if member.mode & 0o111 else 0o644}
        return files, skipped

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


def _export_to_store(store, account, job, max_bytes, timeout):
    proc = runas.open_export(account, job)
    timer = threading.Timer(timeout, runas.kill_export, (proc,))
    timer.start()
    try:
        files, skipped = store.add_tar_stream(proc.stdout, max_bytes)
    except tarfile.TarError as e:
        runas.kill_export(proc)
        error = proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
        raise SourceError(error[0] if error else f"unreadable export: {e}") from None
    except BaseException:
        runas.kill_export(proc)
        raise
    finally:
        timer.cancel()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if proc.returncode != 0:
        raise SourceError(f"reading the folder as {account.name} failed (exit status {proc.returncode})")
    return files, skipped


async def snapshot_folder(
    store, account, base, max_bytes=10 * 1024**3, max_file_bytes=None, max_entries=100_000, skip_top=(), timeout=600
):
    """Store what lies in ``~/<base...>`` of *account*, read as them.

    The folder is reached from the home without following links; below it
    the same walker and limits as an import apply. Returns (files, skipped).
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
    return await asyncio.to_thread(_export_to_store, store, account, job, max_bytes, timeout)


async def import_folder(store, account, path, max_bytes=10 * 1024**3, max_entries=100_000, timeout=600):
    """Import the folder *path* as *account* would read it.

    The folder is read by a worker with *account*'s privileges: a path they
    cannot read fails for them as it would in a terminal.
    """
    job = {"path": path, "skip": list(SKIP_NAMES), "max_bytes": max_bytes, "max_entries": max_entries}
    return await asyncio.to_thread(_export_to_store, store, account, job, max_bytes, timeout)
