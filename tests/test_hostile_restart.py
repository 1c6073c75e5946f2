"""The classroom service against a hostile student's requests, and killed
in the middle of its work: a real hub, the real managed service, real
system users, the real cgroup v1 freezer.

Syncs and hand-ins are bounded (429 with a message and Retry-After), the
submissions table comes in pages, and a service killed with SIGKILL in the
middle of a release or a collection, started again on the same state,
shows nothing half-done as done, finishes the work, delivers and collects
nothing twice, and leaves nobody frozen.
"""

import asyncio
import json
import os
import secrets
import signal
import subprocess
import time

import pytest
from jupyterhub.utils import random_port

from service_hub import (
    call,
    data_dir,
    home,
    hub_config,
    material,
    service_rows,
    soon,
)

pytestmark = [
    pytest.mark.root("creates system users and works as them"),
    pytest.mark.skipif(
        not os.access("/sys/fs/cgroup/freezer/cgroup.procs", os.W_OK), reason="needs a writable cgroup v1 freezer"
    ),
]

TAG = "h5" + secrets.token_hex(2)
INES = f"{TAG}-ines"
STUDENTS = [f"{TAG}-s{i}" for i in range(4)]
SAM = STUDENTS[0]
PEOPLE = [INES, *STUDENTS]
PORT = random_port()
DATA_DIR = data_dir(TAG)
FREEZER = f"/sys/fs/cgroup/freezer/classroomhub-{TAG}"
MAX_FILES = 1000

ROSTER = f"""\
users:
  admin: {{tier: root}}
courses:
  data101:
    instructors: [{INES}]
    students: [{", ".join(STUDENTS)}]
"""


def HUB_CONFIG(c):
    hub_config(
        c,
        DATA_DIR,
        PORT,
        "--ClassroomService.collect_interval=1",
        "--ClassroomService.concurrency=1",  # one home at a time: slow enough to be cut off
        f"--ClassroomService.max_collect_files={MAX_FILES}",
        "--ClassroomService.sync_rate_limit=3",
        "--ClassroomService.submit_rate_limit=2",
        f"--ClassroomService.freezer_parent=classroomhub-{TAG}",
    )


@pytest.fixture(scope="module", autouse=True)
def accounts(service_world):
    try:
        yield
    finally:
        for login in PEOPLE:
            subprocess.run(["pkill", "-KILL", "-u", login], check=False)
        if os.path.isdir(FREEZER):  # nobody stays frozen, whatever failed
            for group in os.listdir(FREEZER):
                path = os.path.join(FREEZER, group)
                if os.path.isdir(path):
                    with open(os.path.join(path, "freezer.state"), "w") as f:
                        f.write("THAWED")
                    for pid in open(os.path.join(path, "cgroup.procs")).read().split():
                        with open("/sys/fs/cgroup/freezer/cgroup.procs", "w") as f:
                            f.write(pid)
                    os.rmdir(path)
            os.rmdir(FREEZER)


async def wait_for(predicate, timeout=30, what="condition", every=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(every)


async def release(app, name, files, wait=True):
    src = material(INES, files)
    body = {"source": src, "wait": wait}
    r = await call(app, INES, "POST", f"courses/data101/materials/{name}/releases", json=body)
    assert r.status_code == (201 if wait else 202), r.text
    return r.json()


async def kill_service(app):
    """SIGKILL the service process (no clean-up of any kind)."""
    service = app._service_map["classroom"]
    service.spawner.stop_polling()
    os.kill(service.spawner.pid, signal.SIGKILL)
    await service.spawner.stop(now=True)


async def start_service(app):
    await app._service_map["classroom"].start()
    for _ in range(150):
        try:
            r = await call(app, INES, "GET", "courses")
            if r.status_code == 200:
                return
        except Exception:
            pass
        await asyncio.sleep(0.2)
    pytest.fail("the service did not come back")


def many(n):
    return {f"data/{i:05d}.csv": f"{i}\n" for i in range(n)}


async def test_a_sync_storm_is_coalesced_and_rate_limited(app, ready):
    await release(app, "storm", {"hw.ipynb": "{}\n"})
    student = STUDENTS[1]
    answers = await asyncio.gather(*(call(app, student, "POST", "sync") for _ in range(12)))
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 429}, [r.text for r in answers]
    limited = [r for r in answers if r.status_code == 429]
    assert limited, statuses  # 12 calls, at most 3 syncs a minute
    assert "Too many syncs: at most 3 in 60 s" in limited[0].json()["message"]
    assert int(limited[0].headers["Retry-After"]) >= 1
    # nothing was delivered twice: the release was delivered once, at release time
    reports = service_rows(
        DATA_DIR,
        "SELECT count(*) FROM delivery_reports JOIN releases ON releases.id = release_id"
        " WHERE material = 'storm' AND student = :s",
        s=student,
    )
    assert reports[0][0] == 1


async def test_hand_ins_are_rate_limited_through_the_api(app, ready):
    await release(app, "rate", {"hw.ipynb": "{}\n"})
    r = await call(app, INES, "PUT", "courses/data101/assignments/rate", json={"due": soon(3600).isoformat()})
    assert r.status_code == 200, r.text
    statuses = []
    for _ in range(3):
        r = await call(app, SAM, "POST", "courses/data101/assignments/rate/submit")
        statuses.append(r.status_code)
    assert statuses == [201, 201, 429]
    assert "Too many hand-ins: at most 2 in 600 s" in r.json()["message"]
    assert 1 <= int(r.headers["Retry-After"]) <= 600
    # another student is not held back
    assert (await call(app, STUDENTS[1], "POST", "courses/data101/assignments/rate/submit")).status_code == 201


async def test_a_hand_in_of_a_huge_folder_is_cut_and_the_table_stays_small(app, ready):
    await release(app, "huge", {"hw.ipynb": "{}\n"})
    r = await call(app, INES, "PUT", "courses/data101/assignments/huge", json={"due": soon(3600).isoformat()})
    assert r.status_code == 200
    student = STUDENTS[2]
    folder = os.path.join(home(student), "data101", "huge", "many")
    code = f"""
import os
os.makedirs({folder!r}, exist_ok=True)
for i in range(30_000):
    open(os.path.join({folder!r}, str(i)), 'w').close()
"""
    uid = os.stat(home(student)).st_uid
    subprocess.run(["python3", "-c", code], user=uid, group=os.stat(home(student)).st_gid, check=True)
    t0 = time.monotonic()
    r = await call(app, student, "POST", "courses/data101/assignments/huge/submit")
    took = time.monotonic() - t0
    assert r.status_code == 201, r.text
    data = r.json()
    assert data["n_files"] < MAX_FILES and data["n_skipped"] == 1
    assert data["skipped"] == [{"path": data["skipped"][0]["path"], "reason": f"over the limit of {MAX_FILES} entries"}]
    assert len(data["paths"]) <= 200
    r = await call(app, INES, "GET", "courses/data101/assignments/huge/submissions")
    assert r.status_code == 200
    print(f"hand-in of 30,000 files: {took:.2f} s; submissions table {len(r.content)} bytes")
    assert len(r.content) < 100_000


async def test_the_submissions_table_comes_in_pages(app, ready):
    await release(app, "pages", {"hw.ipynb": "{}\n"})
    r = await call(app, INES, "PUT", "courses/data101/assignments/pages", json={"due": soon(3600).isoformat()})
    assert r.status_code == 200
    base = "courses/data101/assignments/pages/submissions"
    seen, query = [], "?limit=3"
    while query:
        r = await call(app, INES, "GET", base + query)
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["total"] == len(STUDENTS) and page["limit"] == 3 and len(page["students"]) <= 3
        seen += [row["student"] for row in page["students"]]
        query = page["next"]
    assert seen == sorted(STUDENTS)
    r = await call(app, INES, "GET", base + "?offset=100")
    assert r.json()["students"] == [] and r.json()["next"] is None
    for bad in ("?limit=0", "?limit=501", "?limit=x", "?offset=-1", "?page=2"):
        r = await call(app, INES, "GET", base + bad)
        assert r.status_code == 400 and r.json()["message"], bad
    r = await call(app, SAM, "GET", base)  # a student: their own line only
    assert [row["student"] for row in r.json()["students"]] == [SAM] and r.json()["total"] == 1


async def test_a_release_cut_off_by_sigkill_resumes_and_delivers_nothing_twice(app, ready):
    files = {"hw.ipynb": "v1\n", **many(1500)}
    state = await release(app, "cut", files, wait=False)
    version = state["version"]

    def reported():
        return service_rows(
            DATA_DIR,
            "SELECT student, at FROM delivery_reports JOIN releases ON releases.id = release_id WHERE material = 'cut'"
        )

    await wait_for(lambda: len(reported()) >= 1, what="the first home")
    await kill_service(app)
    before = {s: at for s, at in reported()}
    print(f"killed after {len(before)} of {len(STUDENTS)} homes")
    assert len(before) < len(STUDENTS), "the release ended before the kill: nothing was cut off"
    ((finished,),) = service_rows(DATA_DIR, "SELECT finished FROM releases WHERE material = 'cut'")
    assert finished is None  # not shown as done
    await start_service(app)
    r = await call(app, INES, "GET", f"courses/data101/materials/cut/releases/{version}")
    assert r.status_code == 200
    await wait_for(lambda: service_rows(DATA_DIR, "SELECT finished FROM releases WHERE material = 'cut'")[0][0], 120, "the resumed release")
    after = {s: at for s, at in reported()}
    assert sorted(after) == sorted(STUDENTS)  # one report each, nobody twice
    assert all(after[s] == at for s, at in before.items())  # homes done before the kill: not again
    r = await call(app, INES, "GET", f"courses/data101/materials/cut/releases/{version}")
    data = r.json()
    assert data["finished"] and all(rep["ok"] for rep in data["reports"]), data["reports"]
    for student in STUDENTS:
        folder = os.path.join(home(student), "data101", "cut")
        names = os.listdir(folder)
        assert sorted(names) == ["data", "hw.ipynb"], names  # nothing placed beside, no temporary left
        assert len(os.listdir(os.path.join(folder, "data"))) == 1500
        assert not [n for n in os.listdir(os.path.join(folder, "data")) if "classroomhub" in n or "release-" in n]


def freezer_groups():
    try:
        return [g for g in os.listdir(FREEZER) if os.path.isdir(os.path.join(FREEZER, g))]
    except FileNotFoundError:
        return []


def frozen(uid):
    try:
        with open(os.path.join(FREEZER, str(uid), "freezer.state")) as f:
            return f.read().strip() == "FROZEN"
    except FileNotFoundError:
        return False


async def test_a_collection_cut_off_by_sigkill_thaws_and_collects_each_deadline_once(app, ready):
    # under max_collect_files, and large enough to take a while to copy
    await release(app, "due", {"hw.ipynb": "{}\n", **{f"data/{i:03d}.csv": f"{i}," * 20_000 for i in range(900)}})
    clock = os.path.join(home(SAM), "clock.log")
    loop = f"""
import os, time
while True:
    with open({clock!r}, 'w') as f:
        f.write(repr(time.time()))
    time.sleep(0.01)
"""
    uid, gid = os.stat(home(SAM)).st_uid, os.stat(home(SAM)).st_gid
    # Sam's own data: a copy that takes a while (the service is killed during it)
    big = f"import os\nfor n in ('a', 'b'):\n    open({home(SAM)!r} + '/data101/due/' + n + '.bin', 'wb').write(os.urandom(90 << 20))"
    subprocess.run(["python3", "-c", big], user=uid, group=gid, cwd="/", check=True)
    proc = subprocess.Popen(["python3", "-c", loop], user=uid, group=gid, cwd="/")
    try:
        r = await call(app, INES, "PUT", "courses/data101/assignments/due", json={"due": soon(1).isoformat()})
        assert r.status_code == 200
        # cut off while Sam (first in line) is frozen for his snapshot
        await wait_for(lambda: frozen(uid), 30, "Sam frozen", every=0.002)
        await kill_service(app)
        done = service_rows(DATA_DIR, "SELECT student, finished FROM submissions WHERE material = 'due'")
        assert all(finished for _, finished in done)  # a row is written once its copy is complete
        frozen_at = open(clock).read()
        await asyncio.sleep(0.5)
        assert open(clock).read() == frozen_at, "Sam was not frozen when the service died"
        await start_service(app)
        await wait_for(lambda: open(clock).read() != frozen_at, 30, "Sam thawed by the next start")
        await wait_for(lambda: len(service_rows(DATA_DIR, "SELECT 1 FROM submissions WHERE material = 'due'")) == len(STUDENTS), 120)
        await asyncio.sleep(2.5)  # two more scheduler rounds: still one each
        snaps = service_rows(DATA_DIR, "SELECT student, kind, finished, files FROM submissions WHERE material = 'due' ORDER BY student")
        assert [s.student for s in snaps] == sorted(STUDENTS)
        assert all(s.kind == "deadline" and s.finished for s in snaps)
        assert [len(json.loads(s.files)) for s in snaps] == [903, 901, 901, 901]  # Sam's two files too
        assert freezer_groups() == []
    finally:
        proc.kill()
        proc.wait()
