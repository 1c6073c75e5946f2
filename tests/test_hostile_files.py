"""Students against students: file modes, system accounts, hostile input.

- Nothing the hub or the classroom service writes can be read by another
  student: databases are 0600 in 0700 folders, collected work lives in the
  store's private area, and a real hub from the example config with a
  release, a collection and feedback is walked file by file *as another
  student* (only released content may be readable).
- A roster login that names root, a system account (uid < UID_MIN) or an
  account the hub did not create gets no server, delivery or collection,
  unless the allow-list names it; ``roster check`` says so.
- Names are matched in full (a trailing newline is no name), download names
  give valid RFC 6266 headers, and a release source in /proc is a 400.
"""

import email.message
import hashlib
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import requests
from jupyterhub.tests.utils import api_request
from jupyterhub.utils import random_port

from classroomhub import cli
from classroomhub.accounts import MANAGED_GROUP, AccountPolicy, AccountRefused, uid_min
from classroomhub.demo import free_ports
from classroomhub.roster import RosterError, parse_roster
from classroomhub.service.domain.releases import check_name
from classroomhub.spawner import ClassroomSpawner
from classroomhub.spawner.users import ensure_system_user

from fixtures.example_hub import EXAMPLE, hub_env, oauth_login
from fixtures.real_hub import running_hub
from service_hub import (
    call,
    data_dir,
    home,
    hub_config,
    material,
    read,
    system_users,
    write_tree,
)

pytestmark = pytest.mark.root("creates system users and works as them")

TAG = "h6" + secrets.token_hex(2)
INES, TARA, SAM, EVE = (f"{TAG}-{n}" for n in ("ines", "tara", "sam", "eve"))
# accounts the hub did not make: a system account with a writable home, a
# regular account from plain useradd, and one such account the allow-list names
SYS, PLAIN, OKAY = f"{TAG}-sys", f"{TAG}-plain", f"{TAG}-okay"
PEOPLE = [INES, TARA, SAM, EVE]
PORT = random_port()
DATA_DIR = data_dir(TAG)

ROSTER = f"""\
users:
  admin: {{tier: root}}
courses:
  data101:
    instructors: [{INES}]
    tas: [{TARA}]
    students: [{SAM}, {SYS}, {PLAIN}, {OKAY}, daemon]
  bio202:
    students: [{EVE}]
"""


def HUB_CONFIG(c):
    hub_config(c, DATA_DIR, PORT, f"--AccountPolicy.allowed_system_accounts={OKAY}")
    c.JupyterHub.spawner_class = ClassroomSpawner
    c.Spawner.cmd = [os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")]
    c.ClassroomSpawner.enforcement = "none"
    c.ClassroomSpawner.cgroup_parent = f"{TAG}-servers"
    c.ClassroomSpawner.classroom_service_url = ""  # no late-joiner sync needed here


def useradd(login, *options):
    subprocess.run(["useradd", *options, login], check=True, capture_output=True)


def userdel(login):
    subprocess.run(["pkill", "-KILL", "-u", login], check=False)
    subprocess.run(["userdel", "--remove", login], check=False, capture_output=True)


@pytest.fixture(scope="module", autouse=True)
def accounts():
    """The three accounts the hub did not make (its own users: fixtures/service.py)."""
    made = []
    try:
        # a system account (uid < UID_MIN) that, like postgres, owns a writable home
        useradd(SYS, "--system", "--create-home", "--home-dir", f"/tmp/{SYS}-home", "--shell", "/bin/bash")
        made.append(SYS)
        for login in (PLAIN, OKAY):
            useradd(login, "--create-home")
            made.append(login)
        yield
    finally:
        for login in made:
            userdel(login)
        shutil.rmtree(f"/tmp/{SYS}-home", ignore_errors=True)


def as_user(login, code, data):
    """Run Python *code* as *login* (uid, gid, groups) with *data* as JSON on stdin; its JSON answer."""
    entry = pwd.getpwnam(login)
    groups = [g for g in os.getgrouplist(login, entry.pw_gid) if g != entry.pw_gid]
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        input=json.dumps(data),
        capture_output=True,
        text=True,
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=groups,
        cwd="/",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


#: as the student: list each folder, read a byte of each file, connect to each socket
PROBE = r"""
import json, os, socket, sys
got = {}
for path, kind in json.load(sys.stdin):
    try:
        if kind == "dir":
            os.listdir(path)
        elif kind == "sock":
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(2)
            s.connect(path)
            s.close()
        else:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.read(fd, 1)
            os.close(fd)
        got[path] = kind
    except OSError:
        pass
json.dump(got, sys.stdout)
"""


def everything_under(*roots):
    """[(path, kind)] of every file, folder and socket below *roots*, walked as root."""
    found = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            found.append((folder, "dir"))
            for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                path = os.path.join(folder, name)
                mode = os.lstat(path).st_mode
                kind = "sock" if stat.S_ISSOCK(mode) else "link" if stat.S_ISLNK(mode) else "file"
                found.append((path, kind))
    return found


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def store_object(sha):
    return os.path.join(DATA_DIR, "store", "objects", sha[:2], sha[2:])


async def release(app, name, files, **body):
    src = material(INES, files)
    return await call(app, INES, "POST", f"courses/data101/materials/{name}/releases", json={"source": src, "wait": True, **body})


async def collected(app, name, files):
    """Release *name*, let Sam change it to *files*, collect; Sam's submission."""
    r = await release(app, name, {"hw.ipynb": "{}\n"})
    assert r.status_code == 201, r.text
    write_tree(SAM, os.path.join(home(SAM), "data101", name), files)
    r = await call(app, INES, "POST", f"courses/data101/assignments/{name}/collect", json={"wait": True})
    assert r.status_code == 201, r.text
    return next(s for s in r.json()["submissions"] if s["student"] == SAM)


def sha256_text(text):
    return hashlib.sha256(text.encode()).hexdigest()


# -- 9: names matched in full, any download name, sources in /proc ------------------------


@pytest.mark.parametrize("name", ["nl\n", "a\r", "a\x00", " a", "a/b", "..", "-x", "a" * 65, "é", "a\n\n"])
def test_a_name_is_matched_in_full(name):
    with pytest.raises(ValueError, match="not a valid name"):
        check_name("material", name)


async def test_a_material_named_with_a_trailing_newline_is_refused(app, ready):
    src = material(INES, {"x.txt": "x\n"})
    r = await call(app, INES, "POST", "courses/data101/materials/nl%0A/releases", json={"source": src, "wait": True})
    assert r.status_code == 400, r.text
    assert "not a valid name" in r.json()["message"]
    assert not os.path.exists(os.path.join(home(SAM), "data101", "nl\n"))
    r = await call(app, SAM, "GET", "courses/data101%0A")
    assert r.status_code == 404 and "not a valid name" in r.json()["message"]


def test_a_course_id_with_a_trailing_newline_is_a_roster_error():
    with pytest.raises(RosterError) as e:
        parse_roster('courses:\n  "data101\\n":\n    students: [sam]\n', path="r.yaml")
    assert "r.yaml:2" in str(e.value)


def download_name(header):
    """The name a browser saves a download under: RFC 6266's ``filename*``
    (RFC 5987: charset, language, percent-encoded), which wins over ``filename``."""
    kind, *params = header.split(";")
    assert kind == "attachment"
    params = dict(p.strip().split("=", 1) for p in params)
    charset, _, value = params["filename*"].split("'", 2)
    assert charset == "UTF-8"
    return unquote(value)


HOSTILE_NAMES = [' a"b.txt ', "ünïcödé 名前.txt", "line\nbreak.txt", "semi;colon=x.txt", "back\\slash%41.txt", "tab\there.txt"]


@pytest.mark.parametrize("name", HOSTILE_NAMES + [os.fsdecode(b"latin1-\xe9\xff.txt")])
def test_content_disposition_names_any_file_exactly(name):
    from classroomhub.service.web.grading import attachment

    header = attachment(name)
    assert header.isascii() and "\n" not in header and "\r" not in header
    assert download_name(header) == os.fsencode(name).decode("utf-8", "replace")
    # old clients read the quoted fallback, which holds no quote of its own
    message = email.message.Message()
    message["Content-Disposition"] = header
    fallback = message.get_param("filename", header="content-disposition")
    assert fallback.isprintable() and '"' not in fallback


async def test_hostile_file_names_download_with_their_names(app, ready):
    files = {name: f"{i}\n" for i, name in enumerate(HOSTILE_NAMES)}
    sam = await collected(app, "names", files)
    for name, text in files.items():
        r = await call(app, TARA, "GET", f"courses/data101/assignments/names/submissions/{sam['id']}/file", params={"path": name})
        assert r.status_code == 200, (name, r.status_code, r.text[:200])
        assert r.content == text.encode()
        assert download_name(r.headers["Content-Disposition"]) == name


async def test_a_non_utf8_file_name_downloads(app, ready):
    raw = b"caf\xe9.txt"
    r = await release(app, "bytes", {"hw.ipynb": "{}\n"})
    assert r.status_code == 201
    folder = os.path.join(home(SAM), "data101", "bytes")
    with open(os.path.join(os.fsencode(folder), raw), "w") as f:
        f.write("latin-1 name\n")
    subprocess.run(["chown", "-R", f"{SAM}:", folder], check=True)
    r = await call(app, INES, "POST", "courses/data101/assignments/bytes/collect", json={"wait": True})
    sam = next(s for s in r.json()["submissions"] if s["student"] == SAM)
    name = os.fsdecode(raw)
    assert name in sam["paths"]
    url = f"courses/data101/assignments/bytes/submissions/{sam['id']}/file?path=caf%E9.txt"  # its bytes
    r = await call(app, TARA, "GET", url)
    assert r.status_code == 200, r.text[:300]
    assert r.content == b"latin-1 name\n"
    assert "filename*=UTF-8''caf%EF%BF%BD.txt" in r.headers["Content-Disposition"]


@pytest.mark.parametrize("source", ["/proc", "/proc/self", "/sys/kernel", "/dev", "LINK"])
async def test_a_release_source_in_a_kernel_interface_is_a_400(app, ready, source):
    if source == "LINK":  # the instructor's own link to /proc: resolved, refused the same
        source = os.path.join(home(INES), f"proc-{secrets.token_hex(2)}")
        os.symlink("/proc/self", source)
    r = await call(app, INES, "POST", "courses/data101/materials/kernel/releases", json={"source": source, "wait": True})
    assert r.status_code == 400, r.text[:300]
    assert "kernel interface" in r.json()["message"]


# -- 6: system accounts and accounts the hub did not create -------------------------------


def test_policy_refuses_root_system_and_foreign_accounts(tmp_path):
    policy = AccountPolicy()
    assert "root (uid 0)" in policy.refusal("root")
    assert "below UID_MIN" in policy.refusal("daemon")
    assert "below UID_MIN" in policy.refusal(SYS)
    assert "did not create" in policy.refusal(PLAIN)
    assert "did not create" in policy.refusal("nobody")  # uid 65534: above UID_MIN, not the hub's
    assert policy.refusal(SAM) is None  # made by the hub (ensure_system_user): in the group
    assert policy.refusal(f"{TAG}-nobody-yet") is None  # no account: the spawner creates it
    with pytest.raises(AccountRefused, match="allowed_system_accounts"):
        policy.check("daemon")
    allowed = AccountPolicy(allowed_system_accounts=["daemon", PLAIN])
    assert allowed.refusal("daemon") is None and allowed.refusal(PLAIN) is None
    assert allowed.refusal("root") is not None
    # a host whose regular accounts all belong to the roster's people
    trusting = AccountPolicy(refuse_unmanaged=False)
    assert trusting.refusal(PLAIN) is None and "below UID_MIN" in trusting.refusal("daemon")
    # UID_MIN comes from login.defs
    defs = tmp_path / "login.defs"
    defs.write_text("# comment\nSUB_UID_MIN 100000\nUID_MIN\t\t 60000\n")
    assert uid_min(str(defs)) == 60000
    assert "below UID_MIN 60000" in AccountPolicy(login_defs=str(defs)).refusal(SAM)
    assert uid_min(str(tmp_path / "missing")) == 1000


def test_accounts_the_hub_creates_join_its_group():
    login = f"{TAG}-new"
    with system_users([login]):
        assert MANAGED_GROUP in subprocess.run(["id", "-nG", login], capture_output=True, text=True).stdout.split()
        assert AccountPolicy().refusal(login) is None


def test_accounts_an_earlier_version_made_join_the_group():
    """Accounts made before the group existed carry the hub's comment: the
    next ensure_system_user adopts them; any other account stays refused."""
    earlier, other, system = f"{TAG}-early", f"{TAG}-other", f"{TAG}-sysc"
    comment = f"{TAG} earlier hub"
    try:
        useradd(earlier, "--comment", comment)
        useradd(other, "--comment", "someone else")
        useradd(system, "--system", "--comment", comment)
        assert "did not create" in AccountPolicy().refusal(earlier)
        for login in (earlier, other, system):
            assert ensure_system_user(login, skeleton="", comment=comment)[1] is False
        assert AccountPolicy().refusal(earlier) is None
        assert "did not create" in AccountPolicy().refusal(other)
        assert "below UID_MIN" in AccountPolicy().refusal(system)
        assert MANAGED_GROUP not in subprocess.run(["id", "-nG", system], capture_output=True, text=True).stdout.split()
    finally:
        for login in (earlier, other, system):
            userdel(login)


def test_roster_check_names_refused_accounts_with_their_lines(tmp_path, capsys):
    roster = tmp_path / "roster.yaml"
    roster.write_text(f"users:\n  daemon: {{}}\n  root: {{tier: root}}\n  {SAM}: {{}}\ncourses:\n  c1:\n    students: [{PLAIN}]\n")
    assert cli.main(["roster", "check", str(roster)]) == 1
    err = capsys.readouterr().err
    assert f"{roster}:2: 'daemon' is a system account" in err
    assert f"{roster}:3: 'root' is the system account of root" in err
    assert f"{roster}:7: '{PLAIN}' is an existing account the hub did not create" in err
    assert SAM not in err
    argv = ["roster", "check", str(roster), "--allow-system-account", "daemon", "--allow-system-account", PLAIN]
    assert cli.main(argv) == 1  # root is still refused
    err = capsys.readouterr().err
    assert "'root'" in err and "'daemon'" not in err
    roster.write_text(f"users:\n  {SAM}: {{}}\n")
    assert cli.main(["roster", "check", str(roster)]) == 0


async def test_no_delivery_into_system_or_foreign_accounts(app, ready):
    r = await release(app, "week1", {"hw1.ipynb": "hw1\n"})
    assert r.status_code == 201, r.text
    reports = {rep["student"]: rep for rep in r.json()["reports"]}
    for login, why in ((SYS, "below UID_MIN"), ("daemon", "below UID_MIN"), (PLAIN, "did not create")):
        assert not reports[login]["ok"]
        assert why in reports[login]["error"], reports[login]
    assert not os.path.exists(f"/tmp/{SYS}-home/data101")
    assert not os.path.exists(os.path.join(home(PLAIN), "data101"))
    assert not os.path.exists("/usr/sbin/data101")
    # the allow-list of the service names OKAY; the hub made SAM
    assert reports[OKAY]["ok"] and reports[SAM]["ok"]
    assert read(os.path.join(home(OKAY), "data101", "week1", "hw1.ipynb")) == "hw1\n"


async def test_no_collection_from_system_or_foreign_accounts(app, ready):
    os.makedirs(f"/tmp/{SYS}-home/data101/week1", exist_ok=True)
    write_tree(SYS, f"/tmp/{SYS}-home/data101/week1", {"secret.txt": "system account's file\n"})
    try:
        r = await call(app, INES, "POST", "courses/data101/assignments/week1/collect", json={"wait": True})
        assert r.status_code == 201, r.text
        rows = {s["student"]: s for s in r.json()["submissions"]}
        assert rows[SAM]["n_files"] == 1 and not rows[SAM]["error"]
        assert "below UID_MIN" in rows[SYS]["error"] and rows[SYS]["n_files"] == 0
        assert "did not create" in rows[PLAIN]["error"]
    finally:
        shutil.rmtree(f"/tmp/{SYS}-home/data101", ignore_errors=True)


@pytest.mark.parametrize("login", [SYS, PLAIN, "daemon"])
async def test_no_server_as_a_system_or_foreign_account(app, synced, login):
    r = await api_request(app, f"users/{login}/server", method="post")
    assert r.status_code == 403, r.text
    assert "refused" in r.json()["message"]
    assert not app.users[login].spawner.active


# -- 2: file modes; nothing of another student is readable --------------------------------


async def test_service_database_is_private(app, ready):
    assert (await release(app, "modes", {"a.txt": "a\n"})).status_code == 201
    assert stat.S_IMODE(os.stat(DATA_DIR).st_mode) == 0o711
    db_dir = os.path.join(DATA_DIR, "db")
    assert stat.S_IMODE(os.stat(db_dir).st_mode) == 0o700
    names = sorted(os.listdir(db_dir))
    assert names == ["classroom.sqlite", "classroom.sqlite-shm", "classroom.sqlite-wal"]
    for name in names:
        assert stat.S_IMODE(os.stat(os.path.join(db_dir, name)).st_mode) == 0o600, name
    assert not os.path.exists(os.path.join(DATA_DIR, "classroom.sqlite"))


async def test_collected_work_is_private_in_the_store(app, ready):
    files = {"hw.ipynb": "{}\n", "answer.txt": "sam's answer 42\n"}
    sam = await collected(app, "secret", files)
    assert sorted(sam["paths"]) == sorted(files)
    shas = {path: sha256_text(text) for path, text in files.items()}
    private = os.path.join(DATA_DIR, "store", "private")
    answer = os.path.join(private, shas["answer.txt"][:2], shas["answer.txt"][2:])
    # Eve, in another course, knows the hash (say from a leaked listing): she reads nothing
    got = as_user(EVE, PROBE, [[store_object(shas["answer.txt"]), "file"], [answer, "file"], [private, "dir"]])
    assert got == {}
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(answer).st_mode) == 0o400 and os.stat(answer).st_uid == 0
    assert not os.path.exists(store_object(shas["answer.txt"]))
    # the unchanged released notebook is in the released area: it tells nothing
    got = as_user(EVE, PROBE, [[store_object(shas["hw.ipynb"]), "file"]])
    assert list(got) == [store_object(shas["hw.ipynb"])]


async def test_graders_copy_and_feedback_read_private_objects_through_a_lent_copy(app, ready):
    sam = await collected(app, "lend", {"hw.ipynb": "sam's lend work\n"})
    r = await call(app, TARA, "POST", f"courses/data101/assignments/lend/submissions/{sam['id']}/copy")
    assert r.status_code == 200 and not r.json()["error"], r.text
    copy = os.path.join(home(TARA), "grading", "data101", "lend", SAM)
    assert read(os.path.join(copy, "hw.ipynb")) == "sam's lend work\n"
    write_tree(TARA, copy, {"comments.md": "well done\n"})
    r = await call(app, TARA, "POST", f"courses/data101/assignments/lend/feedback/{SAM}")
    assert r.status_code == 201, r.text
    returned = os.path.join(home(SAM), "data101", "lend", "feedback")
    assert read(os.path.join(returned, "comments.md")) == "well done\n"
    assert os.stat(os.path.join(returned, "comments.md")).st_uid == pwd.getpwnam(SAM).pw_uid
    feedback_sha = hashlib.sha256(b"well done\n").hexdigest()
    assert not os.path.exists(store_object(feedback_sha))  # feedback is private too
    assert os.listdir(os.path.join(DATA_DIR, "store", "lent")) == []  # lent copies are gone


def test_an_older_store_and_database_are_made_private(tmp_path):
    """A data folder laid out as before this change: the database in data_dir
    (0644), collected work among the released objects. One start fixes both."""
    from sqlalchemy import select

    from classroomhub.service.app import ClassroomService
    from classroomhub.service.db.models import Release, Submission

    folder = tmp_path / "old"
    first = ClassroomService()
    first.initialize(["--data-dir", str(folder)])
    store = first.store
    released, _ = store.add_bytes(b"released\n")
    submitted, _ = store.add_bytes(b"submitted answer\n")  # where an older service put it
    both, _ = store.add_bytes(b"released and handed in unchanged\n")
    meta = {"size": 1, "mode": 0o644}
    with first.sessions() as db:
        db.add(Release(course="c", material="m", version=1, created_by="i", source="/x", skipped=[],
                       files={"a": {"sha256": released, **meta}, "b": {"sha256": both, **meta}}))
        db.add(Submission(course="c", material="m", student="s", kind="collected",
                          files={"x": {"sha256": submitted, **meta}, "b": {"sha256": both, **meta}}))
        db.commit()
    first.sessions.kw["bind"].dispose()
    # the older layout: database beside the store, readable by all; no private area yet
    for suffix in ("", "-wal", "-shm"):
        if (folder / "db" / f"classroom.sqlite{suffix}").exists():
            os.rename(folder / "db" / f"classroom.sqlite{suffix}", folder / f"classroom.sqlite{suffix}")
            os.chmod(folder / f"classroom.sqlite{suffix}", 0o644)
    shutil.rmtree(folder / "db")
    shutil.rmtree(store.private)
    old_db = folder / "classroom.sqlite"

    service = ClassroomService()
    service.initialize(["--data-dir", str(folder)])
    try:
        assert not old_db.exists()
        new_db = folder / "db" / "classroom.sqlite"
        assert stat.S_IMODE(new_db.stat().st_mode) == 0o600
        assert stat.S_IMODE((folder / "db").stat().st_mode) == 0o700
        assert os.path.exists(service.store.area_path(released, False))
        assert os.path.exists(service.store.area_path(both, False))
        assert not os.path.exists(service.store.area_path(submitted, False))
        assert stat.S_IMODE(os.stat(service.store.area_path(submitted, True)).st_mode) == 0o400
        with service.sessions() as db:
            assert db.scalars(select(Submission.student)).all() == ["s"]
        assert service.store.object_path(submitted) == service.store.area_path(submitted, True)
    finally:
        service.sessions.kw["bind"].dispose()


# -- a real hub from the example config, walked as another student ------------------------


@pytest.fixture
def example_hub(tmp_path):
    """The example config in a real ``jupyterhub``, state and service data in
    folders any student can reach (0755 parents), plus an admin service
    token for this test to make people's tokens."""
    from fake_github import FakeGitHub

    top = f"/tmp/{TAG}-example"
    os.makedirs(top, mode=0o755)
    os.chmod(top, 0o755)
    state, service_dir = os.path.join(top, "state"), os.path.join(top, "service")
    os.makedirs(state, mode=0o755)
    people = [f"{TAG}-wi", f"{TAG}-ws", EVE]
    roster = os.path.join(state, "roster.yaml")
    with open(roster, "w") as f:
        f.write(f"users:\n  {people[0]}: {{tier: admin}}\ncourses:\n  data101:\n    instructors: [{people[0]}]\n"
                f"    students: [{people[1]}]\n  bio202:\n    students: [{EVE}]\n")
    token = secrets.token_hex(16)
    config = tmp_path / "config.py"
    config.write_text(
        f"exec(compile(open({str(EXAMPLE)!r}).read(), {str(EXAMPLE)!r}, 'exec'))\n"
        f"c.JupyterHub.services.append({{'name': 'h6-probe', 'api_token': {token!r}}})\n"
        "c.JupyterHub.load_roles.append({'name': 'h6-probe', 'services': ['h6-probe'],"
        " 'scopes': ['tokens', 'list:users', 'admin:users']})\n"
    )
    log_path = tmp_path / "hub.log"
    with FakeGitHub() as github, system_users(people):
        for number, login in enumerate(people, 4200):
            github.add_user(login, number)
        url, env = hub_env(Path(state), github, free_ports(1)[0], CLASSROOMHUB_SERVICE_DIR=service_dir)
        command = [sys.executable, "-m", "jupyterhub", "-f", str(config)]
        ready = url + "services/classroom/api/openapi.json"
        try:
            with running_hub(command, state, env, log_path, ready, ok=(200, 302, 403), timeout=90):

                def token_of(login):
                    r = requests.post(url + f"hub/api/users/{login}/tokens", headers={"Authorization": f"token {token}"},
                                      json={"note": "h6"}, timeout=10)
                    assert r.status_code == 201, r.text
                    return r.json()["token"]

                yield {"url": url, "state": state, "service": service_dir, "people": people, "token_of": token_of,
                       "log": log_path, "github": github}
        finally:
            shutil.rmtree(top, ignore_errors=True)


def test_another_student_reads_nothing_the_hub_and_service_wrote(example_hub):
    hub = example_hub
    instructor, student = hub["people"][:2]
    api = hub["url"] + "services/classroom/api/"

    def call_as(login, method, path, **kwargs):
        headers = {"Authorization": f"token {hub['token_of'](login)}"}
        return requests.request(method, api + path, headers=headers, timeout=120, **kwargs)

    # the student logs in through GitHub once: the hub pins their GitHub id in its state
    _, r, _ = oauth_login(hub, hub["github"], student)
    assert r.status_code == 302, hub["log"].read_text()[-3000:]
    # the roster's people as the hub knows them (synced at start)
    for _ in range(100):
        r = call_as(instructor, "GET", "courses/data101")
        if r.status_code == 200:
            break
        time.sleep(0.3)
    assert r.status_code == 200, r.text
    # a release (one shared dataset too), the student's work collected, feedback returned
    released = {"hw.ipynb": "{}\n", "notes.md": "released notes\n", "big.csv": "1,2,3\n"}
    src = material(instructor, {k: released[k] for k in ("hw.ipynb", "notes.md")})
    r = call_as(instructor, "POST", "courses/data101/materials/hw/releases", json={"source": src, "wait": True})
    assert r.status_code == 201, r.text
    data = material(instructor, {"big.csv": released["big.csv"]})
    r = call_as(instructor, "POST", "courses/data101/materials/data/releases", json={"source": data, "wait": True, "shared": True})
    assert r.status_code == 201, r.text
    write_tree(student, os.path.join(home(student), "data101", "hw"), {"hw.ipynb": '{"answer": 42}\n', "mine.txt": "my own\n"})
    r = call_as(instructor, "POST", "courses/data101/assignments/hw/collect", json={"wait": True})
    assert r.status_code == 201, r.text
    submission = next(s for s in r.json()["submissions"] if s["student"] == student)
    assert submission["n_files"] == 3, submission
    r = call_as(instructor, "POST", f"courses/data101/assignments/hw/submissions/{submission['id']}/copy")
    assert r.status_code == 200, r.text
    write_tree(instructor, os.path.join(home(instructor), "grading", "data101", "hw", student), {"grade.txt": "A\n"})
    r = call_as(instructor, "POST", f"courses/data101/assignments/hw/feedback/{student}")
    assert r.status_code == 201, r.text

    # every file, folder and socket the hub and the service wrote, tried as Eve
    found = everything_under(hub["state"], hub["service"])
    kinds = {kind for _, kind in found}
    assert len(found) > 20 and "sock" in kinds, found
    names = {os.path.basename(p) for p, _ in found}
    expected = {"jupyterhub.sqlite", "jupyterhub_cookie_secret", "classroomhub-identities.json", "classroom.sqlite", "worker.sock"}
    assert expected <= names, names
    got = as_user(EVE, PROBE, found)

    released = {sha256_text(text) for text in released.values()}
    store = os.path.join(hub["service"], "store")

    def may_read(path, kind):
        """Released content only: objects named by a release, and the shared datasets' trees
        (not the list of them: ``shared/`` itself tells which courses have which datasets)."""
        if path.startswith(os.path.join(store, "shared") + os.sep):
            return kind == "dir" or sha256_of(path) in released
        if kind == "file" and path.startswith(os.path.join(store, "objects") + os.sep):
            return sha256_of(path) in released and os.path.basename(os.path.dirname(path)) + os.path.basename(path) == sha256_of(path)
        return False

    leaked = sorted(path for path, kind in got.items() if not may_read(path, kind))
    assert leaked == [], leaked
    # the check is not vacuous: released objects were reachable, the student's own work was not
    assert any(p.startswith(os.path.join(store, "objects")) for p in got)
    assert any(p.startswith(os.path.join(store, "shared") + os.sep) and kind == "file" for p, kind in got.items())
    mine = hashlib.sha256(b"my own\n").hexdigest()
    assert os.path.exists(os.path.join(store, "private", mine[:2], mine[2:]))
