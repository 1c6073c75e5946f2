"""The classroom service's trust boundary, attacked with real tokens.

A real hub and proxy, the managed classroom service, real system users and
real single-user servers (jupyterhub-singleuser run by ClassroomSpawner as
each person). The hostile student plants a ``~/.jupyter`` config file, which
their own server executes: it writes down every OAuth token a visitor's
browser hands the server, and the server's own API token. Those tokens, and
tokens made with too few scopes, are then played against the service.

People: PAT is the instructor of alpha and a student of beta (the
staff-in-one-course, student-in-another case); SAM is alpha's hostile
student; OPAL is of the admin tier (no course); TARA is alpha's TA; IVY
teaches beta.
"""

import asyncio
import html
import os
import re
import secrets
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

import pytest
import requests
from jupyterhub import orm
from jupyterhub.tests.utils import api_request, public_url
from jupyterhub.utils import random_port

from classroomhub import cli
from classroomhub.spawner import ClassroomSpawner

from conftest import login, write_roster
from service_hub import (
    data_dir,
    home,
    hub_config,
    material,
    read,
    service_url,
    write_tree,
)

pytestmark = pytest.mark.root("creates system users and runs their servers")

TAG = "h4" + secrets.token_hex(2)
PAT, SAM, SUE, OPAL, TARA, IVY = (f"{TAG}-{n}" for n in ("pat", "sam", "sue", "opal", "tara", "ivy"))
PEOPLE = [PAT, SAM, SUE, OPAL, TARA, IVY]
PORT = random_port()
DATA_DIR = data_dir(TAG)
ACCESS = "access:services!service=classroom"

ROSTER = f"""\
users:
  admin: {{tier: root}}
  {OPAL}: {{tier: admin}}
courses:
  alpha:
    instructors: [{PAT}]
    tas: [{TARA}]
    students: [{SAM}, {SUE}]
  beta:
    instructors: [{IVY}]
    students: [{PAT}, {SUE}]
"""

# What a hostile student puts in ~/.jupyter: Python their own server runs at
# start. It keeps every OAuth token a visitor's browser gives the server, and
# the server's own token.
STEALER = """\
import os
from jupyterhub.services import auth

with open(os.path.expanduser("~/server-token"), "w") as f:
    f.write(os.environ["JUPYTERHUB_API_TOKEN"])

_real = auth.HubOAuth._token_for_code


async def _keep(self, code, code_verifier=None):
    token = await _real(self, code, code_verifier)
    with open(os.path.expanduser("~/stolen-tokens"), "a") as f:
        f.write(token + "\\n")
    return token


auth.HubOAuth._token_for_code = _keep
"""


def HUB_CONFIG(c):
    hub_config(c, DATA_DIR, PORT)
    c.JupyterHub.spawner_class = ClassroomSpawner
    c.Spawner.cmd = [os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")]
    c.Spawner.start_timeout = 90
    c.Spawner.http_timeout = 90
    c.ClassroomSpawner.enforcement = "none"  # limits are not what this module tests
    c.ClassroomSpawner.cgroup_parent = f"{TAG}-hub"
    # MockHub serves under its own prefix (its bind_url's path)
    c.ClassroomSpawner.classroom_service_url = f"http://127.0.0.1:{PORT}/@/space%20word/services/classroom/"


@pytest.fixture(scope="module", autouse=True)
def accounts(service_world):
    for who in (PAT, IVY):  # what an instructor keeps to themselves
        write_tree(who, os.path.join(home(who), "private"), {"answers.txt": "the answers\n"})
        os.chmod(os.path.join(home(who), "private"), 0o700)
    for who in (SAM, PAT):
        folder = os.path.join(home(who), ".jupyter")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "jupyter_server_config.py"), "w") as f:
            f.write(STEALER)
        subprocess.run(["chown", "-R", f"{who}:", folder], check=True)


# -- helpers -------------------------------------------------------------------


def token_of(app, who, scopes=None, note="h4 test"):
    """A token of *who*, as the hub's token page or `jupyterhub token` makes it
    (*scopes* None: JupyterHub's default, all the owner's rights)."""
    kwargs = {} if scopes is None else {"scopes": scopes}
    return app.users[who].new_api_token(note=note, **kwargs)


async def service(app, token, method, path, **kwargs):
    headers = {"Authorization": f"token {token}"} if token else {}
    headers.update(kwargs.pop("headers", {}))
    url = service_url(app, "api/" + path)
    return await asyncio.to_thread(requests.request, method, url, headers=headers, timeout=60, **kwargs)


async def hub_api(app, token, method, path, **kwargs):
    url = public_url(app) + "hub/api/" + path
    headers = {"Authorization": f"token {token}", "Sec-Fetch-Mode": "cors"}
    return await asyncio.to_thread(requests.request, method, url, headers=headers, timeout=60, **kwargs)


def due_in(days):
    return (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0).isoformat()


async def start_server(app, who):
    spawner = app.users[who].spawner
    if spawner.ready:
        return spawner
    r = await api_request(app, f"users/{who}/server", method="post")
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + 120
    while not spawner.ready:
        assert time.monotonic() < deadline, f"the server of {who} did not start"
        await asyncio.sleep(0.2)
    return spawner


async def stop_server(app, who):
    spawner = app.users[who].spawner
    if spawner.active:
        await api_request(app, f"users/{who}/server", method="delete")
        deadline = time.monotonic() + 60
        while spawner.active and time.monotonic() < deadline:
            await asyncio.sleep(0.2)


#: what the module's once-only fixtures made
MADE = {}


@pytest.fixture(scope="module", autouse=True)
async def stop_servers(app):
    yield
    for who in (SAM, PAT):
        await stop_server(app, who)


@pytest.fixture
async def servers(app, ready, course):
    """SAM's and PAT's real servers (each running the planted config),
    started after alpha's release (SAM's sync delivers it)."""
    return {who: await start_server(app, who) for who in (SAM, PAT)}


@pytest.fixture
async def course(app, ready):
    """alpha's homework, released by PAT, due in a week, with SUE's
    submission; beta's lab, due in a week (made once per module)."""
    if "course" not in MADE:
        await make_courses(app)
        MADE["course"] = True


async def make_courses(app):
    pat = token_of(app, PAT)
    src = material(PAT, {"hw.ipynb": "{}\n", "answers.txt": "secret\n"})
    r = await service(app, pat, "POST", "courses/alpha/materials/hw/releases", json={"source": src, "wait": True})
    assert r.status_code == 201, r.text
    r = await service(app, pat, "PUT", "courses/alpha/assignments/hw", json={"due": due_in(7), "late_seconds": 0})
    assert r.status_code == 200, r.text
    sue = token_of(app, SUE)
    r = await service(app, sue, "POST", "courses/alpha/assignments/hw/submit", json={})
    assert r.status_code == 201, r.text
    ivy = token_of(app, IVY)
    src = material(IVY, {"lab.ipynb": "{}\n"})
    r = await service(app, ivy, "POST", "courses/beta/materials/lab/releases", json={"source": src, "wait": True})
    assert r.status_code == 201, r.text
    r = await service(app, ivy, "PUT", "courses/beta/assignments/lab", json={"due": due_in(7)})
    assert r.status_code == 200, r.text
    r = await service(app, sue, "POST", "courses/beta/assignments/lab/submit", json={})
    assert r.status_code == 201, r.text


async def sue_submission(app, course_id="alpha"):
    """The id of SUE's submission in *course_id* (read with the root tier's token)."""
    material = "hw" if course_id == "alpha" else "lab"
    r = await service(app, token_of(app, "admin"), "GET", f"courses/{course_id}/assignments/{material}/submissions")
    row = next(s for s in r.json()["students"] if s["student"] == SUE)
    return row["submissions"][0]["id"]


def private_folder(course_id):
    """A folder the course's instructor keeps to themselves (mode 0700)."""
    return os.path.join(home(PAT if course_id == "alpha" else IVY), "private")


def staff_requests(course_id, submission=1, student=SUE):
    """What course staff may do in *course_id* (to *student* and their
    *submission*): (method, path, body)."""
    material = "hw" if course_id == "alpha" else "lab"
    base = f"courses/{course_id}/assignments/{material}"
    return [
        ("GET", f"courses/{course_id}/audit", None),
        ("PUT", base, {"due": due_in(-1)}),
        ("PUT", f"{base}/extensions/{student}", {"due": due_in(30)}),
        ("POST", f"{base}/collect", {}),
        # the instructor's private folder, released into the students' homes
        ("POST", f"courses/{course_id}/materials/evil/releases", {"source": private_folder(course_id), "wait": True}),
        ("GET", f"{base}/submissions.zip", None),
        ("GET", f"{base}/submissions/{submission}/file?path=answers.txt", None),
        ("PUT", f"{base}/graded/{student}", {"submission": submission}),
        ("POST", f"{base}/feedback/{student}", {}),
    ]


async def assert_no_staff_powers(app, token, course_id, refusal=None):
    """Every staff request in *course_id* with *token* is refused (403, with
    *refusal* in the message if given) and the course is left as it was."""
    submission = await sue_submission(app, course_id)
    before = (await service(app, token_of(app, "admin"), "GET", f"courses/{course_id}/audit")).json()["events"]
    for method, path, body in staff_requests(course_id, submission):
        r = await service(app, token, method, path, **({"json": body} if body is not None else {}))
        assert r.status_code == 403, f"{method} {path}: {r.status_code} {r.text[:300]}"
        if refusal:
            assert refusal in r.json()["message"], r.text
    after = (await service(app, token_of(app, "admin"), "GET", f"courses/{course_id}/audit")).json()["events"]
    assert after == before
    for student in (SAM, SUE, PAT):
        assert not os.path.exists(os.path.join(home(student), course_id, "evil"))
    r = await service(app, token_of(app, "admin"), "GET", f"courses/{course_id}/assignments")
    assert all(datetime.fromisoformat(a["due"]) > datetime.now(timezone.utc) for a in r.json()["assignments"])


async def open_server_as(app, visitor, owner):
    """*visitor* logs in to the hub and opens *owner*'s live server in their
    browser (OAuth, confirming the hub's authorization page)."""
    session, r = await login(app, visitor)
    assert r.status_code == 302, r.text
    r = await session.get(public_url(app) + f"user/{owner}/lab", allow_redirects=True)
    if "oauth2/authorize" in r.url and r.status_code == 200 and 'name="scopes"' in r.text:
        scopes = [html.unescape(s) for s in re.findall(r'name="scopes" value="([^"]*)"', r.text)]
        xsrf = html.unescape(re.search(r'name="_xsrf" value="([^"]*)"', r.text).group(1))
        r = await session.post(r.url, data={"_xsrf": xsrf, "scopes": scopes}, allow_redirects=True)
    return session, r


def stolen(owner):
    path = os.path.join(home(owner), "stolen-tokens")
    return read(path).split() if os.path.exists(path) else []


# -- the token-theft chain -----------------------------------------------------


@pytest.mark.parametrize(
    "visitor, owner, course_id",
    [
        (PAT, SAM, "alpha"),  # alpha's instructor opens their student's server
        (OPAL, SAM, "alpha"),  # the admin tier may open every student's server
        ("admin", SAM, "alpha"),  # and so may root
        (IVY, PAT, "beta"),  # beta's instructor opens PAT's, who studies beta
    ],
    ids=["instructor", "admin-tier", "root", "instructor-of-staff-member"],
)
async def test_token_a_visitor_gives_a_students_server_is_refused(
    app, ready, course, servers, visitor, owner, course_id
):
    """Issue #12.1: staff open a student's live server; the server keeps the
    OAuth token their browser hands it; the student plays it against the
    service. Refused on every staff action, and on everything else too."""
    known = set(stolen(owner))
    _, r = await open_server_as(app, visitor, owner)
    assert r.status_code == 200, (r.url, r.status_code, r.text[:300])
    new = [t for t in stolen(owner) if t not in known]
    assert len(new) == 1, "the student's server did not receive the visitor's token"
    (token,) = new
    # it is the visitor's live token
    r = await hub_api(app, token, "GET", "user")
    assert r.status_code == 200 and r.json()["name"] == visitor, r.text
    await assert_no_staff_powers(app, token, course_id, refusal="does not give access to the classroom service")
    for method, path in [("GET", "courses"), ("GET", "courses/alpha"), ("POST", "sync")]:
        r = await service(app, token, method, path)
        assert r.status_code == 403, f"{method} {path}: {r.text}"


async def test_a_servers_own_token_is_refused_even_for_its_owner(app, ready, course, servers):
    """PAT teaches alpha and studies beta: code running in PAT's server (a
    beta notebook, say, or code beta's instructor runs there after opening
    it) holds the server's token; it cannot act for PAT in alpha."""
    token = read(os.path.join(home(PAT), "server-token"))
    assert token == servers[PAT].api_token
    await assert_no_staff_powers(app, token, "alpha", refusal="does not give access to the classroom service")
    r = await service(app, token, "GET", "courses")
    assert r.status_code == 403


async def test_a_students_server_token_reaches_nothing(app, ready, course, servers):
    token = read(os.path.join(home(SAM), "server-token"))
    for method, path in [("GET", "courses"), ("POST", "sync"), ("GET", "courses/alpha/assignments/hw/submissions")]:
        r = await service(app, token, method, path)
        assert r.status_code == 403, r.text


# -- tokens with too few scopes --------------------------------------------------


@pytest.mark.parametrize("who", [PAT, OPAL, "admin", SAM])
async def test_token_made_with_no_scopes_is_refused(app, ready, course, who):
    """A token made through the hub's API with `scopes: []` names its owner
    but grants nothing: the service must not treat it as the owner."""
    r = await hub_api(app, token_of(app, who), "POST", f"users/{who}/tokens", json={"scopes": [], "note": "h4"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    r = await hub_api(app, token, "GET", "user")
    assert r.json()["name"] == who  # the hub identifies it
    r = await service(app, token, "GET", "courses")
    assert r.status_code == 403, r.text
    assert "does not give access to the classroom service" in r.json()["message"]
    if who != SAM:
        await assert_no_staff_powers(app, token, "alpha")


#: staff_requests' actions, in its order
STAFF_IDS = ["audit", "due", "extension", "collect", "release", "zip", "file", "graded", "feedback"]


@pytest.mark.parametrize("index", range(len(STAFF_IDS)), ids=STAFF_IDS)
async def test_service_access_alone_carries_no_staff_powers(app, ready, course, index):
    """PAT's token with access to the service but without the classroom's
    custom scopes: PAT as a mere member of alpha."""
    token = token_of(app, PAT, scopes=[ACCESS])
    actions = staff_requests("alpha", await sue_submission(app))
    assert len(actions) == len(STAFF_IDS)
    method, path, body = actions[index]
    r = await service(app, token, method, path, **({"json": body} if body is not None else {}))
    assert r.status_code == 403, r.text
    r = await service(app, token, "GET", "courses/alpha")
    assert r.status_code == 200 and "members" not in r.json()
    r = await service(app, token, "GET", "courses/alpha/assignments/hw/submissions")
    assert [s["student"] for s in r.json()["students"]] == [PAT]


async def test_admin_tier_needs_its_scopes_to_see_other_courses(app, ready, course):
    token = token_of(app, OPAL, scopes=[ACCESS])
    r = await service(app, token, "GET", "courses")
    assert r.json()["courses"] == []
    r = await service(app, token, "GET", "courses/alpha")
    assert r.status_code == 403
    full = token_of(app, OPAL)
    r = await service(app, full, "GET", "courses")
    assert [c["id"] for c in r.json()["courses"]] == ["alpha", "beta"]
    r = await service(app, full, "GET", "courses/alpha/audit")
    assert r.status_code == 200


# -- staff in one course, student in another -----------------------------------


async def test_staff_powers_do_not_cross_courses(app, ready, course):
    """PAT's full token: staff in alpha, a student in beta."""
    token = token_of(app, PAT)
    r = await service(app, token, "GET", "courses/alpha/audit")
    assert r.status_code == 200, r.text
    await assert_no_staff_powers(app, token, "beta")
    r = await service(app, token, "GET", "courses/beta/assignments/lab/submissions")
    assert [s["student"] for s in r.json()["students"]] == [PAT]


async def test_staff_scope_of_another_course_cannot_be_asked_for(app, ready, course):
    """The hub issues no token with a scope its owner lacks: PAT cannot
    mint beta's staff scope, SAM no staff scope at all."""
    for who, scope in [
        (PAT, "custom:classroom:instruct!group=course-beta-students"),
        (PAT, "custom:classroom:grade"),
        (SAM, "custom:classroom:grade!group=course-alpha-students"),
        (TARA, "custom:classroom:instruct!group=course-alpha-students"),
    ]:
        r = await hub_api(app, token_of(app, who), "POST", f"users/{who}/tokens", json={"scopes": [ACCESS, scope]})
        assert r.status_code == 400 and "not held by" in r.json()["message"], f"{who} {scope}: {r.text}"


async def test_scoped_token_for_one_course_stays_in_it(app, ready, course):
    """PAT's CLI token scoped to alpha (as docs/access.md shows) works there only."""
    scopes = [ACCESS, "custom:classroom:instruct!group=course-alpha-students"]
    token = token_of(app, PAT, scopes=scopes)
    r = await service(app, token, "GET", "courses/alpha/audit")
    assert r.status_code == 200, r.text
    # instruct without grade: no other student's work
    r = await service(app, token, "GET", "courses/alpha/assignments/hw/submissions.zip")
    assert r.status_code == 403


async def test_staff_scope_without_service_access_is_refused(app, ready, course):
    """The custom scope alone does not open the door: the service's access
    scope is what JupyterHub grants for using a service at all."""
    token = token_of(app, PAT, scopes=["custom:classroom:instruct!group=course-alpha-students"])
    await assert_no_staff_powers(app, token, "alpha", refusal="does not give access to the classroom service")


async def test_ta_grades_but_does_not_instruct(app, ready, course):
    token = token_of(app, TARA)
    r = await service(app, token, "GET", "courses/alpha/assignments/hw/submissions")
    assert sorted(s["student"] for s in r.json()["students"]) == sorted([SAM, SUE])
    for method, path, body in staff_requests("alpha", await sue_submission(app))[:5]:
        r = await service(app, token, method, path, **({"json": body} if body is not None else {}))
        assert r.status_code == 403, f"{method} {path}: {r.text}"


async def test_demoted_instructor_loses_staff_powers_at_once(app, ready, course, roster_file):
    """The roster is the second gate: a token keeps its scopes in the
    service's cache for minutes, the roster change wins within seconds."""
    token = token_of(app, PAT)
    r = await service(app, token, "GET", "courses/alpha/audit")
    assert r.status_code == 200
    write_roster(roster_file, ROSTER.replace(f"instructors: [{PAT}]", "instructors: []").replace(
        f"students: [{SAM}, {SUE}]", f"students: [{SAM}, {SUE}, {PAT}]"))
    try:
        await app.authenticator.sync_roster()
        deadline = time.monotonic() + 10
        while (await service(app, token, "GET", "courses/alpha/audit")).status_code != 403:
            assert time.monotonic() < deadline, "the demoted instructor still reads the audit log"
            await asyncio.sleep(0.2)
    finally:
        write_roster(roster_file, ROSTER)
        await app.authenticator.sync_roster()
    await asyncio.sleep(0.5)


# -- XSRF -------------------------------------------------------------------------


@pytest.fixture
async def browser_session(app, ready, course):
    """PAT logged in to the service's pages (the hub's OAuth, cookies only)."""
    if "session" not in MADE:
        session, _ = await login(app, PAT)
        r = await session.get(service_url(app, "courses/alpha"))
        assert r.status_code == 200 and "alpha" in r.text, r.text[:300]
        MADE["session"] = session
    return MADE["session"]


@pytest.mark.parametrize("authorization", [None, "token bogus", "Basic Zm9vOmJhcg==", "Bearer x"])
async def test_cookie_request_without_xsrf_is_refused_whatever_authorization_says(
    app, browser_session, authorization
):
    """Issue #12.5: a cross-site form or script posts with the victim's
    cookie and an Authorization header that authenticates nothing."""
    r = await service(app, token_of(app, "admin"), "PUT", "courses/alpha/assignments/hw", json={"due": due_in(7)})
    assert r.status_code == 200, r.text
    headers = {"Sec-Fetch-Mode": "cors"}
    if authorization:
        headers["Authorization"] = authorization
    url = service_url(app, "api/courses/alpha/assignments/hw")
    r = await browser_session.put(url, json={"due": due_in(-1)}, headers=headers)
    assert r.status_code == 403, r.text
    r = await service(app, token_of(app, "admin"), "GET", "courses/alpha/assignments/hw")
    assert datetime.fromisoformat(r.json()["due"]) > datetime.now(timezone.utc)


async def test_cookie_request_with_xsrf_and_the_pages_staff_scopes_work(app, browser_session):
    """The pages' own requests: cookie + XSRF token, staff scopes of alpha only."""
    prefix = urlparse(service_url(app)).path
    xsrf = next(c.value for c in browser_session.cookies if c.name == "_xsrf" and c.path.startswith(prefix))
    headers = {"Sec-Fetch-Mode": "cors", "X-XSRFToken": xsrf}
    due = due_in(8)
    url = service_url(app, "api/courses/alpha/assignments/hw")
    r = await browser_session.put(url, json={"due": due}, headers=headers)
    assert r.status_code == 200, r.text
    r = await browser_session.get(service_url(app, "api/courses/alpha/audit"))
    assert r.status_code == 200, r.text
    r = await browser_session.get(service_url(app, "api/courses/beta/audit"))
    assert r.status_code == 403


# -- what must keep working --------------------------------------------------------


async def test_late_joiner_sync_works_without_the_servers_token(app, ready, course, servers):
    """SAM's server started after the release: the spawner's sync (a
    one-call token, deleted after) delivered it; no sync token is left."""
    assert read(os.path.join(home(SAM), "alpha", "hw", "hw.ipynb")) == "{}\n"
    left = app.db.query(orm.APIToken).filter(orm.APIToken.note == "classroom sync before start").count()
    assert left == 0


async def test_cli_with_a_token_of_the_documented_scopes(app, ready, course, capsys):
    hub_url = public_url(app).rstrip("/")
    scopes = [
        ACCESS,
        "custom:classroom:instruct!group=course-alpha-students",
        "custom:classroom:grade!group=course-alpha-students",
    ]
    src = material(PAT, {"cli.ipynb": "{}\n"})
    argv = ["release", "alpha", "cli-wk", "--from", src, "--hub-url", hub_url, "--token", token_of(app, PAT, scopes)]
    assert await asyncio.to_thread(cli.main, argv) == 0, capsys.readouterr()
    argv[-1] = token_of(app, PAT, [ACCESS])
    assert await asyncio.to_thread(cli.main, argv) == 1
    assert "Only instructors" in capsys.readouterr().err
