"""Databases on disk: an SQLite file made private before anyone opens it, a
consistent copy of a database that is in use, and putting one back.

Below the service and the operations commands, which both use it (the hub's
configuration makes its own database private with :func:`private_sqlite`).

Copies of SQLite: the backup API (in WAL mode committed pages may still sit in the
``-wal`` file, so a plain ``cp`` of the database can miss them or catch a
torn page); the copy is one self-contained file. Of PostgreSQL: ``pg_dump``
(one snapshot transaction) and ``pg_restore``.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import stat
import subprocess
import urllib.parse

from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url


def private_sqlite(url):
    """For a ``sqlite:///`` *url*: create the database file 0600 before
    SQLAlchemy does (with the umask's 0644). SQLite gives its -wal and -shm
    files the database's mode. Other URLs pass unchanged. Returns *url*."""
    prefix = "sqlite:///"
    path = url[len(prefix) :].split("?", 1)[0] if url.startswith(prefix) else ""
    if path in ("", ":memory:"):
        return url
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        for name in (path, path + "-wal", path + "-shm"):
            if os.path.exists(name):
                os.chmod(name, 0o600)
    except OSError as e:
        raise SystemExit(f"classroomhub: database {path}: {e.strerror}") from None
    return url


class CopyError(RuntimeError):
    """A copy or restore could not be made; the message says why."""


def sqlite_path(url):
    """The file of an SQLite URL (absolute), or None for any other database."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return None
    if not u.database or u.database == ":memory:":
        raise CopyError(f"{url}: an in-memory database cannot be copied")
    return os.path.abspath(u.database)


def kind_of(url):
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return "sqlite"
    if backend == "postgresql":
        return "postgresql"
    raise CopyError(f"{backend} databases are not supported by backup/restore (SQLite and PostgreSQL are)")


def private_dir(path):
    """Make the folder *path* (and missing parents) mode 0700; an existing one
    that others can read or enter is tightened to 0700 too. Raises OSError."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        os.chmod(path, mode & 0o700)


def private_file(path):
    """Create *path* anew, mode 0600 (it holds tokens and students' work)."""
    if os.path.lexists(path):
        os.unlink(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))


def fsync_file(path):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_database(url, dest):
    """Write a consistent copy of the database at *url* to the file *dest*
    (mode 0600) while it is in use; returns its format: ``sqlite`` or ``pg_dump``."""
    part = dest + ".part"
    private_file(part)
    try:
        if kind_of(url) == "sqlite":
            _sqlite_backup(sqlite_path(url), part)
            fmt = "sqlite"
        else:
            _pg("pg_dump", url, "--format=custom", "--no-owner", "--no-privileges", "--file", part)
            fmt = "pg_dump"
        fsync_file(part)
        os.replace(part, dest)
    finally:
        if os.path.exists(part):
            os.unlink(part)
    return fmt


def _sqlite_backup(source, dest):
    if not os.path.isfile(source):
        raise CopyError(f"{source}: no such database")
    # read-only: a mistyped path must not create an empty database
    src = sqlite3.connect(f"file:{urllib.parse.quote(source)}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(dest)
        try:
            # in one step: one read transaction, so one point in time; in WAL
            # mode writers go on meanwhile (a stepwise copy would restart at
            # every write)
            src.backup(out)
            # a self-contained file: no -wal beside the copy
            out.execute("PRAGMA journal_mode=DELETE")
            check = out.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise CopyError(f"{source}: the copy fails SQLite's check: {check}")
        finally:
            out.close()
    except sqlite3.Error as e:
        raise CopyError(f"{source}: {e}") from None
    finally:
        src.close()


def restore_database(url, source, fmt, mode=0o600, force=False):
    """Put the copy *source* (made by :func:`copy_database`) back as the
    database at *url*. Refuses a database that holds tables unless *force*;
    with *force* it replaces them (nothing may be using the database)."""
    if fmt == "sqlite":
        if kind_of(url) != "sqlite":
            raise CopyError(f"the backup holds an SQLite database; {make_url(url).get_backend_name()} cannot load it")
        target = sqlite_path(url)
        # an empty file is no database yet (configurations create it 0600 ahead)
        if database_has_tables(url) and not force:
            raise CopyError(f"{target} holds tables: restore into an empty place, or pass --force to replace it")
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)  # missing folders: private
        part = target + ".part"
        private_file(part)
        try:
            shutil.copyfile(source, part)
            os.chmod(part, mode)
            fsync_file(part)
            # a -wal left by the replaced database would be replayed into this one
            for suffix in ("-wal", "-shm", "-journal"):
                if os.path.exists(target + suffix):
                    os.unlink(target + suffix)
            os.replace(part, target)
        finally:
            if os.path.exists(part):
                os.unlink(part)
    elif fmt == "pg_dump":
        if kind_of(url) != "postgresql":
            raise CopyError("the backup holds a PostgreSQL dump; restore it into a PostgreSQL database")
        if database_has_tables(url) and not force:
            raise CopyError(f"{_display(url)} holds tables: restore into an empty database, or pass --force")
        options = ["--clean", "--if-exists"] if force else []
        _pg("pg_restore", url, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction", *options, source)
    else:
        raise CopyError(f"unknown database copy format {fmt!r}")


def processes_using(url):
    """``[(pid, command name)]`` of the processes that have the SQLite
    database at *url* (or its -wal/-shm files) open: a database must not be
    replaced under a running hub or service. Empty for other databases."""
    path = sqlite_path(url)
    if path is None:
        return []
    names = {path, path + "-wal", path + "-shm"}
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in names for fd in fds):
                with open(f"/proc/{pid}/comm") as f:
                    found.append((int(pid), f.read().strip()))
        except OSError:  # gone meanwhile, or not ours to look at
            continue
    return found


def database_has_tables(url):
    path = sqlite_path(url)
    if path is not None and not os.path.exists(path):
        return False
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return bool(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _display(url):
    return make_url(url).render_as_string(hide_password=True)


def pg_program(name):
    """A PostgreSQL client program: on PATH, else the newest in Debian's /usr/lib/postgresql."""
    found = shutil.which(name) or max(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), default=None)
    if not found:
        raise CopyError(f"{name} not found: install PostgreSQL's client programs (Debian: postgresql-client)")
    return found


def _pg(program, url, *args):
    u = make_url(url)
    # libpq's own URL, without the driver; the password goes in the
    # environment, not on a command line every user can read in ps
    dsn = u.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    env = dict(os.environ)
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    result = subprocess.run([pg_program(program), *args, "--dbname", dsn], env=env, capture_output=True, text=True)
    if result.returncode:
        raise CopyError(f"{program} failed for {_display(url)}: {result.stderr.strip()[-2000:]}")
