"""Schemathesis against the classroom service's own OpenAPI document.

A real hub, proxy, managed service and system users (fixtures/service.py),
on a roster of test_service.py's shape: two courses, each course role.
The document is loaded from the running service and every operation is
called with generated data (valid and invalid) with the token of each course
role and tier, and with tokens the service must refuse (no scopes; access to
the service without staff scopes): no answer may be a 5xx, and every answer
must be one the document declares, with the declared content type and body
schema.
"""

import asyncio
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.configuration import set_hypothesis_home_dir
from jupyterhub.tests.utils import public_url
from jupyterhub.utils import random_port
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from service_hub import call, data_dir, home, hub_config, material, release, service_url

pytestmark = pytest.mark.root("creates system users and works as them")

MAX_EXAMPLES = 25
# a release the fuzzer manages to make is read as the instructor and copied
# into two homes: keep any one small
MAX_RELEASE_BYTES = 1_000_000
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


TAG = "tl" + secrets.token_hex(2)
INES, TARA, SAM, SUE, BEA = (f"{TAG}-{n}" for n in ("ines", "tara", "sam", "sue", "bea"))
PEOPLE = [INES, TARA, SAM, SUE, BEA]
PORT = random_port()
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
    hub_config(c, DATA_DIR, PORT, f"--ClassroomService.max_release_bytes={MAX_RELEASE_BYTES}")
    # an environment the root or instructor tokens manage to create is built
    # offline from the module's own empty cache: it fails at once, instead of
    # fetching generated package names from the index
    (service,) = c.JupyterHub.services
    service["environment"] = {**service.get("environment", {}), "UV_OFFLINE": "1"}


@pytest.fixture(scope="module", autouse=True)
def hypothesis_home():
    """Hypothesis's caches in a temporary folder, not in .hypothesis/ here."""
    folder = tempfile.mkdtemp(prefix="classroomhub-hypothesis-")
    set_hypothesis_home_dir(folder)
    try:
        yield
    finally:
        set_hypothesis_home_dir(None)
        shutil.rmtree(folder, ignore_errors=True)


def harmless(case):
    """Whether the case's release body (if any) only names what cannot hurt:
    no existing folder but the instructor's own (generated text is rarely one,
    but "/" is text too: a release of it is walked as the instructor, up to
    100,000 entries, and delivered to every student), no network repository."""
    body = case.body if isinstance(case.body, dict) else {}
    source, git = body.get("source"), body.get("git")
    if isinstance(source, str):
        try:
            if os.path.lexists(source) and not os.path.realpath(source).startswith(home(INES) + "/"):
                return False
        except (ValueError, OSError):
            pass  # NUL bytes, unencodable text: the service must refuse it too
    if isinstance(git, str) and ":" in git:
        return False
    return well_formed_headers(case.headers)


#: a header name (RFC 9110 token); the value may not break the line
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def well_formed_headers(headers):
    """Whether an HTTP server would read *headers* at all: a generated name
    that is not a token (";" and the like) or a Host of its own makes the proxy
    in front refuse the request with an empty 400 before the service sees it."""
    for name, value in (headers or {}).items():
        if not _HEADER_NAME.fullmatch(str(name)) or str(name).lower() == "host":
            return False
        if any(c in str(value) for c in "\r\n\0"):
            return False
    return True


def fuzz(base_url, operation, strategy, token, checks):
    """Run *checks* on up to MAX_EXAMPLES generated calls of *operation* (blocking: run it in a thread)."""
    session = requests.Session()
    headers = {"Authorization": f"token {token}"}

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,  # no example database kept between runs
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy.filter(harmless))
    def run(case):
        case.call_and_validate(base_url=base_url, session=session, headers=headers, checks=checks, timeout=60)

    try:
        run()
    finally:
        session.close()


async def reset_assignment(app):
    """week1 due in a week (an hour's late window), Sam without an extension:
    the state each operation is fuzzed from (a fuzzed PUT may move the due
    date into the past, which closes submissions and collects at once)."""
    due = (datetime.now(timezone.utc) + timedelta(days=7)).isoformat()
    r = await call(app, INES, "PUT", "courses/data101/assignments/week1", json={"due": due, "late_seconds": 3600})
    assert r.status_code == 200, r.text
    r = await call(app, INES, "DELETE", f"courses/data101/assignments/week1/extensions/{SAM}")
    assert r.status_code == 204, r.text


@pytest.fixture
async def released(app, ready):
    """One real release with a due date, so that the generated calls can also find something."""
    src = material(INES, {"hw.ipynb": "hw\n"})
    r = await release(app, INES, "week1", source=src, wait=True)
    assert r.status_code == 201, r.text
    await reset_assignment(app)


#: whose token each run uses, and its scopes (None: all the owner's, the hub's default)
TOKENS = {
    "instructor": (INES, None),
    "student": (SAM, None),
    "ta": (TARA, None),
    "root": ("admin", None),
    "other-course": (BEA, None),
    # refused by the service: no access to it, or access without staff scopes
    "no-scope": (INES, []),
    "service-access-only": (INES, ["access:services!service=classroom"]),
}


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")  # schemathesis' own strategies
@pytest.mark.parametrize("who", list(TOKENS))
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
async def test_schemathesis_finds_no_server_error(app, released, who, mode):
    owner, scopes = TOKENS[who]
    token = app.users[owner].new_api_token(note="schemathesis", **({} if scopes is None else {"scopes": scopes}))
    schema = await asyncio.to_thread(schemathesis.openapi.from_url, service_url(app, "api/openapi.json"), timeout=30)
    base_url = public_url(app) + "services/classroom"
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6
    assert any("/assignments/" in op.path for op in operations)
    for operation in operations:
        checks = list(CHECKS)
        # "invalid data must be refused": except for query strings, where the
        # generator's unknown argument can vanish when the URL is built (it
        # sent a valid ?format=csv and called the 200 a failure); the service
        # does refuse unknown query arguments (test_assignment_bodies_at_the_edges
        # and test_unknown_query_arguments_are_refused check it directly)
        if mode == GenerationMode.NEGATIVE and not list(operation.query):
            checks.append(negative_data_rejection)
        strategies = [operation.as_strategy(mode)]
        names = {p.name for p in operation.path_parameters}
        if "course" in names:
            # generated course names are hardly ever real: also ask about the real one
            fixed = {"course": "data101"}
            assignment = operation.path.startswith("/api/courses/{course}/assignments/")
            if "material" in names and (operation.method.upper() == "GET" or assignment):
                # week1 is released and has a due date (not fixed for new releases:
                # those would be made from generated sources)
                fixed["material"] = "week1"
            if "student" in names:
                fixed["student"] = SAM
            if "version" in names:
                fixed["version"] = 1
            strategies.append(operation.as_strategy(mode, path_parameters=fixed))
        for strategy in strategies:
            await reset_assignment(app)
            await asyncio.to_thread(fuzz, base_url, operation, strategy, token, checks)



async def test_release_bodies_that_reach_the_importer(app, released):
    """Bodies random text seldom finds, each one checked as above: every answer
    a declared 2xx or 4xx with a JSON body."""
    odd = os.path.join(home(INES).encode(), b"odd-\xff-name")  # not UTF-8
    os.makedirs(os.path.join(odd, b"sub"))
    with open(os.path.join(odd, b"sub", b"f.txt"), "w") as f:
        f.write("x\n")
    subprocess.run(["chown", "-R", f"{INES}:{INES}", odd], check=True)
    src = material(INES, {"a.txt": "a\n", "sub/b.txt": "b\n"})
    bodies = {
        "plain": ({"source": src}, 202),
        "shared, waited for": ({"source": src, "shared": True, "wait": True}, 201),
        "restore_deleted": ({"source": src, "restore_deleted": True, "wait": True}, 201),
        "NUL in the path": ({"source": src + "\x00"}, 400),
        "lone surrogate": ({"source": "/\ud800"}, 400),
        "a file": ({"source": os.path.join(src, "a.txt")}, 400),
        "an unreadable folder": ({"source": "/root"}, 400),
        "a missing folder": ({"source": src + "-missing"}, 400),
        "both": ({"source": src, "git": src}, 400),
        "neither": ({"wait": True}, 400),
        "an option as repository": ({"git": "--upload-pack=true"}, 400),
        "an option as ref": ({"git": src, "ref": "--upload-pack=x"}, 400),
        "NUL in the ref": ({"git": src, "ref": "\x00"}, 400),
        "not a repository": ({"git": src}, 400),
        # a folder whose name is not UTF-8 (given as JSON's \udcXX escape)
        "non-UTF-8 folder": ({"source": os.fsdecode(odd)}, 202),
        "non-UTF-8 repository": ({"git": os.fsdecode(odd)}, 400),  # a folder, not a repository
    }
    token = app.users[INES].new_api_token(note="schemathesis")
    schema = await asyncio.to_thread(schemathesis.openapi.from_url, service_url(app, "api/openapi.json"), timeout=30)
    operation = schema["/api/courses/{course}/materials/{material}/releases"]["POST"]
    base_url = public_url(app) + "services/classroom"
    for name, (body, status) in bodies.items():
        case = operation.Case(path_parameters={"course": "data101", "material": "edge"}, body=body)
        r = await asyncio.to_thread(
            case.call_and_validate, base_url=base_url, headers={"Authorization": f"token {token}"}, checks=CHECKS, timeout=60
        )
        assert r.status_code == status, (name, r.status_code, r.text)


async def test_assignment_bodies_at_the_edges(app, released):
    """Due dates and bodies random data seldom finds, each one checked as above."""
    r = await release(app, INES, "edges", source=material(INES, {"a.txt": "a\n"}), wait=True)
    assert r.status_code == 201, r.text
    base = "/api/courses/{course}/assignments/{material}"
    extension = base + "/extensions/{student}"
    cases = [
        # the first collection of a material, not waited for: its progress is there at once
        (base + "/collect", "POST", "edges", None, {}, 202),
        (base + "/collect", "POST", "edges", None, {"wait": True}, 201),
        (base, "PUT", "week1", None, {"due": "0001-01-01T00:00:00+01:00"}, 400),  # before year 1 in UTC
        (base, "PUT", "week1", None, {"due": "9999-12-31T23:00:00Z"}, 400),  # no room for a late window
        (base, "PUT", "week1", None, {"due": "2030-01-01T17:00:00"}, 400),  # no offset
        (base, "PUT", "week1", None, {"due": "2030-01-01T17:00:00Z", "late_seconds": True}, 400),
        (base, "PUT", "week1", None, {"due": "2030-01-01T17:00:00Z", "late_seconds": 31622401}, 400),
        (base, "PUT", "week1", None, {"due": "0001-01-01T00:00:00-01:00", "late_seconds": 31622400}, 200),
        (extension, "PUT", "week1", SAM, {"due": "9999-12-31T23:00:00Z"}, 400),
        (extension, "PUT", "week1", SAM, {"due": "9998-12-31T23:00:00Z"}, 200),
        (extension, "PUT", "week1", "nobody", {"due": "2030-01-01T17:00:00Z"}, 404),
        (base + "/submissions", "GET", "week1", None, None, 200),
    ]
    token = app.users[INES].new_api_token(note="schemathesis")
    schema = await asyncio.to_thread(schemathesis.openapi.from_url, service_url(app, "api/openapi.json"), timeout=30)
    base_url = public_url(app) + "services/classroom"
    headers = {"Authorization": f"token {token}"}
    for path, method, name, student, body, status in cases:
        params = {"course": "data101", "material": name, **({"student": student} if student else {})}
        kwargs = {} if body is None else {"body": body}
        case = schema[path][method].Case(path_parameters=params, **kwargs)
        r = await asyncio.to_thread(case.call_and_validate, base_url=base_url, headers=headers, checks=CHECKS, timeout=60)
        assert r.status_code == status, (method, path, body, r.status_code, r.text)
    await reset_assignment(app)


async def test_unknown_query_arguments_are_refused(app, released):
    for path in (
        "courses/data101/audit?format=csv&extra=1",
        "courses/data101/audit?format=xml",
        "courses/data101/assignments/week1/submissions.zip?x=1",
        "courses/data101/assignments/week1/submissions/1/file?path=hw.ipynb&x=1",
    ):
        r = await call(app, INES, "GET", path)
        assert r.status_code == 400, (path, r.status_code, r.text)
        assert r.json()["message"]
