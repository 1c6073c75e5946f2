"""Versioned schema of the service's database (Alembic, driven from code).

Revisions live in ``versions/``; the first, ``baseline_a9f3de8``, is the
schema of the releases made before migrations existed. :func:`upgrade_database`
runs at every service start and from ``classroomhub upgrade-db``:

- a new, empty database gets the current tables and is stamped current;
- a database without ``alembic_version`` (made by a release before
  migrations) is taken as the baseline, then upgraded;
- an older revision is upgraded, after a backup (one call of *backup*);
- a revision this code does not know (written by a newer classroomhub) is
  refused with :class:`SchemaTooNew`: nothing is changed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from ...._version import __version__
from ....databases import copy_database, kind_of, sqlite_path
from ..models import Base

HERE = os.path.dirname(os.path.abspath(__file__))
BASELINE = "baseline_a9f3de8"


class SchemaTooNew(RuntimeError):
    """The database was upgraded by a newer classroomhub than this one."""


@dataclass
class Upgrade:
    """What :func:`upgrade_database` found and did."""

    before: tuple  # revisions found ((): none, a new or pre-migration database)
    after: tuple
    action: str  # created | current | upgraded
    backup: str | None = None

    def describe(self):
        if self.action == "created":
            return f"new database, schema {', '.join(self.after)}"
        if self.action == "current":
            return f"schema {', '.join(self.after)} is current"
        before = ", ".join(self.before) or f"{BASELINE} (unversioned)"
        saved = f"; backup before upgrading: {self.backup}" if self.backup else ""
        return f"schema upgraded from {before} to {', '.join(self.after)}{saved}"


def alembic_config(connection=None, extra_versions=()):
    """Alembic's configuration, without an alembic.ini. *extra_versions*:
    more folders of revisions (tests add one on top of the shipped ones)."""
    config = Config()
    config.set_main_option("script_location", HERE)
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join([os.path.join(HERE, "versions"), *extra_versions]))
    config.attributes["connection"] = connection
    return config


def backup_beside(url, folder=None):
    """A copy of the database before it is upgraded: beside an SQLite file,
    in *folder* for PostgreSQL (``pg_dump``). Mode 0600; returns its path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = sqlite_path(url)
    if path is not None:
        dest = f"{path}.backup-{stamp}"
    else:
        if folder is None:
            raise ValueError("a folder for the pg_dump backup is needed")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        dest = os.path.join(folder, f"classroom-db-backup-{stamp}.pgdump")
    copy_database(url, dest)
    return dest


def upgrade_database(url, backup=None, log=None, extra_versions=()):
    """Bring the database at *url* to the newest schema; :class:`Upgrade`.

    *backup* (a callable taking the URL and returning a path) runs once,
    before anything is written, when there is something to migrate.
    """
    kind_of(url)  # refuses what we cannot back up
    script = ScriptDirectory.from_config(alembic_config(extra_versions=extra_versions))
    heads = tuple(sorted(script.get_heads()))
    known = {rev.revision for rev in script.walk_revisions()}
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            current = tuple(sorted(MigrationContext.configure(conn).get_current_heads()))
            tables = set(inspect(conn).get_table_names())
        unknown = sorted(set(current) - known)
        if unknown:
            raise SchemaTooNew(
                f"the classroom service's database has schema {', '.join(unknown)}, newer than classroomhub "
                f"{__version__} knows (newest: {', '.join(heads)}): run the classroomhub that upgraded it, "
                "or restore the backup taken before that upgrade"
            )
        if not current and "releases" not in tables:
            Base.metadata.create_all(engine)
            with engine.begin() as conn:
                command.stamp(alembic_config(conn, extra_versions), "heads")
            return Upgrade((), heads, "created")
        if current == heads:
            return Upgrade(current, heads, "current")
        saved = backup(url) if backup else None
        if saved and log:
            log.info("Backed up the service's database to %s before upgrading it", saved)
        with engine.begin() as conn:
            config = alembic_config(conn, extra_versions)
            if not current:
                command.stamp(config, BASELINE)
            command.upgrade(config, "heads")
        result = Upgrade(current, heads, "upgraded", saved)
        if log:
            log.info("Service database: %s", result.describe())
        return result
    finally:
        engine.dispose()
