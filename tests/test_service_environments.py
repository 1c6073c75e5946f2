"""Shared environments through the classroom service: its REST API and its
pages, next to a real hub, proxy and managed service (as test_service.py),
building real environments with uv from a small real package (``six``) as
real system users use them, and the pages in headless Chromium.

uv's cache is the checkout's ``.state/uv-cache``, as in
test_environments.py: after a first run the builds download nothing.
"""

import asyncio
import json
import os
import secrets
import signal
import subprocess
import time

import pytest
import requests
from jupyterhub.tests.mocking import MockHub
from jupyterhub.utils import random_port

from browser import open_as
from classroomhub.environments.rights import NotAllowed, check_may_change, check_may_remove, may_see
from classroomhub.environments.spec import EnvironmentSpec
from service_hub import call, data_dir, hub_config, service_url

pytestmark = pytest.mark.root("creates system users and works as them")

HERE = os.path.dirname(os.path.abspath(__file__))
UV_CACHE = os.path.join(os.path.dirname(HERE), ".state", "uv-cache")
TAG = "es" + secrets.token_hex(2)
INES, IVAN, TARA, SAM, BEA, ADA = (f"{TAG}-{n}" for n in ("ines", "ivan", "tara", "sam", "bea", "ada"))
PEOPLE = [INES, IVAN, TARA, SAM, BEA, ADA]
PORT = random_port()
DATA_DIR = data_dir(TAG)
ENVS = os.path.join(DATA_DIR, "environments")
# environment names: the module's tag keeps concurrent runs apart
DATA_ENV, HUB_ENV, PAGE_ENV = f"{TAG}-data", f"{TAG}-hub", f"{TAG}-page"
BUILD_TIMEOUT = 300

ROSTER = f"""\
users:
  admin: {{tier: root}}
  {ADA}: {{tier: admin}}
courses:
  data101:
    instructors: [{INES}]
    tas: [{TARA}]
    students: [{SAM}]
  bio202:
    instructors: [{IVAN}]
    students: [{BEA}]
"""


def HUB_CONFIG(c):
    hub_config(c, DATA_DIR, PORT, f"--EnvironmentManager.cache_dir={UV_CACHE}")


@pytest.fixture(scope="module", autouse=True)
def uv_cache():
    os.makedirs(UV_CACHE, exist_ok=True)


async def api(who, method, path, **kwargs):
    """A request to the service's API with *who*'s own token (the module's one hub)."""
    return await call(MockHub.instance(), who, method, path, **kwargs)


async def wait_for_build(who, build, timeout=BUILD_TIMEOUT):
    """The build (as *who* sees it) once it has ended."""
    deadline = time.monotonic() + timeout
    path = f"environments/{build['environment']}/builds/{build['id']}"
    while True:
        r = await api(who, "GET", path)
        assert r.status_code == 200, r.text
        if r.json()["state"] in ("succeeded", "failed"):
            return r.json()
        assert time.monotonic() < deadline, f"build {path} did not end: {r.json()['state']}"
        await asyncio.sleep(0.5)


def run_as(login, *cmd):
    return subprocess.run(["runuser", "-u", login, "--", *cmd], capture_output=True, text=True, timeout=120)


# -- the rules alone (no hub) ---------------------------------------------------------


def holds_for(*courses, everything=False):
    return lambda course: everything if course is None else everything or course in courses


@pytest.mark.parametrize(
    "tier, courses, holds, audience, allowed",
    [
        ("root", {}, holds_for(everything=True), ["everyone"], True),
        ("admin", {}, holds_for(everything=True), ["tier:power"], True),
        ("admin", {}, holds_for(), ["everyone"], False),  # the roster without the scope
        ("student", {"data101": "instructor"}, holds_for("data101"), ["course:data101"], True),
        ("student", {"data101": "instructor"}, holds_for("data101"), ["everyone"], False),
        ("student", {"data101": "instructor"}, holds_for("data101"), ["tier:student"], False),
        ("student", {"data101": "instructor"}, holds_for("data101"), ["course:data101", "course:bio202"], False),
        ("student", {"data101": "instructor"}, holds_for(), ["course:data101"], False),  # the role without the scope
        ("student", {"data101": "ta"}, holds_for("data101"), ["course:data101"], False),
        ("student", {"data101": "student"}, holds_for("data101"), ["course:data101"], False),
        ("power", {}, holds_for(), ["tier:power"], False),
    ],
)
def test_who_may_create_and_update(tier, courses, holds, audience, allowed):
    if allowed:
        check_may_change(tier, courses, holds, audience, "create environments")
    else:
        with pytest.raises(NotAllowed):
            check_may_change(tier, courses, holds, audience, "create environments")


def test_only_the_staff_tiers_remove_and_everyone_sees_what_they_may_use():
    check_may_remove("admin", holds_for(everything=True), "x")
    with pytest.raises(NotAllowed, match="admin and root"):
        check_may_remove("student", holds_for("data101"), "x")
    spec = EnvironmentSpec("x", ["six"], audience=["course:data101"])
    assert may_see(spec, "student", {"data101": "student"}, holds_for())
    assert may_see(spec, "student", {"data101": "ta"}, holds_for())
    assert not may_see(spec, "student", {"bio202": "instructor"}, holds_for("bio202"))
    assert not may_see(spec, "root", {}, holds_for())  # root's token without the scope: what root may use
    assert may_see(spec, "root", {}, holds_for(everything=True))


# -- through the API ------------------------------------------------------------------


async def test_a_real_build_through_the_api_gives_a_usable_version(app, ready):
    r = await api(INES, "POST", "environments", json={"name": DATA_ENV, "packages": ["six"], "audience": ["course:data101"]})
    assert r.status_code == 202, r.text
    build = r.json()
    assert (build["environment"], build["action"], build["by"], build["state"]) == (DATA_ENV, "create", INES, "queued")
    assert build["url"].endswith(f"api/environments/{DATA_ENV}/builds/{build['id']}")

    # the service answers while the installer works
    slowest, seen_running = 0.0, False
    while True:
        started = time.monotonic()
        r = await api(INES, "GET", f"environments/{DATA_ENV}/builds/{build['id']}")
        slowest = max(slowest, time.monotonic() - started)
        state = r.json()["state"]
        seen_running |= state == "running"
        if state in ("succeeded", "failed"):
            break
        await asyncio.sleep(0.2)
    done = r.json()
    assert done["state"] == "succeeded", (done["error"], done["log"][-20:])
    assert done["version"] == 1
    assert seen_running
    assert any("six" in line for line in done["log"]), "the installer's output is the build's"
    print(f"slowest answer during the build: {slowest:.2f} s")
    assert slowest < 5, f"the service stalled for {slowest:.1f} s during a build"

    r = await api(SAM, "GET", f"environments/{DATA_ENV}")
    assert r.status_code == 200, r.text
    env = r.json()
    assert (env["current"], env["kernel_name"], env["display_name"]) == (1, f"env-{DATA_ENV}", f"Python 3 ({DATA_ENV})")
    assert env["you_can_use"] and not env["can_change"] and not env["can_remove"]
    assert env["who"] == ["course data101: its instructors, TAs and students (3 people)"]
    (version,) = env["versions"]
    assert any(p.lower().startswith("six==") for p in version["installed"])
    assert version["built"] and version["current"]
    assert "history" not in env  # a student is not shown who changed it

    # a student of the course runs it, as themselves
    python = os.path.join(ENVS, DATA_ENV, "current", "bin", "python")
    result = run_as(SAM, python, "-c", "import os, six; print(os.path.realpath(six.__file__))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(os.path.join(ENVS, DATA_ENV, "1", "lib")), result.stdout
    # ... but cannot change it
    result = run_as(SAM, "touch", os.path.join(ENVS, DATA_ENV, "1", "bin", "evil"))
    assert result.returncode != 0 and "Permission denied" in result.stderr

    r = await api(TARA, "GET", f"environments/{DATA_ENV}/versions/1/log")
    assert r.status_code == 200 and "six" in r.json()["log"]
    r = await api(TARA, "GET", f"environments/{DATA_ENV}/log")
    assert r.status_code == 200 and "version 1" in r.json()["log"]

    # the instructor sees it changing hands in the course's audit log and on the environment
    r = await api(INES, "GET", "courses/data101/audit")
    events = [e for e in r.json()["events"] if e["material"] == DATA_ENV]
    assert [(e["actor"], e["action"]) for e in events] == [(INES, "environment-create")]
    r = await api(INES, "GET", f"environments/{DATA_ENV}")
    assert r.json()["can_change"] and not r.json()["can_remove"]
    assert [h["action"] for h in r.json()["history"]] == ["environment-create"]


async def test_who_sees_what(app, ready):
    r = await api(BEA, "GET", "environments")
    assert r.status_code == 200
    assert DATA_ENV not in [e["name"] for e in r.json()["environments"]]
    assert r.json()["can_create_for"] == []
    for path in (f"environments/{DATA_ENV}", f"environments/{DATA_ENV}/builds", f"environments/{DATA_ENV}/versions/1/log"):
        r = await api(BEA, "GET", path)
        assert r.status_code == 404, (path, r.text)
        r = await api(IVAN, "GET", path)
        assert r.status_code == 404, (path, r.text)
    r = await api(SAM, "GET", "environments")
    assert DATA_ENV in [e["name"] for e in r.json()["environments"]]
    r = await api(INES, "GET", "environments")
    assert r.json()["can_create_for"] == ["data101"]
    for who in ("admin", ADA):
        r = await api(who, "GET", "environments")
        assert DATA_ENV in [e["name"] for e in r.json()["environments"]]
        assert r.json()["can_create_for"] == ["*"]


async def test_the_rights_matrix(app, ready):
    def body(audience, name=HUB_ENV):
        return {"name": name, "packages": "six\n", "audience": audience}

    refused = [
        (SAM, body(["course:data101"]), "Only the admin and root tiers and a course's instructors"),
        (TARA, body(["course:data101"]), "Only the admin and root tiers and a course's instructors"),
        (INES, body(["everyone"]), "only for their own courses"),
        (INES, body(["tier:power"]), "only for their own courses"),
        (INES, body(["course:bio202"]), "Not an instructor of bio202"),
        (INES, body(["course:data101", "course:bio202"]), "Not an instructor of bio202"),
        (IVAN, body(["course:data101"]), "Not an instructor of data101"),
    ]
    for who, data, message in refused:
        r = await api(who, "POST", "environments", json=data)
        assert r.status_code == 403, (who, data, r.text)
        assert message in r.json()["message"], (who, r.text)
    # a token with the roster role but without the environments scope
    token = app.users[INES].new_api_token(note="no env scope", scopes=["access:services!service=classroom", "custom:classroom:instruct!group=course-data101-students"])
    r = await asyncio.to_thread(
        requests.post, service_url(app, "api/environments"), headers={"Authorization": f"token {token}"},
        json=body(["course:data101"]), timeout=30,
    )
    assert r.status_code == 403, r.text

    # changing an environment: its instructor may (without a build here), not to everyone;
    # other people may not, and another course's instructor does not even see it
    for who, data, status in [
        (SAM, {"default": True}, 403),
        (TARA, {"default": True}, 403),
        (IVAN, {"default": True}, 404),
        (BEA, {"rebuild": True}, 404),
        (INES, {"audience": ["everyone"]}, 403),
        (INES, {"audience": ["course:data101", "course:bio202"]}, 403),
    ]:
        r = await api(who, "PATCH", f"environments/{DATA_ENV}", json=data)
        assert r.status_code == status, (who, data, r.text)
    r = await api(INES, "PATCH", f"environments/{DATA_ENV}", json={"default": True})
    assert r.status_code == 200, r.text
    assert r.json()["default"] is True and r.json()["current"] == 1
    for who, status in [(SAM, 403), (TARA, 403), (INES, 403), (IVAN, 404)]:
        r = await api(who, "DELETE", f"environments/{DATA_ENV}")
        assert r.status_code == status, (who, r.text)
    assert not [b for b in (await api("admin", "GET", f"environments/{DATA_ENV}/builds")).json()["builds"] if b["action"] != "create"]

    # the admin tier creates one for everyone; root removes it
    r = await api(ADA, "POST", "environments", json=body(["everyone"]))
    assert r.status_code == 202, r.text
    done = await wait_for_build(ADA, r.json())
    assert done["state"] == "succeeded", (done["error"], done["log"][-20:])
    r = await api(BEA, "GET", f"environments/{HUB_ENV}")
    assert r.status_code == 200 and r.json()["who"] == ["everyone on the hub"]
    r = await api("admin", "DELETE", f"environments/{HUB_ENV}")
    assert r.status_code == 204, r.text
    assert not os.path.exists(os.path.join(ENVS, HUB_ENV))
    r = await api(BEA, "GET", f"environments/{HUB_ENV}")
    assert r.status_code == 404


@pytest.mark.parametrize(
    "data, message",
    [
        ({"packages": "six\n-r /etc/shadow\n"}, "requirements.txt:2: pip options are not accepted"),
        ({"packages": ["six", "evil @ https://evil.example/e.whl"]}, "requirements.txt:2: direct references"),
        ({"packages": "dependencies:\n  - six\n  - numpy=1.26\n", "format": "environment"}, "environment.yml:3:"),
        ({"packages": "[project]\nname = 'x'\n", "format": "pyproject"}, "pyproject.toml: no [project] dependencies"),
        ({"packages": "# nothing\n"}, "no packages listed"),
        # a line separator in a marker (a TOML or YAML escape) would be an option line for pip
        (
            {"packages": "[project]\ndependencies = [\"idna; os_name == 'y\\u000c-r /etc/shadow\\u000c'\"]\n", "format": "pyproject"},
            "pyproject.toml:2: a requirement is one line of printable text",
        ),
        (
            {"packages": "dependencies:\n  - pip:\n    - \"six; os_name == 'y\\x85--no-binary six'\"\n", "format": "environment"},
            "environment.yml:3: a requirement is one line of printable text",
        ),
        ({"packages": 7}, "packages: the text of a package list"),
        ({"packages": ["six\n--index-url=x"]}, "one requirement per string"),
        ({"packages": "six", "format": "conda"}, "format: one of"),
        ({"packages": "six", "audience": ["course:data 101"]}, "invalid audience"),
        ({"packages": "six", "audience": []}, "at least one"),
        ({"packages": "six", "display_name": "a\x00b"}, "printable text only"),
        ({"packages": "six", "name": "Not A Name"}, "invalid environment name"),
    ],
)
async def test_a_bad_request_is_400_with_its_message_and_builds_nothing(app, ready, data, message):
    name = f"{TAG}-bad"
    body = {"name": name, "audience": ["course:data101"], **data}
    r = await api(INES, "POST", "environments", json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["message"]
    assert "Traceback" not in r.text
    assert not os.path.exists(os.path.join(ENVS, name))
    assert (await api(INES, "GET", f"environments/{name}")).status_code == 404
    if "name" in data:
        return
    # the same list in an update: 400, the version in force stays, no build
    r = await api(INES, "PATCH", f"environments/{DATA_ENV}", json=data)
    assert r.status_code == 400, r.text
    env = (await api(INES, "GET", f"environments/{DATA_ENV}")).json()
    assert env["current"] == 1 and env["building"] is None


async def test_a_second_build_of_the_same_environment_is_409(app, ready):
    r = await api(INES, "PATCH", f"environments/{DATA_ENV}", json={"rebuild": True})
    assert r.status_code == 202, r.text
    first = r.json()
    for method, data in (("PATCH", {"rebuild": True}), ("PATCH", {"packages": ["six"]}), ("PATCH", {"default": False})):
        r = await api(INES, method, f"environments/{DATA_ENV}", json=data)
        assert r.status_code == 409, r.text
        assert f"build {first['id']} is" in r.json()["message"]
    r = await api("admin", "DELETE", f"environments/{DATA_ENV}")
    assert r.status_code == 409
    r = await api(INES, "POST", "environments", json={"name": DATA_ENV, "packages": ["six"], "audience": ["course:data101"]})
    assert r.status_code == 409 and "exists already" in r.json()["message"]
    env = (await api(SAM, "GET", f"environments/{DATA_ENV}")).json()
    assert env["building"]["id"] == first["id"]
    done = await wait_for_build(INES, first)
    assert done["state"] == "succeeded", (done["error"], done["log"][-20:])
    assert done["version"] == 2 and done["removed"] == [1]  # nothing used version 1: pruned
    env = (await api(SAM, "GET", f"environments/{DATA_ENV}")).json()
    assert env["current"] == 2 and [v["version"] for v in env["versions"]] == [2]


async def test_one_persons_builds_are_limited_and_others_still_queue(app, ready):
    """At most environment_builds_per_person (2) of one person's builds wait or run at once."""
    names = [f"{TAG}-q{i}" for i in range(3)]
    body = {"packages": ["six==1.17.0"], "audience": ["course:data101"]}
    builds = []
    try:
        for name in names[:2]:
            r = await api(INES, "POST", "environments", json={"name": name, **body})
            assert r.status_code == 202, r.text
            builds.append(r.json())
        r = await api(INES, "POST", "environments", json={"name": names[2], **body})
        assert r.status_code == 409, r.text
        assert "You have 2 environment builds waiting or running (at most 2)" in r.json()["message"]
        assert not os.path.exists(os.path.join(ENVS, names[2]))
        # someone else's build still gets in the queue
        r = await api("admin", "POST", "environments", json={"name": names[2], **body})
        assert r.status_code == 202, r.text
        builds.append(r.json())
        for build in builds:
            done = await wait_for_build("admin", build)
            assert done["state"] == "succeeded", (done["error"], done["log"][-20:])
    finally:
        for build in builds:
            await wait_for_build("admin", build)
            r = await api("admin", "DELETE", f"environments/{build['environment']}")
            assert r.status_code in (204, 404), r.text


async def test_removal_of_an_environment_in_use_is_409(app, ready):
    current = (await api(SAM, "GET", f"environments/{DATA_ENV}")).json()["current"]
    # a student's process running the version's interpreter, as a kernel started from its
    # kernelspec: it maps the version's compiled pyzmq (what the kernel says, not its argv[0])
    python = os.path.join(ENVS, DATA_ENV, str(current), "bin", "python")
    code = "import time, zmq; time.sleep(120)"
    proc = subprocess.Popen(["runuser", "-u", SAM, "--", python, "-c", code], cwd="/", start_new_session=True)
    try:
        for _ in range(100):  # runuser's child has exec'd the interpreter
            if any(b"zmq" in maps(pid) for pid in [proc.pid, *children(proc.pid)]):
                break
            await asyncio.sleep(0.1)
        r = await api("admin", "DELETE", f"environments/{DATA_ENV}")
        assert r.status_code == 409, r.text
        assert "in use" in r.json()["message"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # runuser and the interpreter it started
        proc.wait()
    assert (await api(SAM, "GET", f"environments/{DATA_ENV}")).json()["current"] == current


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return f.read().split()
    except OSError:
        return []


def maps(pid):
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            return f.read()
    except OSError:
        return b""


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


async def running_rebuild():
    """A rebuild of DATA_ENV, once its installer runs."""
    r = await api(INES, "PATCH", f"environments/{DATA_ENV}", json={"rebuild": True})
    assert r.status_code == 202, r.text
    build = r.json()
    for _ in range(300):
        state = (await api(INES, "GET", f"environments/{DATA_ENV}/builds/{build['id']}")).json()["state"]
        if state != "queued":
            break
        await asyncio.sleep(0.1)
    assert state == "running"
    return build


def build_record(build):
    """The build as the service left it on disk."""
    with open(os.path.join(DATA_DIR, "environment-builds", f"{build['id']}.json")) as f:
        return json.load(f)


def installers_of(name):
    """Processes whose command line names the environment's folder (its installer's)."""
    folder = os.path.join(ENVS, name).encode()
    return [pid for pid in os.listdir("/proc") if pid.isdigit() and folder in cmdline(pid)]


async def restarted(app, service):
    await service.start()
    for _ in range(150):
        try:
            r = await api(INES, "GET", "environments")
            if r.status_code == 200:
                return
        except requests.ConnectionError:
            pass
        await asyncio.sleep(0.2)
    pytest.fail("the service did not come back")


@pytest.mark.parametrize("stop", ["SIGINT", "SIGKILL"])
async def test_a_build_cut_off_by_a_stop_is_reported_failed_after_the_restart(app, ready, stop):
    build = await running_rebuild()
    service = app._service_map["classroom"]
    service.spawner.stop_polling()
    if stop == "SIGINT":  # the hub's own stop: the service ends its build itself
        await service.spawner.stop()
        record = build_record(build)
        assert record["state"] == "failed" and "interrupted" in record["error"], record
        for _ in range(100):  # a killed installer's own children take a moment to go
            if not installers_of(DATA_ENV):
                break
            await asyncio.sleep(0.1)
        assert not installers_of(DATA_ENV), [cmdline(pid) for pid in installers_of(DATA_ENV)]
    else:  # no clean-up of any kind: the next start finds the build "running"
        os.kill(service.spawner.pid, signal.SIGKILL)
        await service.spawner.stop(now=True)
        assert build_record(build)["state"] == "running"
    await restarted(app, service)
    done = (await api(INES, "GET", f"environments/{DATA_ENV}/builds/{build['id']}")).json()
    assert done["state"] == "failed" and "interrupted" in done["error"], done
    env = (await api(SAM, "GET", f"environments/{DATA_ENV}")).json()
    assert env["current"] == 2 and env["building"] is None  # the version in force stays
    assert [v["version"] for v in env["versions"]] == [2]


async def test_builds_go_on_after_the_restarts(app, ready):
    r = await api(INES, "PATCH", f"environments/{DATA_ENV}", json={"rebuild": True})
    assert r.status_code == 202, r.text
    done = await wait_for_build(INES, r.json())
    assert done["state"] == "succeeded", (done["error"], done["log"][-20:])
    assert run_as(SAM, os.path.join(ENVS, DATA_ENV, "current", "bin", "python"), "-c", "import six").returncode == 0


async def test_the_openapi_document_has_every_environment_route(app, ready):
    from classroomhub.service.web.environments import environment_handlers

    r = await asyncio.to_thread(requests.get, service_url(app, "api/openapi.json"), timeout=10)
    paths = r.json()["paths"]
    routes = {
        "/api/environments": {"get", "post"},
        "/api/environments/{environment}": {"get", "patch", "delete"},
        "/api/environments/{environment}/builds": {"get"},
        "/api/environments/{environment}/builds/{build}": {"get"},
        "/api/environments/{environment}/log": {"get"},
        "/api/environments/{environment}/versions/{version}/log": {"get"},
    }
    assert len(environment_handlers("/")) == len(routes)
    for path, methods in routes.items():
        assert methods <= set(paths[path]), path
        for method in methods:
            responses = paths[path][method]["responses"]
            assert "404" in responses or path == "/api/environments", (path, method)


# -- the pages ----------------------------------------------------------------------


async def test_the_pages_in_a_browser(app, ready, browser, sessions):
    page, response = await open_as(app, browser, sessions, INES, "environments")
    assert response.status == 200
    assert await page.inner_text("h1") == "Environments"
    row = page.locator(f"#environments tr[data-environment='{DATA_ENV}']")
    assert "six" in await row.locator(".packages").inner_text()
    assert "course data101" in await row.locator(".who").inner_text()
    assert await page.input_value("#audience") == "course:data101"

    # a bad list: the parser's message above the form, 400, what was typed kept
    await page.fill("#name", PAGE_ENV)
    await page.fill("#packages", "six\n--extra-index-url https://evil.example/\n")
    async with page.expect_navigation() as nav:
        await page.click("#create-submit")
    assert (await nav.value).status == 400
    assert "requirements.txt:2: pip options are not accepted" in await page.inner_text("#environment-error")
    assert await page.input_value("#name") == PAGE_ENV

    # a good one: its build page follows the build until it ends
    await page.fill("#packages", "six\n")
    async with page.expect_navigation(url=lambda url: "/builds/" in url):
        await page.click("#create-submit")
    await page.wait_for_selector("#state[data-state=succeeded], #state[data-state=failed]", timeout=BUILD_TIMEOUT * 1000)
    assert await page.get_attribute("#state", "data-state") == "succeeded"
    assert "six" in await page.inner_text("#log")

    await page.click("#environment-link")
    assert await page.inner_text("#current") == "v1"
    assert "six==" in await page.inner_text("#versions .installed")
    assert "# environment" in await page.inner_text("#log")
    assert await page.query_selector("#update-form") is not None
    assert await page.query_selector("#remove-form") is None  # instructors do not remove
    await page.click("#versions a")
    assert "six" in await page.inner_text("#log")

    # the update form: a new display name builds a new version
    page, _ = await open_as(app, browser, sessions, INES, f"environments/{PAGE_ENV}")
    await page.fill("#display_name", "Data 101 (Python)")
    async with page.expect_navigation(url=lambda url: "/builds/" in url):
        await page.click("#update-submit")
    await page.wait_for_selector("#state[data-state=succeeded], #state[data-state=failed]", timeout=BUILD_TIMEOUT * 1000)
    assert await page.get_attribute("#state", "data-state") == "succeeded"

    # a form without its XSRF token is refused
    r = await page.request.post(service_url(app, f"environments/{PAGE_ENV}"), form={"rebuild": "1"})
    assert r.status == 403

    # a student of the course sees it, without forms; another course's student does not
    page, response = await open_as(app, browser, sessions, SAM, "environments")
    assert response.status == 200
    assert await page.query_selector(f"#environments tr[data-environment='{PAGE_ENV}']") is not None
    assert await page.query_selector("#create-form") is None
    page, response = await open_as(app, browser, sessions, SAM, f"environments/{PAGE_ENV}")
    assert await page.inner_text("#display-name") == "Data 101 (Python)"
    assert await page.query_selector("#update-form") is None
    page, response = await open_as(app, browser, sessions, BEA, "environments")
    assert await page.query_selector(f"#environments tr[data-environment='{PAGE_ENV}']") is None
    page, response = await open_as(app, browser, sessions, BEA, f"environments/{PAGE_ENV}")
    assert response.status == 404
    assert "No environment named" in await page.inner_text("#error-message")

    # root removes it from its page
    page, _ = await open_as(app, browser, sessions, "admin", f"environments/{PAGE_ENV}")
    async with page.expect_navigation():
        await page.click("#remove-submit")
    assert page.url.endswith("/environments")
    assert await page.query_selector(f"#environments tr[data-environment='{PAGE_ENV}']") is None
