"""End to end: `classroomhub backup` copies a running hub (real jupyterhub,
proxy, classroom service, system users) with releases and submissions while
the hub and the service write, `classroomhub restore` puts it into an empty
state folder, and a hub started there has the same people, groups,
releases, submissions and audit log; the backup is private and checked."""

import json
import os
import re
import secrets
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from classroomhub.demo import free_port, remove_demo_cgroups
from classroomhub.databases import copy_database
from fixtures.real_hub import start_hub, stop_hub, wait_until_answers
from service_hub import home, material, write_tree

needs_root = pytest.mark.root("the hub runs the service and makes system users")

TAG = "h3" + secrets.token_hex(2)
OWNER, STUDENT = f"{TAG}-own", f"{TAG}-stu"
COURSE = "h3data"
ROSTER = f"users:\n  {OWNER}: {{tier: root}}\ncourses:\n  {COURSE}:\n    instructors: [{OWNER}]\n    students: [{STUDENT}]\n"


def classroomhub(*args, check=True, timeout=300):
    result = subprocess.run(
        [sys.executable, "-m", "classroomhub.cli", *args], capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


class Hub:
    """A real jupyterhub (+ proxy and classroom service) in *state*: by default
    through `classroomhub demo`, which makes the roster's system users and the
    config; or `jupyterhub -f` with a given config. Started, waited for and
    stopped (Ctrl-C) by fixtures/real_hub.py."""

    def __init__(self, state, password, port=None, config=None):
        self.state, self.port = Path(state), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.demo = config is None
        if self.demo:  # its own output (the hub's is its jupyterhub.log)
            command = ["classroomhub.cli", "demo", "--port", str(self.port), "--state-dir", str(state)]
            command += ["--password", password]
            log_path = self.state / "demo.log"
        else:
            command = ["jupyterhub", "-f", str(config)]
            log_path = self.state / "jupyterhub.log"
        env = dict(os.environ, CLASSROOMHUB_PASSWORD=password)
        self.proc, self.log_file = start_hub([sys.executable, "-m", *command], state, env, log_path)
        self.children = []
        try:
            wait_until_answers(self.proc, self.url + "hub/api/", log_path, timeout=90)
            self.children = psutil.Process(self.proc.pid).children(recursive=True)
        except BaseException:
            self.stop()
            raise

    def log(self):
        path = self.state / "jupyterhub.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def stop(self):
        stop_hub(self.proc, self.log_file, self.children)
        if not self.demo:  # what `classroomhub demo` does when its hub ends
            remove_demo_cgroups()


@pytest.fixture
def states():
    """Two state folders a student's worker can pass through (not below pytest's 0700 tmp_path)."""
    folders = [Path(tempfile.mkdtemp(prefix=f"classroomhub-{TAG}-{n}-")) for n in ("first", "second")]
    for folder in folders:
        os.chmod(folder, 0o711)
    try:
        yield folders
    finally:
        for folder in folders:
            classroomhub("demo", "--state-dir", str(folder), "--remove-users", check=False)
            shutil.rmtree(folder, ignore_errors=True)


def login_token(url, name, password):
    """Log in as a browser does, then make an API token (the hub checks the XSRF cookie)."""
    s = requests.Session()
    s.get(url + "hub/login", timeout=30).raise_for_status()
    form = {"username": name, "password": password, "_xsrf": s.cookies["_xsrf"]}
    r = s.post(url + "hub/login", data=form, allow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text
    r = s.post(
        url + f"hub/api/users/{name}/tokens",
        json={"note": "h3 backup test"},
        headers={"X-XSRFToken": s.cookies.get("_xsrf", path="/hub/")},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return r.json()["token"]


class Client:
    def __init__(self, url, token):
        self.url, self.headers = url, {"Authorization": f"token {token}"}

    def hub(self, path):
        r = requests.get(self.url + "hub/api/" + path, headers=self.headers, timeout=60)
        r.raise_for_status()
        return r.json()

    def service(self, method, path, **kwargs):
        url = self.url + "services/classroom/api/" + path
        return requests.request(method, url, headers=self.headers, timeout=120, **kwargs)

    def wait_for_service(self):
        for _ in range(150):
            try:
                if self.service("GET", "openapi.json").status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        pytest.fail("the classroom service did not come up")

    def state(self):
        """What must survive: people, groups, releases, submissions, audit log."""
        users = {u["name"]: (u["admin"], sorted(u["groups"])) for u in self.hub("users") if u["name"].startswith(TAG)}
        groups = {g["name"]: sorted(g["users"]) for g in self.hub("groups") if COURSE in g["name"]}
        releases = self.service("GET", f"courses/{COURSE}/materials/week1/releases").json()["releases"]
        subs = self.service("GET", f"courses/{COURSE}/assignments/week1/submissions").json()
        audit = self.service("GET", f"courses/{COURSE}/audit").json()
        return {
            "users": users,
            "groups": groups,
            "releases": [(r["version"], r["created"], r["n_files"], r["size"]) for r in releases],
            "submissions": sorted(
                (s["id"], s["student"], s["kind"], s["taken"], tuple(s["paths"]))
                for row in subs["students"]
                for s in row["submissions"]
            ),
            "audit": [tuple(sorted(e.items())) for e in audit["events"]],
        }


@needs_root
@pytest.mark.e2e
def test_backup_of_a_running_hub_restores_into_an_empty_state_folder(states):
    first, second = states
    (first / "roster.yaml").write_text(ROSTER)
    password = secrets.token_urlsafe(12)
    demo = Hub(first, password)
    restored = None
    try:
        client = Client(demo.url, login_token(demo.url, OWNER, password))
        client.wait_for_service()
        source = material(OWNER, {"intro.ipynb": '{"cells": []}\n', "data/table.csv": "a,b\n1,2\n"})
        r = client.service("POST", f"courses/{COURSE}/materials/week1/releases", json={"source": source, "wait": True})
        assert r.status_code == 201, r.text
        assert all(rep["ok"] for rep in r.json()["reports"]), r.text
        # the student's own work: collected into the store's private area
        write_tree(STUDENT, os.path.join(home(STUDENT), COURSE, "week1"), {"answer.py": "print(42)\n"})
        r = client.service("PUT", f"courses/{COURSE}/assignments/week1", json={"due": "2030-01-01T00:00:00+00:00"})
        assert r.status_code in (200, 201), r.text
        r = client.service("POST", f"courses/{COURSE}/assignments/week1/collect", json={"wait": True})
        assert r.status_code == 201 and r.json()["submissions"], r.text

        # the hub and the service keep writing while the backup is taken:
        # collections (service database, store) and API calls (hub database)
        stop, errors = threading.Event(), []

        def keep_writing():
            while not stop.is_set():
                try:
                    client.service("POST", f"courses/{COURSE}/assignments/week1/collect", json={"wait": True})
                    client.hub("users")
                except Exception as e:  # noqa: BLE001  (reported below)
                    errors.append(e)

        before = client.state()
        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            time.sleep(1)
            backup = first / "backup"
            out = classroomhub("backup", str(backup), "-f", str(first / "jupyterhub_config.py"))
        finally:
            stop.set()
            writer.join(timeout=120)
        assert not errors, errors
        after = client.state()
        assert len(after["submissions"]) > len(before["submissions"])  # the writer did write
        assert "store objects" in out.stdout
    finally:
        demo.stop()

    # private: the folder 0700, every file 0600
    assert stat.S_IMODE(backup.stat().st_mode) == 0o700
    for path in backup.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    manifest = json.loads((backup / "manifest.json").read_text())
    assert {item["name"] for item in manifest["items"]} == {"hub-db", "service-db", "cookie-secret", "roster"}
    assert manifest["store"]["objects"] >= 2 and not manifest["store"]["missing"]
    assert manifest["versions"]["jupyterhub"] and manifest["versions"]["classroomhub"]

    # restore into an empty state folder: the same configuration, pointed there
    port = free_port()
    config = (first / "jupyterhub_config.py").read_text().replace(str(first), str(second))
    config = re.sub(r"'127.0.0.1', [0-9]+,", f"'127.0.0.1', {port},", config)
    # JupyterHub 6.1.1 cannot start twice on one database when the authenticator
    # manages roles (KeyError: 'users' in init_role_assignment, DESIGN.md §9):
    # a restored hub is such a second start
    config += "c.Authenticator.reset_managed_roles_on_startup = True\n"
    (second / "jupyterhub_config.py").write_text(config)
    out = classroomhub("restore", str(backup), "-f", str(second / "jupyterhub_config.py"))
    assert "restored" in out.stdout
    # a second restore would overwrite: refused without --force, nothing touched
    again = classroomhub("restore", str(backup), "-f", str(second / "jupyterhub_config.py"), check=False)
    assert again.returncode == 1 and "not empty" in again.stderr
    secret = second / "jupyterhub_cookie_secret"
    assert secret.read_bytes() == (first / "jupyterhub_cookie_secret").read_bytes()
    assert stat.S_IMODE(secret.stat().st_mode) == stat.S_IMODE((first / "jupyterhub_cookie_secret").stat().st_mode)
    for area, mode in (("objects", 0o444), ("private", 0o400)):
        objects = [p for p in (second / "classroom" / "store" / area).rglob("*") if p.is_file()]
        assert objects and all(stat.S_IMODE(p.stat().st_mode) == mode for p in objects), area

    restored = Hub(second, password, port=port, config=second / "jupyterhub_config.py")
    try:
        # the old token works: it is in the restored hub database
        client = Client(restored.url, client.headers["Authorization"].split()[1])
        client.wait_for_service()
        got = client.state()
        # people, groups and releases did not change meanwhile: equal
        for key in ("users", "groups", "releases"):
            assert got[key] == before[key] == after[key], key
        # submissions and audit events: all from before the backup, none after it ended
        for key in ("submissions", "audit"):
            assert set(before[key]) <= set(got[key]) <= set(after[key]), key
        # a collected file is served from the restored store
        sub_id = got["submissions"][0][0]
        path = f"courses/{COURSE}/assignments/week1/submissions/{sub_id}/file"
        r = client.service("GET", path, params={"path": "answer.py"})
        assert r.status_code == 200 and r.text == "print(42)\n", r.text
    finally:
        restored.stop()


# -- the parts, without a hub ----------------------------------------------------


def test_sqlite_copies_are_consistent_while_a_writer_commits(tmp_path):
    """Each copy is one point in time of a WAL database under constant writes:
    it passes SQLite's check, and a transfer between two tables is never half in."""
    db = tmp_path / "live.sqlite"
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, amount INTEGER)")
    con.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, amount INTEGER)")
    con.execute("INSERT INTO a (amount) VALUES (1000000)")
    con.commit()
    stop = threading.Event()

    def write():
        w = sqlite3.connect(db)
        w.execute("PRAGMA synchronous=NORMAL")
        while not stop.is_set():
            with w:  # one transaction: a row out of a, the same into b, and some bulk
                w.execute("UPDATE a SET amount = amount - 7 WHERE id = 1")
                w.execute("INSERT INTO b (amount) VALUES (7)")
                w.execute("INSERT INTO a (amount) VALUES (0)")
        w.close()

    writer = threading.Thread(target=write)
    writer.start()
    counts = []
    try:
        for n in range(20):
            copy = tmp_path / f"copy{n}.sqlite"
            assert copy_database(f"sqlite:///{db}", str(copy)) == "sqlite"
            assert stat.S_IMODE(copy.stat().st_mode) == 0o600
            c = sqlite3.connect(copy)
            assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
            total = c.execute("SELECT (SELECT total(amount) FROM a) + (SELECT total(amount) FROM b)").fetchone()[0]
            assert total == 1000000
            counts.append(c.execute("SELECT count(*) FROM b").fetchone()[0])
            c.close()
            assert not (tmp_path / f"copy{n}.sqlite-wal").exists()
    finally:
        stop.set()
        writer.join()
    assert counts == sorted(counts) and counts[-1] > counts[0]  # the writer ran throughout


def small_state(folder, service_db_url=None):
    """A hub's state without a hub: its database, secret, roster and pins,
    and a service database and store with released, collected, orphaned and
    shared content. Returns (Locations, {what: value})."""
    from classroomhub.service.db.migrations import upgrade_database
    from classroomhub.service.db.models import Release, Submission
    from classroomhub.service.files.store import ReleaseStore

    folder.mkdir(parents=True, exist_ok=True)
    hub_db = folder / "jupyterhub.sqlite"
    con = sqlite3.connect(hub_db)
    con.execute("CREATE TABLE users (name TEXT)")
    con.execute(f"INSERT INTO users VALUES ('{TAG}-a')")
    con.commit()
    con.close()
    secret = folder / "jupyterhub_cookie_secret"
    secret.write_text(secrets.token_hex(32))
    secret.chmod(0o600)
    (folder / "roster.yaml").write_text(ROSTER)
    (folder / "identities.json").write_text('{"pins": {}}')
    service_db_url = service_db_url or f"sqlite:///{folder}/classroom/db/classroom.sqlite"
    loc = read_locations_for(folder, service_db_url)
    os.makedirs(os.path.join(loc.service_data_dir, "db"), mode=0o700, exist_ok=True)
    upgrade_database(service_db_url)
    store = ReleaseStore(loc.store_dir)
    released, _ = store.add_bytes(b"released notebook\n")
    collected, _ = store.add_bytes(b"a student's answer\n", private=True)
    orphan, _ = store.add_bytes(b"named by no row\n")
    store.shared_tree("c--m--v1", {"data/x.csv": {"sha256": released, "size": 18}})
    engine = create_engine(service_db_url)
    with Session(engine) as db:
        nb = {"nb.ipynb": {"sha256": released, "size": 18, "mode": 0o644}}
        db.add(Release(course="c", material="m", version=1, created_by="i", source="/s", files=nb, shared=True))
        answer = {"answer.py": {"sha256": collected, "size": 19}}
        db.add(Submission(course="c", material="m", student="s", kind="submitted", files=answer))
        db.commit()
    engine.dispose()
    return loc, {"released": released, "collected": collected, "orphan": orphan}


def read_locations_for(folder, service_db_url):
    from classroomhub.ops.locations import Locations

    return Locations(
        config_file=str(folder / "jupyterhub_config.py"),
        hub_db_url=f"sqlite:///{folder}/jupyterhub.sqlite",
        cookie_secret_file=str(folder / "jupyterhub_cookie_secret"),
        roster_path=str(folder / "roster.yaml"),
        identity_file=str(folder / "identities.json"),
        service_db_url=service_db_url,
        service_data_dir=str(folder / "classroom"),
        store_dir=str(folder / "classroom" / "store"),
    )


def test_restore_checks_everything_and_refuses_a_non_empty_target(tmp_path):
    from classroomhub.ops.backup import Backup, BackupError, Restore

    loc, shas = small_state(tmp_path / "live")
    backup = tmp_path / "backup"
    manifest = Backup(loc, backup).run()
    assert manifest["store"]["objects"] == 2 and not manifest["store"]["missing"]
    store_copy = backup / "service" / "store"
    assert not list(store_copy.rglob(shas["orphan"][2:]))  # only what the database names
    assert manifest["store"]["shared"] == {"c--m--v1": {"data/x.csv": shas["released"]}}
    # a folder that is not empty is no place for a backup
    with pytest.raises(BackupError, match="not an empty folder"):
        Backup(loc, backup).run()

    target = read_locations_for(tmp_path / "new", f"sqlite:///{tmp_path}/new/classroom/db/classroom.sqlite")
    Restore(target, backup).run()
    new = tmp_path / "new"
    for name in ("jupyterhub_cookie_secret", "roster.yaml", "identities.json"):
        assert (new / name).read_bytes() == (tmp_path / "live" / name).read_bytes()
    assert stat.S_IMODE((new / "jupyterhub_cookie_secret").stat().st_mode) == 0o600
    con = sqlite3.connect(new / "jupyterhub.sqlite")
    assert con.execute("SELECT name FROM users").fetchall() == [(f"{TAG}-a",)]
    con.close()
    store = new / "classroom" / "store"
    released = store / "objects" / shas["released"][:2] / shas["released"][2:]
    collected = store / "private" / shas["collected"][:2] / shas["collected"][2:]
    assert released.read_bytes() == b"released notebook\n" and stat.S_IMODE(released.stat().st_mode) == 0o444
    assert collected.read_bytes() == b"a student's answer\n" and stat.S_IMODE(collected.stat().st_mode) == 0o400
    assert stat.S_IMODE((store / "private").stat().st_mode) == 0o700
    shared = store / "shared" / "c--m--v1" / "data" / "x.csv"
    assert shared.stat().st_ino == released.stat().st_ino  # the dataset is hard links again
    engine = create_engine(target.service_db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT student FROM submissions")).scalars().all() == ["s"]
    engine.dispose()

    # again: every target is taken, so refused; --force replaces
    with pytest.raises(BackupError, match="not empty: .*holds tables.*exists"):
        Restore(target, backup).run()
    (new / "roster.yaml").write_text("changed\n")
    # not under a running hub: a database someone has open is not replaced, even with --force
    in_use = sqlite3.connect(new / "jupyterhub.sqlite")
    try:
        with pytest.raises(BackupError, match=f"jupyterhub.sqlite is in use by process {os.getpid()} .*stop the hub"):
            Restore(target, backup, force=True).run()
    finally:
        in_use.close()
    assert (new / "roster.yaml").read_text() == "changed\n"
    Restore(target, backup, force=True).run()
    assert (new / "roster.yaml").read_text() == ROSTER

    # a damaged file: refused before anything is written
    secret = backup / "hub" / "jupyterhub_cookie_secret"
    good = secret.read_bytes()
    secret.write_bytes(b"x" + good[1:])
    empty = read_locations_for(tmp_path / "third", f"sqlite:///{tmp_path}/third/classroom/db/classroom.sqlite")
    with pytest.raises(BackupError, match="damaged"):
        Restore(empty, backup).run()
    assert not (tmp_path / "third").exists()
    secret.write_bytes(good)
    # a damaged object: refused before the databases that name it are put back
    obj = next(p for p in store_copy.rglob("*") if p.is_file())
    obj.write_bytes(b"tampered")
    with pytest.raises(BackupError, match="does not match its name"):
        Restore(empty, backup).run()
    assert not (tmp_path / "third" / "jupyterhub.sqlite").exists()
    assert not (tmp_path / "third" / "classroom" / "db" / "classroom.sqlite").exists()


@pytest.fixture
def pg_databases(postgres_url):  # noqa: F811
    """Two databases of our own on the test run's PostgreSQL server."""
    base = postgres_url.rsplit("/", 1)[0]
    names = [f"h3_{secrets.token_hex(4)}" for _ in range(2)]
    admin = create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield [f"{base}/{name}" for name in names]
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def test_postgresql_service_database_is_dumped_and_restored(tmp_path, pg_databases):
    from classroomhub.ops.backup import Backup, BackupError, Restore

    live, empty = pg_databases
    loc, _ = small_state(tmp_path / "live", service_db_url=live)
    backup = tmp_path / "backup"
    manifest = Backup(loc, backup).run()
    item = next(i for i in manifest["items"] if i["name"] == "service-db")
    assert item["format"] == "pg_dump" and item["file"] == "service/classroom.pgdump"
    assert "@" not in item["source"] or "***" in item["source"]  # no password in the manifest
    assert manifest["store"]["objects"] == 2

    target = read_locations_for(tmp_path / "new", empty)
    Restore(target, backup).run()

    def rows(url):
        engine = create_engine(url)
        with engine.connect() as conn:
            found = {
                "releases": conn.execute(text("SELECT course, material, version, files FROM releases")).all(),
                "submissions": conn.execute(text("SELECT student, kind, files FROM submissions")).all(),
                "schema": conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all(),
            }
        engine.dispose()
        return found

    assert rows(empty) == rows(live) and rows(live)["submissions"]
    with pytest.raises(BackupError, match="holds tables"):
        Restore(target, backup).run()
    Restore(target, backup, force=True).run()
    assert rows(empty) == rows(live)


def test_locations_come_from_the_hub_configuration(tmp_path, monkeypatch):
    """backup/restore/upgrade-db find everything through jupyterhub_config.py:
    the shipped example (its environment variables), and a hand-written one
    with relative paths and the service's own --db-url."""
    from classroomhub.ops.locations import read_locations

    example = Path(__file__).parent.parent / "classroomhub" / "data" / "jupyterhub_config.example.py"
    state = tmp_path / "state"
    monkeypatch.setenv("CLASSROOMHUB_STATE_DIR", str(state))
    monkeypatch.setenv("CLASSROOMHUB_BIND_URL", "http://127.0.0.1:8000")
    monkeypatch.setenv("CLASSROOMHUB_SERVICE_DIR", str(tmp_path / "service"))
    monkeypatch.delenv("CLASSROOMHUB_ROSTER", raising=False)
    monkeypatch.delenv("CLASSROOMHUB_DB_URL", raising=False)
    loc = read_locations(example)
    assert loc.hub_db_url == f"sqlite:///{state}/jupyterhub.sqlite"
    assert loc.cookie_secret_file == f"{state}/jupyterhub_cookie_secret"
    assert loc.roster_path == f"{state}/roster.yaml"
    assert loc.identity_file == f"{state}/classroomhub-identities.json"
    assert loc.service_db_url == f"sqlite:///{tmp_path}/service/db/classroom.sqlite"
    assert loc.store_dir == f"{tmp_path}/service/store"

    own = tmp_path / "etc" / "jupyterhub_config.py"
    own.parent.mkdir()
    own.write_text(
        "from classroomhub.service.hubconfig import add_classroom_service\n"
        "c.JupyterHub.authenticator_class = 'classroom-password'\n"
        "c.ClassroomPasswordAuthenticator.roster_path = 'people.yaml'\n"
        "add_classroom_service(c, data_dir='/srv/h3-classroom', args=['--db-url', 'postgresql://u:secret@db/classroom'])\n"
    )
    loc = read_locations(own)
    here = own.parent
    assert loc.hub_db_url == f"sqlite:///{here}/jupyterhub.sqlite"  # JupyterHub's defaults, relative to the hub
    assert loc.cookie_secret_file == f"{here}/jupyterhub_cookie_secret"
    assert loc.roster_path == f"{here}/people.yaml" and loc.identity_file is None
    assert loc.service_db_url == "postgresql://u:secret@db/classroom"
    assert loc.store_dir == "/srv/h3-classroom/store"
    assert read_locations(own, hub_dir="/srv/hub").hub_db_url == "sqlite:////srv/hub/jupyterhub.sqlite"
