"""``classroomhub backup`` and ``restore``: a hub's state, copied while it runs.

A backup is a folder (0700, files 0600: it holds the cookie secret, tokens
and students' work)::

    manifest.json       what, where from, sizes, checksums, versions; written last
    hub/                the hub's database (SQLite copy or pg_dump), cookie
                        secret, roster, GitHub identity pins
    service/            the classroom service's database
    service/store/      the store's objects the database refers to

Consistency while everything runs: each database is copied at one point in
time (SQLite's backup API, or pg_dump's snapshot). The store is content-
addressed and never rewrites or deletes an object, and an object is in
place before any row names it: after the service's database is copied, the
objects its live rows name (a superset of the copy's) are all there to copy.
The roster and the identity pins are replaced whole (rename), never written
in place. The two databases are copied a moment apart; the service reads
courses from the hub, so nothing ties their rows together.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import socket
import sqlite3
import stat
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import jupyterhub
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from .._version import __version__
from ..databases import (
    CopyError,
    copy_database,
    database_has_tables,
    kind_of,
    private_dir,
    private_file,
    processes_using,
    restore_database,
    sqlite_path,
)
from ..errors import CommandError
from ..service.db.models import Delivered, Feedback, Release, Submission
from ..service.files.store import ReleaseStore
from .locations import Locations

FORMAT = 1
#: the store's content-addressed areas (see classroomhub.service.files.store):
#: released files, and what was collected from homes
STORE_AREAS = ("objects", "private")


class BackupError(CommandError):
    """A backup or restore that cannot be done; the message says why."""


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_private(source, dest):
    """Copy the file *source* to the new file *dest*, mode 0600, in the
    kernel (flushed to disk by one sync at the end, not one per file)."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            while os.copy_file_range(src, out, 1 << 30):
                pass
        finally:
            os.close(out)
    finally:
        os.close(src)


def _display_url(url):
    return make_url(url).render_as_string(hide_password=True)


def _alembic_revision(copy_path):
    """The schema revision recorded in an SQLite copy, or None."""
    con = sqlite3.connect(f"file:{urllib.parse.quote(copy_path)}?mode=ro", uri=True)
    try:
        return ",".join(r[0] for r in con.execute("SELECT version_num FROM alembic_version"))
    except sqlite3.Error:
        return None
    finally:
        con.close()


def referenced_objects(db_url):
    """Every sha256 the service's database names (releases, deliveries,
    submissions, feedback)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return {
                meta["sha256"]
                for model in (Release, Delivered, Submission, Feedback)
                for (files,) in conn.execute(select(model.files))
                for meta in (files or {}).values()
                if "sha256" in meta
            }
    finally:
        engine.dispose()


class Backup:
    """Copies the state named by :class:`~.locations.Locations` into *dest*."""

    def __init__(self, locations: Locations, dest, progress=None):
        self.locations = locations
        self.dest = os.path.abspath(dest)
        self.progress = progress or (lambda message: None)
        self.items = []

    def run(self):
        if os.path.exists(self.dest) and (not os.path.isdir(self.dest) or os.listdir(self.dest)):
            raise BackupError(f"{self.dest} exists and is not an empty folder: back up into a new one")
        started = time.monotonic()
        created = not os.path.exists(self.dest)
        try:
            private_dir(self.dest)
            manifest = self._copy_all()
        except BaseException:
            if created:
                shutil.rmtree(self.dest, ignore_errors=True)
            raise
        os.sync()  # every copied file on disk before the manifest says the backup is whole
        manifest["seconds"] = round(time.monotonic() - started, 3)
        path = os.path.join(self.dest, "manifest.json")
        private_file(path + ".part")
        with open(path + ".part", "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".part", path)  # last: a backup without it is incomplete
        return manifest

    def _copy_all(self):
        loc = self.locations
        private_dir(os.path.join(self.dest, "hub"))
        store = None
        if loc.service_db_url:
            # the service's database first: the objects its rows name are then all in the store
            private_dir(os.path.join(self.dest, "service"))
            self._database("service-db", loc.service_db_url, "service/classroom")
            store = self._store()
        self._database("hub-db", loc.hub_db_url, "hub/jupyterhub")
        for name, path in (
            ("cookie-secret", loc.cookie_secret_file),
            ("roster", loc.roster_path),
            ("identities", loc.identity_file),
        ):
            self._file(name, path)
        return {
            "format": FORMAT,
            "created": datetime.now(timezone.utc).isoformat(),
            "host": socket.gethostname(),
            "config_file": loc.config_file,
            "versions": {
                "classroomhub": __version__,
                "jupyterhub": jupyterhub.__version__,
                "python": platform.python_version(),
                "sqlite": sqlite3.sqlite_version,
            },
            "items": self.items,
            "store": store,
            "notes": list(loc.notes),
        }

    def _database(self, name, url, stem):
        kind = kind_of(url)
        rel = f"{stem}.sqlite" if kind == "sqlite" else f"{stem}.pgdump"
        target = os.path.join(self.dest, rel)
        self.progress(f"{name}: {_display_url(url)}")
        try:
            fmt = copy_database(url, target)
        except CopyError as e:
            raise BackupError(str(e)) from None
        item = self._describe(name, rel, source=_display_url(url), format=fmt)
        if kind == "sqlite":
            st = os.stat(sqlite_path(url))
            item.update(mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, schema=_alembic_revision(target))
        self.items.append(item)

    def _file(self, name, path):
        if not path:
            return
        if not os.path.exists(path):
            self.items.append({"name": name, "source": path, "missing": True})
            self.progress(f"{name}: {path} does not exist (yet); skipped")
            return
        rel = f"hub/{os.path.basename(path)}"
        st = os.stat(path)
        _copy_private(path, os.path.join(self.dest, rel))
        self.progress(f"{name}: {path}")
        mode = stat.S_IMODE(st.st_mode)
        self.items.append(self._describe(name, rel, source=path, mode=mode, uid=st.st_uid, gid=st.st_gid))

    def _describe(self, name, rel, **extra):
        path = os.path.join(self.dest, rel)
        return {"name": name, "file": rel, "size": os.path.getsize(path), "sha256": _sha256(path), **extra}

    def _store(self):
        root = self.locations.store_dir
        wanted = referenced_objects(self.locations.service_db_url)
        self.progress(f"store: {root}: {len(wanted)} objects named by the database")
        areas, copied, total, inodes = {}, 0, 0, {}
        found = set()
        private_dir(os.path.join(self.dest, "service", "store"))
        for area in STORE_AREAS:
            source = os.path.join(root, area)
            if not os.path.isdir(source):
                continue
            out = os.path.join(self.dest, "service", "store", area)
            private_dir(out)
            modes = {"dir_mode": stat.S_IMODE(os.stat(source).st_mode), "file_mode": None, "objects": 0, "bytes": 0}
            for sha in sorted(wanted):
                path = os.path.join(source, sha[:2], sha[2:])
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                folder = os.path.join(out, sha[:2])
                if not os.path.isdir(folder):
                    private_dir(folder)
                _copy_private(path, os.path.join(folder, sha[2:]))
                inodes[(st.st_dev, st.st_ino)] = sha
                modes["file_mode"] = modes["file_mode"] or stat.S_IMODE(st.st_mode)
                modes["objects"] += 1
                modes["bytes"] += st.st_size
                found.add(sha)
            areas[area] = modes
            copied += modes["objects"]
            total += modes["bytes"]
        missing = sorted(wanted - found)
        if missing:
            self.progress(f"store: {len(missing)} objects named by the database are not in the store")
        return {
            "source": root,
            "areas": areas,
            "objects": copied,
            "bytes": total,
            "missing": missing,
            "shared": _shared_trees(os.path.join(root, "shared"), inodes),
        }


def _shared_trees(shared, inodes):
    """{key: {path: sha256}} of the shared datasets: hard links to objects,
    rebuilt from the objects on restore."""
    trees = {}
    if not os.path.isdir(shared):
        return trees
    for key in sorted(os.listdir(shared)):
        top = os.path.join(shared, key)
        if ".building-" in key or not os.path.isdir(top) or os.path.islink(top):
            continue
        files = {}
        for folder, _dirs, names in os.walk(top):
            for name in names:
                st = os.lstat(os.path.join(folder, name))
                sha = inodes.get((st.st_dev, st.st_ino))
                if stat.S_ISREG(st.st_mode) and sha:
                    files[os.path.relpath(os.path.join(folder, name), top)] = sha
        trees[key] = files
    return trees


def read_manifest(source):
    path = os.path.join(source, "manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise BackupError(f"{source}: no manifest.json: not a backup, or one that did not finish") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: backup format {manifest.get('format')!r}; this classroomhub reads {FORMAT}")
    return manifest


def _same_owner_as(path, uid, gid):
    if uid is not None and os.geteuid() == 0:
        os.chown(path, uid, gid)


class Restore:
    """Puts a backup back where the configuration (:class:`Locations`) says.

    Before anything is written, the files are checked against the manifest's
    checksums and the targets for emptiness (unless *force*). Store objects
    are checked (their name is their SHA-256) as they are copied, before the
    databases that name them are put back. Nothing may be running on the
    targets (stop the hub and its service first).
    """

    def __init__(self, locations: Locations, source, force=False, progress=None):
        self.locations = locations
        self.source = os.path.abspath(source)
        self.force = force
        self.progress = progress or (lambda message: None)

    def run(self):
        manifest = read_manifest(self.source)
        items = {item["name"]: item for item in manifest["items"]}
        targets = self._targets()
        for name, item in items.items():
            if item.get("missing"):
                continue
            path = os.path.join(self.source, item["file"])
            if not os.path.isfile(path) or _sha256(path) != item["sha256"]:
                raise BackupError(f"{path}: missing or damaged (its checksum differs from the manifest's)")
            if name not in targets:
                raise BackupError(f"the backup has {name}, but {self.locations.config_file} configures no place for it")
        for name, item in items.items():
            if item.get("format") and not item.get("missing"):
                users = processes_using(targets[name])
                if users:
                    running = ", ".join(f"{pid} ({comm})" for pid, comm in users)
                    raise BackupError(f"{_display_url(targets[name])} is in use by process {running}: stop the hub first")
        if not self.force:
            busy = [what for what, used in self._occupied(items, targets) if used]
            if busy:
                raise BackupError(
                    "the target is not empty: " + "; ".join(busy) + ". Restore into an empty place, or pass --force"
                )
        started = time.monotonic()
        # the store first: objects are checked as they are copied, and one
        # too many in a store is harmless, while a database naming a damaged
        # or missing object is not
        if manifest.get("store"):
            self._store(manifest["store"])
        for name, item in items.items():
            if item.get("missing"):
                continue
            path = os.path.join(self.source, item["file"])
            target = targets[name]
            self.progress(f"{name}: {target if not item.get('format') else _display_url(target)}")
            if item.get("format"):
                try:
                    restore_database(target, path, item["format"], item.get("mode", 0o600), self.force)
                except CopyError as e:
                    raise BackupError(str(e)) from None
                if item["format"] == "sqlite":
                    _same_owner_as(sqlite_path(target), item.get("uid"), item.get("gid"))
            else:
                self._file(path, target, item)
        os.sync()
        return time.monotonic() - started

    def _targets(self):
        loc = self.locations
        return {
            name: value
            for name, value in (
                ("hub-db", loc.hub_db_url),
                ("service-db", loc.service_db_url),
                ("cookie-secret", loc.cookie_secret_file),
                ("roster", loc.roster_path),
                ("identities", loc.identity_file),
            )
            if value
        }

    def _occupied(self, items, targets):
        for name, item in items.items():
            target = targets.get(name)
            if item.get("missing"):
                continue
            if name.endswith("-db"):
                yield f"{_display_url(target)} holds tables", database_has_tables(target)
            else:
                yield f"{target} exists", os.path.exists(target)
        store = self.locations.store_dir
        if store:
            yield f"{store} holds objects", any(
                os.path.isdir(os.path.join(store, area)) and os.listdir(os.path.join(store, area)) for area in STORE_AREAS
            )

    def _file(self, path, target, item):
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        part = target + ".part"
        if os.path.lexists(part):  # left by an interrupted restore
            os.unlink(part)
        _copy_private(path, part)
        os.chmod(part, item.get("mode", 0o600))
        _same_owner_as(part, item.get("uid"), item.get("gid"))
        os.replace(part, target)

    def _store(self, info):
        store = ReleaseStore(self.locations.store_dir)  # the store's own layout and folder modes
        jobs = []
        for area, modes in info["areas"].items():
            source = os.path.join(self.source, "service", "store", area)
            target = os.path.join(store.root, area)
            os.makedirs(target, mode=modes["dir_mode"], exist_ok=True)
            os.chmod(target, modes["dir_mode"])
            for prefix in sorted(os.listdir(source)) if os.path.isdir(source) else ():
                folder = os.path.join(target, prefix)
                os.makedirs(folder, mode=modes["dir_mode"], exist_ok=True)
                os.chmod(folder, modes["dir_mode"])
                for rest in os.listdir(os.path.join(source, prefix)):
                    saved, placed = os.path.join(source, prefix, rest), os.path.join(folder, rest)
                    jobs.append((saved, placed, prefix + rest, modes["file_mode"]))
        # checking is hashing, which runs outside the GIL: one thread per CPU
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for _ in pool.map(lambda job: self._object(*job), jobs):
                pass  # the first failure stops the restore
        self.progress(f"store: {len(jobs)} objects into {store.root}")
        for key, files in info.get("shared", {}).items():
            store.shared_tree(key, {rel: {"sha256": sha} for rel, sha in files.items()})

    @staticmethod
    def _object(source, target, sha, mode):
        if os.path.exists(target):
            return
        part = target + ".part"
        private_file(part)
        digest = hashlib.sha256()
        with open(source, "rb") as src, open(part, "wb") as out:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha:  # the name is the checksum
            os.unlink(part)
            raise BackupError(f"{source}: damaged (its content does not match its name)")
        os.chmod(part, mode or 0o444)
        os.replace(part, target)
