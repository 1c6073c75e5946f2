"""The classroom service for real: a JupyterHub-managed service process next
to a real hub and proxy, real system users, releases read as the instructor
and delivered as each student, courses straight from the roster's groups."""

import asyncio
import os
import secrets
import subprocess

import pytest
import requests
from jupyterhub.tests.mocking import MockHub
from jupyterhub.utils import random_port
from sqlalchemy import create_engine, text

from classroomhub.synchook import sync_hook

from conftest import write_roster
from service_hub import (
    call,
    data_dir,
    home,
    hub_config,
    material,
    read,
    release,
    service_url,
)

pytestmark = pytest.mark.root("creates system users and works as them")
# every test runs on each: a new hub, service, users and data folder for each (fixtures/service.py)
SERVICE_DATABASES = ["sqlite", "postgresql"]

TAG = "sv" + secrets.token_hex(2)
INES, TARA, SAM, SUE, BEA, LEE = (f"{TAG}-{n}" for n in ("ines", "tara", "sam", "sue", "bea", "lee"))
PEOPLE = [INES, TARA, SAM, SUE, BEA, LEE]
PORT = random_port()
SERVICE_URL = f"http://127.0.0.1:{PORT}"
DATA_DIR = data_dir(TAG)

ROSTER = f"""\
users:
  admin: {{tier: root}}
courses:
  data101:
    instructors: [{INES}]
    tas: [{TARA}]
    students: [{SAM}, {SUE}]
  bio202:
    students: [{BEA}]
"""


def HUB_CONFIG(c):
    hub_config(c, DATA_DIR, PORT)
    c.Spawner.pre_spawn_hook = late_join_hook
    # MockHub's spawner works in /tmp/{username} by default and leaves it there
    c.SimpleLocalProcessSpawner.home_dir_template = os.path.join(DATA_DIR, "mock-{username}")


async def late_join_hook(spawner):
    # what sync_hook(url) does, with MockHub's unusual prefix (/@/space%20word/)
    prefix = MockHub.instance().base_url
    await sync_hook(f"{SERVICE_URL}{prefix}services/classroom/")(spawner)


async def test_instructor_releases_to_every_student_of_the_course(app, ready):
    src = material(INES, {"hw1.ipynb": "hw1\n", "data/x.csv": "1,2\n"})
    r = await release(app, INES, "week1", source=src, wait=True)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["version"], body["n_files"], body["created_by"]) == (1, 2, INES)
    assert sorted(rep["student"] for rep in body["reports"]) == [SAM, SUE]
    assert all(rep["ok"] and rep["counts"]["added"] == 2 for rep in body["reports"])
    for student in (SAM, SUE):
        path = os.path.join(home(student), "data101", "week1", "hw1.ipynb")
        assert read(path) == "hw1\n"
        assert os.stat(path).st_uid == os.stat(home(student)).st_uid
    assert not os.path.exists(os.path.join(home(BEA), "data101"))
    assert not os.path.exists(os.path.join(home(TARA), "data101"))


async def test_update_keeps_edits_and_reports_are_scoped(app, ready):
    src = material(INES, {"a.ipynb": "a1\n", "b.ipynb": "b1\n"})
    r = await release(app, INES, "week2", source=src, wait=True)
    assert r.status_code == 201, r.text
    mine = os.path.join(home(SAM), "data101", "week2", "a.ipynb")
    with open(mine, "w") as f:
        f.write("sam's work\n")
    src2 = material(INES, {"a.ipynb": "a2\n", "b.ipynb": "b2\n"})
    r = await release(app, INES, "week2", source=src2, wait=True)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2
    assert read(mine) == "sam's work\n"
    assert read(os.path.join(home(SAM), "data101", "week2", "a.release-2.ipynb")) == "a2\n"
    assert read(os.path.join(home(SUE), "data101", "week2", "a.ipynb")) == "a2\n"

    r = await call(app, TARA, "GET", "courses/data101/materials/week2/releases/2")
    assert r.status_code == 200, r.text
    reports = {rep["student"]: rep for rep in r.json()["reports"]}
    assert set(reports) == {SAM, SUE}
    assert {x["path"]: x["status"] for x in reports[SAM]["results"]} == {"a.ipynb": "kept", "b.ipynb": "updated"}
    assert {x["path"]: x["status"] for x in reports[SUE]["results"]} == {"a.ipynb": "updated", "b.ipynb": "updated"}
    r = await call(app, SAM, "GET", "courses/data101/materials/week2/releases/2")
    assert [rep["student"] for rep in r.json()["reports"]] == [SAM]
    assert "files" not in r.json()
    r = await call(app, SAM, "GET", "courses/data101/materials/week2/releases")
    assert [x["version"] for x in r.json()["releases"]] == [1, 2]


async def test_release_from_a_git_repository(app, ready):
    repo = material(INES, {"README.md": "from git\n", "nb/lab.ipynb": "{}\n"})
    for cmd in (
        ["git", "init", "-q", "-b", "main", repo],
        ["git", "-C", repo, "add", "."],
        ["git", "-C", repo, "-c", "user.name=I", "-c", "user.email=i@example.org", "commit", "-qm", "lab"],
    ):
        subprocess.run(cmd, check=True, user=INES, env={"PATH": "/usr/bin:/bin", "HOME": home(INES)})
    r = await release(app, INES, "lab1", git=repo, ref="main", wait=True)
    assert r.status_code == 201, r.text
    assert r.json()["n_files"] == 2  # .git is not released
    assert read(os.path.join(home(SUE), "data101", "lab1", "nb", "lab.ipynb")) == "{}\n"
    r = await release(app, INES, "lab2", git=os.path.join(home(INES), "no-such-repo"), wait=True)
    assert r.status_code == 400
    assert "git clone" in r.json()["message"]


@pytest.mark.parametrize(
    "who, path, method, body, status, message",
    [
        (SAM, "courses/data101/materials/x/releases", "POST", {"source": "/tmp"}, 403, "Only instructors"),
        (TARA, "courses/data101/materials/x/releases", "POST", {"source": "/tmp"}, 403, "Only instructors"),
        (BEA, "courses/data101", "GET", None, 403, "is not a member of course 'data101'"),
        (INES, "courses/nope", "GET", None, 404, "No course 'nope'"),
        (INES, "courses/data101/materials/..bad/releases", "POST", {"source": "/tmp"}, 400, "not a valid name"),
        (INES, "courses/data101/materials/x/releases", "POST", "not json", 400, "not JSON"),
        (INES, "courses/data101/materials/x/releases", "POST", [1], 400, "must be a JSON object"),
        (INES, "courses/data101/materials/x/releases", "POST", {"source": "/tmp", "rm": 1}, 400, "Unknown field"),
        (INES, "courses/data101/materials/x/releases", "POST", {"source": 3}, 400, "must be a str"),
        (INES, "courses/data101/materials/x/releases", "POST", {}, 400, "exactly one of"),
        (INES, "courses/data101/materials/x/releases", "POST", {"source": "rel/path"}, 400, "absolute path"),
        (INES, "courses/data101/materials/x/releases", "POST", {"source": "/root"}, 400, "permission denied"),
        (INES, "courses/data101/materials/x/releases/7", "GET", None, 404, "No version 7 of material 'x'"),
        (INES, "courses/data101/materials/x/releases/1", "POST", {}, 405, "immutable"),
        (INES, "no/such/endpoint", "GET", None, 404, "No such endpoint"),
        (None, "courses", "GET", None, 403, "Authentication needed"),
    ],
)
async def test_bad_requests_get_a_clear_4xx(app, ready, who, path, method, body, status, message):
    kwargs = {"data": body} if isinstance(body, str) else {"json": body} if body is not None else {}
    r = await call(app, who, method, path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert message in r.json()["message"]
    assert r.json()["status"] == status


async def test_courses_come_from_the_roster(app, ready):
    r = await call(app, SAM, "GET", "courses")
    assert [(c["id"], c["role"]) for c in r.json()["courses"]] == [("data101", "student")]
    r = await call(app, "admin", "GET", "courses")
    assert [c["id"] for c in r.json()["courses"]] == ["bio202", "data101"]
    r = await call(app, TARA, "GET", "courses/data101")
    assert r.json()["members"]["student"] == sorted([SAM, SUE])
    r = await call(app, SAM, "GET", "courses/data101")
    assert "members" not in r.json()


async def test_late_joiner_has_everything_before_the_server_is_ready(app, ready, roster_file):
    src = material(INES, {"intro.ipynb": "welcome\n"})
    r = await release(app, INES, "intro", source=src, wait=True)
    assert r.status_code == 201, r.text
    assert not os.path.exists(os.path.join(home(LEE), "data101"))
    write_roster(roster_file, ROSTER.replace(f"students: [{SAM}, {SUE}]", f"students: [{SAM}, {SUE}, {LEE}]"))
    try:
        await app.authenticator.sync_roster()
        await asyncio.sleep(0.3)  # the service's cache of the hub's groups
        user = app.users[LEE]
        await user.spawn()  # the stock spawner of MockHub, with the pre_spawn_hook
        try:
            path = os.path.join(home(LEE), "data101", "intro", "intro.ipynb")
            assert read(path) == "welcome\n"
            assert os.stat(path).st_uid == os.stat(home(LEE)).st_uid
        finally:
            await user.stop()
    finally:
        write_roster(roster_file, ROSTER)
        await app.authenticator.sync_roster()


async def test_openapi_document_and_state_survive_a_restart(app, ready):
    r = await asyncio.to_thread(requests.get, service_url(app, "api/openapi.json"), timeout=10)
    spec = r.json()
    assert "/api/courses/{course}/materials/{material}/releases" in spec["paths"]
    service = app._service_map["classroom"]
    # Service.stop() would also forget its route; stop only the process
    service.spawner.stop_polling()
    await service.spawner.stop()
    await service.start()
    for _ in range(100):
        try:
            r = await call(app, INES, "GET", "courses/data101/materials/week1/releases")
            if r.status_code == 200:
                break
        except requests.ConnectionError:
            pass
        await asyncio.sleep(0.2)
    assert [x["version"] for x in r.json()["releases"]] == [1]


async def test_release_and_status_commands(app, ready, capsys):
    from jupyterhub.tests.utils import public_url

    from classroomhub import cli

    hub_url = public_url(app).rstrip("/")
    token = app.users[INES].new_api_token(note="cli")
    src = material(INES, {"one.ipynb": "1\n", "two.ipynb": "2\n"})
    argv = ["release", "data101", "cli-week", "--from", src, "--hub-url", hub_url, "--token", token]
    assert await asyncio.to_thread(cli.main, argv) == 0
    out = capsys.readouterr().out
    assert "data101/cli-week version 1: 2 files" in out
    assert "2/2 students" in out
    assert [line.split()[:2] for line in out.splitlines() if line.startswith(SAM)] == [[SAM, "2"]]
    assert read(os.path.join(home(SUE), "data101", "cli-week", "two.ipynb")) == "2\n"

    # a student's edit is kept (not a failure): the command lists it
    with open(os.path.join(home(SAM), "data101", "cli-week", "one.ipynb"), "w") as f:
        f.write("sam\n")
    with open(os.path.join(src, "one.ipynb"), "w") as f:
        f.write("1 v2\n")
    assert await asyncio.to_thread(cli.main, argv) == 0
    captured = capsys.readouterr()
    assert "version 2" in captured.out
    assert f"{SAM}: one.ipynb: kept: changed by its owner; the new version is one.release-2.ipynb" in captured.err

    assert await asyncio.to_thread(cli.main, ["status", "data101", "--hub-url", hub_url, "--token", token]) == 0
    out = capsys.readouterr().out
    assert "course data101: 2 students" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("cli-week"))
    assert (row[1], row[3], row[4], row[5]) == ("2", "2", "2", "0")

    # refusals: the service's message, exit status 1
    student = app.users[SAM].new_api_token(note="cli")
    argv = ["release", "data101", "x", "--from", src, "--hub-url", hub_url, "--token", student]
    assert await asyncio.to_thread(cli.main, argv) == 1
    assert "Only instructors of 'data101'" in capsys.readouterr().err


@pytest.mark.service_databases("postgresql")
async def test_the_service_stores_in_postgresql(app, ready, postgres_url):
    src = material(INES, {"pg.ipynb": "stored in postgres\n"})
    r = await release(app, INES, "pg", source=src, wait=True)
    assert r.status_code == 201, r.text
    assert read(os.path.join(home(SUE), "data101", "pg", "pg.ipynb")) == "stored in postgres\n"
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as db:
            rows = db.execute(text("SELECT course, material, version, created_by FROM releases WHERE material = 'pg'")).all()
            assert [tuple(row) for row in rows] == [("data101", "pg", 1, INES)]
            reports = db.execute(
                text(
                    "SELECT student FROM delivery_reports JOIN releases ON releases.id = release_id"
                    " WHERE material = 'pg' ORDER BY student"
                )
            ).scalars()
            assert list(reports) == sorted([SAM, SUE])
            created = db.execute(
                text("SELECT data_type FROM information_schema.columns WHERE table_name = 'releases' AND column_name = 'created'")
            ).scalar()
            assert created == "timestamp with time zone"
    finally:
        engine.dispose()
    assert not os.path.exists(os.path.join(DATA_DIR, "db", "classroom.sqlite"))
