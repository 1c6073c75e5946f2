"""The service's database is versioned (Alembic): a database made by the
release before migrations (a9f3de8, tables from ``create_all``) is stamped
and upgraded without losing rows, after a backup beside it; a later revision
upgrades a current one; a schema newer than the code is refused, by the
service at start and by ``classroomhub upgrade-db``, and nothing is changed."""

import hashlib
import importlib.util
import logging
import os
import secrets
import stat
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, inspect, select, text
from sqlalchemy.orm import Session

import postgres
from classroomhub.service.db import models
from classroomhub.service.db.migrations import SchemaTooNew, alembic_config, backup_beside, upgrade_database

REPO = Path(__file__).parent.parent
#: the last release before migrations: its models made the databases in use
RELEASE = "a9f3de8"
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def release_models(tmp_path_factory):
    """classroomhub.service.db.models exactly as released at a9f3de8."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{RELEASE}:classroomhub/service/models.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = tmp_path_factory.mktemp("release") / "models_a9f3de8.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("models_a9f3de8", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # SQLAlchemy resolves the annotations in the module's namespace
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def fill(m, url):
    """One row in every table, made with models module *m*."""
    engine = create_engine(url)
    m.Base.metadata.create_all(engine)
    files = {
        "nb.ipynb": {"sha256": "ab" * 32, "size": 12, "mode": 0o644},
        "caf\udce9.txt": {"sha256": "cd" * 32, "size": 3, "mode": 0o644},  # a non-UTF-8 name
    }
    week1 = {"course": "data101", "material": "week1"}
    due = T0 + timedelta(days=7)
    with Session(engine) as db:
        release = m.Release(
            **week1, version=1, created=T0, created_by="h3-ines", source="/src", files=files,
            skipped=[["big.bin", "too large"]], shared=True,
        )  # fmt: skip
        db.add(release)
        db.flush()
        results = [{"path": "nb.ipynb", "action": "new"}]
        db.add(m.DeliveryReport(release_id=release.id, student="h3-sue", at=T0, counts={"new": 2}, results=results))
        db.add(m.Delivered(**week1, student="h3-sue", files=files, version=1))
        db.add(m.Assignment(**week1, due=due, late_seconds=3600, set_by="h3-ines", updated=T0))
        db.add(m.Extension(**week1, student="h3-sue", due=due + timedelta(days=2), set_by="h3-ines"))
        sub = m.Submission(
            **week1, student="h3-sue", taken=due, deadline=due, kind="deadline", late=False, caught_up=True,
            files=files, skipped=[],
        )  # fmt: skip
        db.add(sub)
        db.flush()
        db.add(m.GradedChoice(**week1, student="h3-sue", submission_id=sub.id, by="h3-ines", at=T0))
        db.add(m.Feedback(**week1, student="h3-sue", grader="h3-ines", at=T0, files=files, results=[]))
        db.add(m.AuditEvent(at=T0, actor="h3-ines", action="collect", **week1, student="h3-sue", detail="1 file"))
        db.commit()
    engine.dispose()


def dump(url, like=None):
    """Every row of every table (but Alembic's), read by reflection: the
    columns of *like* (an earlier dump) only, so rows compare across schemas."""
    engine = create_engine(url)
    meta = MetaData()
    meta.reflect(engine)
    rows = {}
    try:
        with engine.connect() as conn:
            for name, table in meta.tables.items():
                if name == "alembic_version" or (like is not None and name not in like):
                    continue
                columns = [c for c in table.columns if like is None or c.name in like[name]["columns"]]
                data = conn.execute(select(*columns)).all()
                rows[name] = {"columns": [c.name for c in columns], "rows": sorted(map(tuple, data), key=repr)}
    finally:
        engine.dispose()
    return rows


def schema_diff(url):
    """What the models describe and the database lacks (or has in excess);
    not empty after a change to models.py that no revision in
    classroomhub/service/db/migrations/versions/ brings to existing databases."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), models.Base.metadata)
    finally:
        engine.dispose()


def revision_of(url):
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()


def heads():
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def service_args(tmp_path, url):
    # no freezer: starting one thaws what is left in its folder, maybe another test's students
    return ["--data-dir", str(tmp_path / "data"), "--db-url", url, "--ClassroomService.freeze_at_deadline=False"]


@pytest.fixture(autouse=True)
def keep_account_policy(monkeypatch):
    """A service started in this process sets the class-wide account policy: put it back after."""
    from classroomhub.service.files import runas

    monkeypatch.setattr(runas.Account, "policy", runas.Account.policy)


def later_revision(folder, down):
    """A test-only revision on top of the shipped ones: a column filled from
    existing rows and a new table (what a real later release might do)."""
    folder.mkdir(exist_ok=True)
    (folder / "later_test.py").write_text(
        textwrap.dedent(
            f'''
            import sqlalchemy as sa
            from alembic import op

            revision = "later_test"
            down_revision = {down!r}
            branch_labels = None
            depends_on = None


            def upgrade():
                with op.batch_alter_table("audit") as batch:
                    batch.add_column(sa.Column("actor_upper", sa.String(255), nullable=True))
                op.execute("UPDATE audit SET actor_upper = upper(actor)")
                op.create_table("later_notes", sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.Text))


            def downgrade():
                op.drop_table("later_notes")
                with op.batch_alter_table("audit") as batch:
                    batch.drop_column("actor_upper")
            '''
        )
    )
    return str(folder)


def test_release_database_is_upgraded_after_a_backup_and_keeps_its_rows(release_models, tmp_path):
    url = f"sqlite:///{tmp_path}/classroom.sqlite"
    fill(release_models, url)
    before = dump(url)
    assert len(before) == 9 and all(len(table["rows"]) == 1 for table in before.values())
    original = sha(tmp_path / "classroom.sqlite")
    assert "alembic_version" not in inspect(create_engine(url)).get_table_names()

    result = upgrade_database(url, backup=backup_beside)

    assert result.action == "upgraded" and result.before == () and set(result.after) == heads()
    assert revision_of(url) == heads()
    assert schema_diff(url) == []  # the upgraded database is exactly what the models describe
    assert dump(url, before) == before
    # the backup beside it: the database as it was, root's alone
    saved = Path(result.backup)
    assert saved.parent == tmp_path and saved.name.startswith("classroom.sqlite.backup-")
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert dump(f"sqlite:///{saved}", before) == before
    assert "alembic_version" not in inspect(create_engine(f"sqlite:///{saved}")).get_table_names()
    assert sha(tmp_path / "classroom.sqlite") != original

    # again: nothing to do, no second backup
    again = upgrade_database(url, backup=backup_beside)
    assert again.action == "current" and again.backup is None
    assert len(list(tmp_path.glob("classroom.sqlite.backup-*"))) == 1


def test_new_database_matches_the_models_and_migrations_build_the_same(tmp_path):
    created = f"sqlite:///{tmp_path}/new.sqlite"
    assert upgrade_database(created, backup=backup_beside).action == "created"
    assert revision_of(created) == heads()
    assert schema_diff(created) == []
    assert not list(tmp_path.glob("*.backup-*"))  # nothing to migrate, nothing backed up
    # the revisions alone, from nothing, give the same schema as create_all
    migrated = f"sqlite:///{tmp_path}/migrated.sqlite"
    from alembic import command

    engine = create_engine(migrated)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "heads")
    engine.dispose()
    assert schema_diff(migrated) == []


def test_a_later_migration_upgrades_a_current_database_without_losing_rows(release_models, tmp_path):
    url = f"sqlite:///{tmp_path}/classroom.sqlite"
    fill(release_models, url)
    upgrade_database(url)  # what the current release runs at its start
    before = dump(url)
    (head,) = heads()
    later = later_revision(tmp_path / "later", head)

    result = upgrade_database(url, backup=backup_beside, extra_versions=[later])

    assert result.action == "upgraded" and result.before == (head,) and result.after == ("later_test",)
    assert dump(url, before) == before
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT actor_upper FROM audit")).scalars().all() == ["H3-INES"]
        assert "later_notes" in inspect(conn).get_table_names()
    engine.dispose()
    assert dump(f"sqlite:///{result.backup}", before) == before


def newer_database(release_models, tmp_path):
    """A database upgraded by a 'newer classroomhub' (one more revision than this code ships)."""
    url = f"sqlite:///{tmp_path}/classroom.sqlite"
    fill(release_models, url)
    (head,) = heads()
    upgrade_database(url, extra_versions=[later_revision(tmp_path / "later", head)])
    return url, tmp_path / "classroom.sqlite"


def test_a_newer_schema_is_refused_and_left_alone(release_models, tmp_path):
    url, path = newer_database(release_models, tmp_path)
    before = sha(path)
    with pytest.raises(SchemaTooNew, match="later_test, newer than classroomhub .* knows"):
        upgrade_database(url, backup=backup_beside)
    assert sha(path) == before
    assert not list(tmp_path.glob("*.backup-*"))

    cli = subprocess.run(
        [sys.executable, "-m", "classroomhub.cli", "upgrade-db", "--db-url", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and "newer than classroomhub" in lines[0] and "restore the backup" in lines[0], cli.stderr
    assert sha(path) == before


@pytest.mark.root("the service runs as root (it works as students)")
def test_the_service_refuses_to_start_on_a_newer_schema(release_models, tmp_path):
    url, path = newer_database(release_models, tmp_path)
    before = sha(path)
    proc = subprocess.run(
        [sys.executable, "-m", "classroomhub.service", *service_args(tmp_path, url)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, JUPYTERHUB_SERVICE_URL="http://127.0.0.1:1"),
    )
    assert proc.returncode == 1
    critical = [line for line in proc.stderr.splitlines() if "newer than classroomhub" in line]
    assert len(critical) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert sha(path) == before


@pytest.mark.root("the service runs as root (it works as students)")
def test_service_start_backs_up_then_migrates(release_models, tmp_path, caplog):
    from classroomhub.service.app import ClassroomService

    url = f"sqlite:///{tmp_path}/db/classroom.sqlite"
    os.makedirs(tmp_path / "db", mode=0o700)
    fill(release_models, url)
    before = dump(url)
    service = ClassroomService()
    service.log = logging.getLogger("h3-service")
    with caplog.at_level(logging.INFO, logger="h3-service"):
        service.initialize(service_args(tmp_path, url))
    (saved,) = (tmp_path / "db").glob("classroom.sqlite.backup-*")
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert dump(f"sqlite:///{saved}", before) == before
    assert revision_of(url) == heads() and dump(url, before) == before
    messages = [r.getMessage() for r in caplog.records]
    backed = next(i for i, m in enumerate(messages) if "Backed up the service's database" in m)
    upgraded = next(i for i, m in enumerate(messages) if "schema upgraded from" in m)
    assert backed < upgraded
    # what the service stores after the upgrade is read back
    with service.sessions() as db:
        assert db.query(models.Submission).one().student == "h3-sue"

    # the next start: nothing to migrate, no second backup
    ClassroomService().initialize(service_args(tmp_path, url))
    assert len(list((tmp_path / "db").glob("classroom.sqlite.backup-*"))) == 1


@pytest.fixture
def pg_database(postgres_url):  # noqa: F811
    """A database of its own on the test run's PostgreSQL server (others use `classroom`)."""
    name = "h3_" + secrets.token_hex(4)
    admin = create_engine(postgres_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def test_postgresql_release_database_is_backed_up_with_pg_dump_and_upgraded(release_models, pg_database, tmp_path):
    assert postgres.current_url is not None
    fill(release_models, pg_database)
    before = dump(pg_database)

    result = upgrade_database(pg_database, backup=lambda url: backup_beside(url, str(tmp_path / "db")))

    assert result.action == "upgraded" and revision_of(pg_database) == heads()
    assert schema_diff(pg_database) == []
    assert dump(pg_database, before) == before
    saved = Path(result.backup)
    assert saved.parent == tmp_path / "db" and stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert saved.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format

    # a revision from a newer classroomhub is refused here too, and left as it is
    engine = create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))
    engine.dispose()
    with pytest.raises(SchemaTooNew, match="from_the_future"):
        upgrade_database(pg_database)
    assert revision_of(pg_database) == {"from_the_future"} and dump(pg_database, before) == before


@pytest.mark.root("the service runs as root (it works as students)")
def test_no_migration_without_a_backup(release_models, tmp_path, monkeypatch, caplog):
    """When the copy cannot be made (say pg_dump is missing), the service
    stops with one line and leaves the database as it was."""
    from classroomhub.databases import CopyError
    from classroomhub.service import app as service_app

    def no_backup(url, folder=None):
        raise CopyError("pg_dump not found: install PostgreSQL's client programs")

    monkeypatch.setattr(service_app, "backup_beside", no_backup)
    url = f"sqlite:///{tmp_path}/db/classroom.sqlite"
    os.makedirs(tmp_path / "db", mode=0o700)
    fill(release_models, url)
    before = sha(tmp_path / "db" / "classroom.sqlite")
    service = service_app.ClassroomService()
    service.log = logging.getLogger("h3-service-nobackup")
    with caplog.at_level(logging.INFO, logger="h3-service-nobackup"), pytest.raises(SystemExit) as exited:
        service.initialize(service_args(tmp_path, url))
    assert exited.value.code == 1
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "could not be backed up first: pg_dump not found" in line and "--no-backup" in line
    assert sha(tmp_path / "db" / "classroom.sqlite") == before
    assert revision_of(url) == set()
