"""What each tier and course role can and cannot do, through the real Hub
REST API and pages (tests/conftest.py's ROSTER: two courses, every tier).

Each row is one request made with the actor's own token; "ok" means the hub
performed it, "no" that it refused (403 missing scope, 404 "no access to
resources", or 400 "not assigning scopes not held").
"""

import json

import pytest
from jupyterhub import orm
from jupyterhub.tests.utils import api_request, public_url

from conftest import login

OK, NO = "ok", "no"

# (actor, action, target, expected)
CASES = [
    # root: everything, including admin rights over others
    ("rooty", "read", "bea", OK),
    ("rooty", "start", "opal", OK),
    ("rooty", "stop", "opal", OK),
    ("rooty", "access", "opal", OK),
    ("rooty", "make_admin", "stu", OK),
    ("rooty", "list", None, {"admin", "rooty", "opal", "pia", "stu", "ines", "tara", "sam", "sue", "ivan", "tom", "bea"}),
    # admin tier: reads everyone, manages servers of power and student tiers only
    ("opal", "read", "rooty", OK),
    ("opal", "read", "bea", OK),
    ("opal", "start", "sam", OK),
    ("opal", "stop", "sam", OK),
    ("opal", "access", "sam", OK),
    ("opal", "start", "pia", OK),
    ("opal", "access", "pia", OK),
    ("opal", "start", "ines", OK),  # instructors are student-tier people
    ("opal", "start", "rooty", NO),
    ("opal", "stop", "rooty", NO),
    ("opal", "access", "rooty", NO),
    ("opal", "access", "admin", NO),
    ("opal", "make_admin", "stu", NO),
    ("opal", "make_admin", "opal", NO),
    ("opal", "list", None, {"admin", "rooty", "opal", "pia", "stu", "ines", "tara", "sam", "sue", "ivan", "tom", "bea"}),
    # power: own server only
    ("pia", "read", "stu", NO),
    ("pia", "start", "stu", NO),
    ("pia", "access", "stu", NO),
    ("pia", "start", "pia", OK),
    ("pia", "stop", "pia", OK),
    ("pia", "make_admin", "pia", NO),
    ("pia", "list", None, NO),
    # student without course
    ("stu", "read", "sam", NO),
    ("stu", "start", "sam", NO),
    ("stu", "stop", "sam", NO),
    ("stu", "access", "sam", NO),
    ("stu", "start", "stu", OK),
    ("stu", "read", "stu", OK),
    ("stu", "list", None, NO),
    ("stu", "make_admin", "stu", NO),
    # instructor of data101: that course's students and nobody else
    ("ines", "read", "sam", OK),
    ("ines", "read", "sue", OK),
    ("ines", "start", "sam", OK),
    ("ines", "stop", "sam", OK),
    ("ines", "access", "sam", OK),
    ("ines", "access", "sue", OK),
    ("ines", "read", "bea", NO),  # bio202 student
    ("ines", "start", "bea", NO),
    ("ines", "stop", "bea", NO),
    ("ines", "access", "bea", NO),
    ("ines", "access", "tara", NO),  # her own TA: staff, not a student
    ("ines", "access", "ivan", NO),  # the other course's instructor
    ("ines", "access", "stu", NO),
    ("ines", "access", "rooty", NO),
    ("ines", "make_admin", "sam", NO),
    ("ines", "list", None, {"sam", "sue"}),
    # instructor of bio202: the mirror image
    ("ivan", "read", "bea", OK),
    ("ivan", "access", "bea", OK),
    ("ivan", "access", "sue", OK),  # sue takes both courses
    ("ivan", "start", "sam", NO),
    ("ivan", "access", "sam", NO),
    ("ivan", "read", "sam", NO),
    ("ivan", "list", None, {"bea", "sue"}),
    # TAs: no live-server access by default
    ("tara", "read", "sam", NO),
    ("tara", "start", "sam", NO),
    ("tara", "access", "sam", NO),
    ("tara", "list", None, NO),
    ("tom", "access", "bea", NO),
    # students: own server only, even within a course
    ("sam", "read", "sue", NO),
    ("sam", "access", "sue", NO),
    ("sam", "start", "sue", NO),
    ("sam", "start", "sam", OK),
    ("sam", "access", "ines", NO),
    ("sue", "access", "bea", NO),
    ("bea", "list", None, NO),
]

ADMIN_PAGE = [("rooty", OK), ("opal", OK), ("pia", NO), ("stu", NO), ("ines", NO), ("tara", NO), ("sam", NO)]


def _token(app, name):
    return orm.User.find(app.db, name).new_api_token(scopes=["inherit"])


def _ok(status):
    if status in (200, 201, 202, 204):
        return True
    assert status in (400, 403, 404), f"unexpected HTTP {status}"
    return False


async def _act(app, actor, action, target):
    headers = {"Authorization": f"token {_token(app, actor)}"}
    if action == "list":
        r = await api_request(app, "users", headers=headers)
        return {u["name"] for u in r.json()} - {"user"} if r.status_code == 200 else NO
    if action == "read":
        r = await api_request(app, "users", target, headers=headers)
    elif action == "start":
        r = await api_request(app, "users", target, "server", method="post", headers=headers)
    elif action == "stop":
        start = await api_request(app, "users", target, "server", method="post")  # as hub admin
        assert start.status_code in (201, 202), start.text
        r = await api_request(app, "users", target, "server", method="delete", headers=headers)
    elif action == "access":
        # The hub only issues tokens with scopes their owner holds: asking for
        # one that can open the target's server is the API's own access check.
        body = json.dumps({"scopes": [f"access:servers!server={target}/"]})
        r = await api_request(app, "users", actor, "tokens", method="post", headers=headers, data=body)
    elif action == "make_admin":
        r = await api_request(app, "users", target, method="patch", headers=headers, data='{"admin": true}')
    else:
        raise ValueError(action)
    return OK if _ok(r.status_code) else NO


@pytest.mark.parametrize("actor, action, target, expected", CASES, ids=[f"{a}-{b}-{c}" for a, b, c, _ in CASES])
async def test_rights(app, synced, actor, action, target, expected):
    assert await _act(app, actor, action, target) == expected


@pytest.mark.parametrize("actor, expected", ADMIN_PAGE)
async def test_admin_page(app, synced, actor, expected):
    session, r = await login(app, actor)
    assert r.status_code == 302, r.text
    page = await session.get(public_url(app) + "hub/admin", allow_redirects=False)
    assert (OK if page.status_code == 200 else NO) == expected, page.status_code
    if expected == NO:
        assert page.status_code == 403


def test_enough_cases():
    assert len(CASES) + len(ADMIN_PAGE) >= 60


async def test_instructor_rights_follow_roster(app, synced, roster_file):
    """Course staff powers are group-filtered, so moving a student between
    courses moves them between instructors without touching roles."""
    from conftest import write_roster

    original = roster_file.read_text()
    try:
        write_roster(roster_file, original.replace("students: [sam, sue]", "students: [sue]").replace(
            "students: [bea, sue]", "students: [bea, sue, sam]"
        ))
        app.authenticator.reload_roster()
        await app.authenticator.sync_roster()
        assert await _act(app, "ines", "access", "sam") == NO
        assert await _act(app, "ivan", "access", "sam") == OK
    finally:
        write_roster(roster_file, original)
        app.authenticator.reload_roster()
        await app.authenticator.sync_roster()


def _authenticator_with_service(roster_file, **configured):
    """ClassroomPasswordAuthenticator configured as a hub config would:
    *configured* traits first, then ``add_classroom_service``."""
    from traitlets.config import Config

    from classroomhub.authenticator import ClassroomPasswordAuthenticator
    from classroomhub.service.hubconfig import add_classroom_service

    c = Config()
    for name, value in configured.items():
        setattr(c.ClassroomPasswordAuthenticator, name, value)
    add_classroom_service(c, data_dir="/nonexistent")
    auth = ClassroomPasswordAuthenticator(config=c, roster_path=str(roster_file), user_password="long enough password")
    return c, auth


def test_classroom_service_scopes_come_with_the_roster(roster_file):
    c, auth = _authenticator_with_service(roster_file)
    assert set(c.JupyterHub.custom_scopes) == {
        "custom:classroom:instruct",
        "custom:classroom:grade",
        "custom:classroom:environments",
    }
    (service,) = c.JupyterHub.services
    assert service["oauth_client_allowed_scopes"] == [
        "custom:classroom:environments",
        "custom:classroom:grade",
        "custom:classroom:instruct",
    ]
    group = "course-data101-students"
    instructor = auth.policy.course_role("data101", "instructor")["scopes"]
    assert {f"custom:classroom:instruct!group={group}", f"custom:classroom:grade!group={group}"} <= set(instructor)
    assert f"access:servers!group={group}" in instructor  # the defaults stay
    assert auth.policy.course_role("data101", "ta")["scopes"] == [f"custom:classroom:grade!group={group}"]
    assert auth.policy.course_role("data101", "student") is None
    for tier in ("root", "admin"):
        assert {"custom:classroom:instruct", "custom:classroom:grade"} <= set(auth.policy.tier_role(tier)["scopes"])
    assert auth.policy.tier_role("student") is None
    assert "access:services!service=classroom" in auth.policy.everyone_role()["scopes"]


def test_configured_scopes_do_not_drop_the_services(roster_file):
    """An operator's course_scopes / tier_scopes replace the defaults, not
    the classroom service's scopes."""
    _, auth = _authenticator_with_service(
        roster_file,
        course_scopes={"instructor": ["read:users!group={students}"], "ta": ["access:servers!group={students}"]},
        tier_scopes={"admin": ["admin-ui"]},
    )
    group = "course-data101-students"
    assert auth.policy.course_role("data101", "instructor")["scopes"] == sorted(
        [
            f"read:users!group={group}",
            f"custom:classroom:instruct!group={group}",
            f"custom:classroom:grade!group={group}",
            f"custom:classroom:environments!group={group}",
        ]
    )
    assert auth.policy.course_role("data101", "ta")["scopes"] == sorted(
        [f"access:servers!group={group}", f"custom:classroom:grade!group={group}"]
    )
    admin = auth.policy.tier_role("admin")["scopes"]
    assert admin == sorted(["admin-ui", "custom:classroom:grade", "custom:classroom:instruct", "custom:classroom:environments"])
