"""Roster files: parsing, validation, normalization, the grants they imply,
and ``classroomhub roster check``.

Pure unit tests: no hub is started (the ``app`` fixture is never requested).
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from jupyterhub.roles import _validate_role_name
from jupyterhub.scopes import _check_scopes_exist

from classroomhub import cli
from classroomhub.access import DEFAULT_COURSE_SCOPES, AccessPolicy
from classroomhub.tiers import DEFAULT_TIER_SCOPES
from classroomhub.roster import RosterError, guess_format, load_roster, parse_roster

PATH = "roster.yaml"


def parse(text, path=PATH):
    return parse_roster(textwrap.dedent(text), path)


def rejected(text, path=PATH):
    """The RosterError raised for *text*."""
    with pytest.raises(RosterError) as info:
        parse(text, path)
    return info.value


def assert_single_problem(error, path, line, fragment):
    """Exactly one fatal problem, at *line*, mentioning *fragment*, and
    printed as ``path:line: ...``."""
    fatal = [p for p in error.problems if p.fatal]
    assert len(fatal) == 1, [str(p) for p in error.problems]
    problem = fatal[0]
    assert problem.line == line, str(problem)
    assert fragment in problem.message
    assert str(problem).startswith(f"{path}:{line}: ")
    assert f"{path}:{line}: {problem.message}" in str(error).splitlines()


# -- the happy path ----------------------------------------------------------

# The example of DESIGN.md section 2, verbatim.
DESIGN_EXAMPLE = """\
users:
  alice: {tier: root}
  bob: {tier: admin}
  carol: {tier: power}
  dave: {}                 # tier defaults to student
courses:
  data101:
    title: Data Analytics with Python
    instructors: [bob]
    tas: [carol]
    students: [dave, erin]   # listed students are on the roster even if not under users:
"""


def test_design_example():
    roster = parse(DESIGN_EXAMPLE)
    assert {login: p.tier for login, p in roster.people.items()} == {
        "alice": "root",
        "bob": "admin",
        "carol": "power",
        "dave": "student",
        "erin": "student",
    }
    # erin is known only from the course: her line is where she is listed
    assert roster.people["erin"].line == 11
    assert roster.people["dave"].line == 5
    course = roster.courses["data101"]
    assert course.title == "Data Analytics with Python"
    assert course.with_role("instructor") == ["bob"]
    assert course.with_role("ta") == ["carol"]
    assert course.with_role("student") == ["dave", "erin"]
    assert roster.blocked == frozenset()
    assert roster.warnings == ()


def test_yaml_long_and_short_forms():
    roster = parse(
        """\
        users:
          alice: admin
          bob: {tier: Power, github_id: 42, name: Bob Builder}
          carol:
            tier: student
          dave:
          erin: {}
        """
    )
    people = roster.people
    assert [(p.login, p.tier) for p in people.values()] == [
        ("alice", "admin"),
        ("bob", "power"),
        ("carol", "student"),
        ("dave", "student"),
        ("erin", "student"),
    ]
    assert people["bob"].github_id == 42
    assert people["bob"].name == "Bob Builder"
    assert people["alice"].github_id is None
    assert [p.line for p in people.values()] == [2, 3, 4, 6, 7]


def test_userlist():
    roster = parse(
        """\
        # the classic userlist

        Alice admin
        bob            # trailing comment
          carol   POWER
        dave student
        """,
        "userlist",
    )
    assert {login: (p.tier, p.line) for login, p in roster.people.items()} == {
        "alice": ("admin", 3),
        "bob": ("student", 4),
        "carol": ("power", 5),
        "dave": ("student", 6),
    }
    assert roster.courses == {}


def test_courses_only_roster():
    """Listed students are on the roster even with no ``users:`` at all."""
    roster = parse(
        """\
        courses:
          data101:
            students: [dave, erin]
        """
    )
    assert sorted(roster.people) == ["dave", "erin"]
    assert roster.tier("erin") == "student"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("users:\ncourses:\n  c1:\n    students: [a]\n", id="null users"),
        pytest.param("users:\n  a: {}\ncourses:\n  c1:\n", id="null course"),
        pytest.param("users:\n  a: {}\ncourses:\n  c1:\n    students:\n", id="null role list"),
        pytest.param("users:\n  a: {}\nblocked:\ncourses:\n", id="null blocked and courses"),
    ],
)
def test_empty_sections_are_allowed(text):
    assert sorted(parse(text).people) == ["a"]


def test_yaml_scalars_stay_logins():
    """YAML 1.1 would read these as booleans or numbers: a roster must not."""
    roster = parse(
        """\
        users:
          '123': {}
        courses:
          c1:
            students: [yes, no, on, 0123, 1e3]
        """
    )
    assert sorted(roster.people) == ["0123", "123", "1e3", "no", "on", "yes"]


def test_longest_valid_login():
    login = "a" * 38 + "9"
    assert login in parse(f"users:\n  {login}: {{}}\n")


def test_digest_follows_content():
    first = parse("users:\n  alice: {}\n")
    assert first.digest == parse("users:\n  alice: {}\n").digest
    assert first.digest != parse("users:\n  alice: power\n").digest


# -- format detection --------------------------------------------------------


@pytest.mark.parametrize(
    "path, text, expected",
    [
        ("r.yaml", "alice\nbob\n", "yaml"),
        ("r.yml", "alice\n", "yaml"),
        ("R.YAML", "alice\n", "yaml"),
        ("r.txt", "users:\n  alice: {}\n", "yaml"),
        ("roster", "---\nusers: {}\n", "yaml"),
        ("roster", "- alice\n", "yaml"),
        ("roster", "# header: with a colon\n\nalice admin\n", "userlist"),
        ("roster", "alice\n", "userlist"),
        ("r.txt", "", "userlist"),
    ],
)
def test_guess_format(path, text, expected):
    assert guess_format(text, path) == expected


def test_yaml_detected_by_content_without_extension():
    roster = parse("users:\n  alice: root\n", "roster.txt")
    assert roster.tier("alice") == "root"


def test_yaml_extension_wins_over_content():
    """A userlist saved as .yaml is parsed (and rejected) as YAML."""
    error = rejected("alice\nbob\n", "r.yaml")
    assert_single_problem(error, "r.yaml", 1, "roster: expected a mapping, got 'alice bob'")


def test_explicit_format():
    assert parse_roster("alice root\n", "r.yaml", fmt="userlist").tier("alice") == "root"
    assert parse_roster("users:\n  alice: root\n", "r.txt", fmt="yaml").tier("alice") == "root"
    with pytest.raises(ValueError, match="unknown roster format 'toml'"):
        parse_roster("alice\n", "r", fmt="toml")


# -- errors: one table, one problem each ---------------------------------------

LONG_COURSE = "c" * 65

ERROR_CASES = [
    # invalid YAML
    ("unclosed brace", "users:\n  alice: {tier: root\n  bob: {}\n", 3, "invalid YAML: expected ',' or '}'"),
    ("unclosed list", "courses:\n  c1:\n    students: [a, b\n", 4, "invalid YAML: expected ',' or ']'"),
    ("tab indentation", "users:\n\talice: {}\n", 2, "invalid YAML: found character"),
    ("bad dedent", "users:\n  alice: {}\n bob: {}\n", 3, "invalid YAML: expected <block end>"),
    # empty
    ("empty yaml", "", 1, "roster is empty: expected 'users:' and/or 'courses:'"),
    ("comment-only yaml", "# nobody yet\n", 1, "roster is empty"),
    ("only blocked", "blocked: [eve]\n", 1, "roster is empty: no users listed"),
    ("no people", "users: {}\ncourses: {}\n", 1, "roster is empty: no users listed"),
    # shape
    ("top-level list", "- alice\n- bob\n", 1, "roster: expected a mapping, got a list"),
    ("unknown top key", "users:\n  alice: {}\nstaff: [bob]\n", 3, "roster: unknown key 'staff' (expected one of users, courses, blocked)"),
    ("duplicate top key", "users:\n  a: {}\nusers:\n  b: {}\n", 3, "roster: duplicate key 'users' (first at line 1)"),
    ("users is a list", "users: [alice, bob]\n", 1, "users: expected a mapping, got a list"),
    ("user is a list", "users:\n  alice: [root]\n", 2, "user 'alice': expected a mapping, got a list"),
    ("non-scalar user key", "users:\n  ? [a]\n  : {}\n", 2, "users: keys must be plain names"),
    ("unknown user key", "users:\n  alice:\n    tier: root\n    email: a@x\n", 4, "user 'alice': unknown key 'email' (expected one of tier, github_id, name)"),
    ("unknown course key", "courses:\n  c1:\n    graders: [bob]\n", 3, "course 'c1': unknown key 'graders'"),
    ("course is a list", "courses:\n  c1: [bob]\n", 2, "course 'c1': expected a mapping, got a list"),
    ("role is a string", "courses:\n  c1:\n    students: bob\n", 3, "course c1 students: expected a list of logins, got 'bob'"),
    ("role is a mapping", "courses:\n  c1:\n    instructors: {bob: 1}\n", 3, "course c1 instructors: expected a list of logins, got a mapping"),
    ("role item is a mapping", "courses:\n  c1:\n    students:\n      - a\n      - {b: 1}\n", 5, "course c1 students: expected a login, got a mapping"),
    ("blocked is a string", "users:\n  a: {}\nblocked: eve\n", 3, "blocked: expected a list of logins, got 'eve'"),
    # tiers
    ("unknown tier, long form", "users:\n  alice:\n    tier: god\n", 3, "user 'alice': unknown tier 'god' (expected one of root, admin, power, student)"),
    ("unknown tier, shorthand", "users:\n  bob: {}\n  alice: god\n", 3, "user 'alice': unknown tier 'god'"),
    ("empty tier", "users:\n  alice: {tier: ''}\n", 2, "user 'alice': unknown tier ''"),
    ("unknown tier, userlist", ("alice\nbob god\n", "userlist"), 2, "unknown tier 'god' (expected one of root, admin, power, student)"),
    ("three words, userlist", ("alice\n\nbob admin extra\n", "userlist"), 3, "expected 'login [tier]', got 'bob admin extra'"),
    # logins
    ("leading hyphen", "users:\n  -alice: {}\n", 2, "user: '-alice' is not a valid GitHub login"),
    ("trailing hyphen", "users:\n  alice-: {}\n", 2, "'alice-' is not a valid GitHub login"),
    ("double hyphen", "users:\n  al--ice: {}\n", 2, "'al--ice' is not a valid GitHub login"),
    ("40 characters", "users:\n  " + "a" * 40 + ": {}\n", 2, "'" + "a" * 40 + "' is not a valid GitHub login"),
    ("space", "users:\n  al ice: {}\n", 2, "'al ice' is not a valid GitHub login"),
    ("underscore", "users:\n  al_ice: {}\n", 2, "'al_ice' is not a valid GitHub login"),
    ("non-ASCII", "users:\n  alïce: {}\n", 2, "'alïce' is not a valid GitHub login"),
    ("empty course entry", "users:\n  a: {}\ncourses:\n  c1:\n    students: ['']\n", 5, "course c1 students: expected a GitHub login, got ''"),
    ("bad login in course", "courses:\n  c1:\n    tas: [ok, bad--one]\n", 3, "course c1 tas: 'bad--one' is not a valid GitHub login"),
    ("bad login in blocked", "users:\n  a: {}\nblocked:\n  - -eve\n", 4, "blocked: '-eve' is not a valid GitHub login"),
    ("bad login, userlist", ("alice\nbob_b power\n", "userlist"), 2, "user: 'bob_b' is not a valid GitHub login"),
    # duplicates
    ("duplicate user, other case", "users:\n  alice: {}\n  Alice: {tier: root}\n", 3, "duplicate user 'Alice': already listed at line 2 (as 'alice')"),
    ("duplicate YAML key", "users:\n  alice: {}\n  bob: {}\n  alice: power\n", 4, "users: duplicate key 'alice' (first at line 2)"),
    ("duplicate user, userlist", ("ALICE\nbob\nalice admin\n", "userlist"), 3, "duplicate user 'alice': already listed at line 1 (as 'ALICE')"),
    # github ids
    ("github_id string", "users:\n  alice:\n    github_id: abc\n", 3, "user 'alice': github_id must be a positive integer"),
    ("github_id negative", "users:\n  alice:\n    tier: power\n    github_id: -5\n", 4, "user 'alice': github_id must be a positive integer"),
    ("tier as a list", "users:\n  alice:\n    tier: [root]\n", 3, "user 'alice': tier must be a name, got a list"),
    ("name as a mapping", "users:\n  alice:\n    name: {first: A}\n", 3, "user 'alice': name must be text, got a mapping"),
    ("github_id zero", "users:\n  alice: {github_id: 0}\n", 2, "github_id must be a positive integer"),
    ("github_id quoted", "users:\n  alice:\n    github_id: '12'\n", 3, "github_id must be a positive integer"),
    ("github_id float", "users:\n  alice:\n    github_id: 12.5\n", 3, "github_id must be a positive integer"),
    ("github_id bool", "users:\n  alice:\n    github_id: true\n", 3, "github_id must be a positive integer"),
    ("github_id shared", "users:\n  alice: {github_id: 7}\n  bob: {}\n  carol: {github_id: 7}\n", 4, "github_id 7 of 'carol' is also given to 'alice'"),
    # blocked and course membership
    ("course member blocked", "users:\n  a: {}\nblocked: [eve]\ncourses:\n  c1:\n    students: [a, Eve]\n", 6, "course c1: 'Eve' is blocked (line 3)"),
    ("blocked user under users", "users:\n  alice: {}\nblocked:\n  - Alice\n", 4, "'Alice' is blocked but also listed under users (line 2)"),
    ("two roles in one course", "courses:\n  c1:\n    instructors: [bob]\n    tas: [tom]\n    students: [BOB]\n", 5, "course c1: 'BOB' is listed as student and as instructor (line 3)"),
    # course ids
    ("course id starts with digit", "courses:\n  1course:\n    students: [a]\n", 2, "course '1course': ids use letters, digits"),
    ("course id one character", "courses:\n  c:\n    students: [a]\n", 2, "course 'c': ids use"),
    ("course id with dot", "courses:\n  data.101:\n    students: [a]\n", 2, "course 'data.101': ids use"),
    ("course id with space", "courses:\n  data 101:\n    students: [a]\n", 2, "course 'data 101': ids use"),
    ("course id ends with hyphen", "courses:\n  data-:\n    students: [a]\n", 2, "course 'data-': ids use"),
    ("course id 65 characters", f"courses:\n  {LONG_COURSE}:\n    students: [a]\n", 2, "2-64 characters"),
    ("duplicate course, other case", "courses:\n  Data101:\n    students: [a]\n  data101:\n    students: [b]\n", 4, "duplicate course 'data101' (ids are case-insensitive)"),
]


@pytest.mark.parametrize(
    "source, line, fragment",
    [pytest.param(source, line, fragment, id=name) for name, source, line, fragment in ERROR_CASES],
)
def test_error(source, line, fragment):
    text, path = source if isinstance(source, tuple) else (source, PATH)
    # parse_roster directly: no dedent, so tabs and indentation stay as written
    with pytest.raises(RosterError) as info:
        parse_roster(text, path)
    assert_single_problem(info.value, path, line, fragment)


def test_all_errors_reported_sorted_by_line():
    # Sections are read users -> blocked -> courses, whatever their order in
    # the file; the report must still follow the file.
    error = rejected(
        """\
        blocked: [-x]
        courses:
          c1:
            students: bob
        users:
          alice: god
          carol: {github_id: 0}
          Alice: {}
        """
    )
    assert [(p.line, p.message) for p in error.problems] == [
        (1, "blocked: '-x' is not a valid GitHub login"),
        (4, "course c1 students: expected a list of logins, got 'bob'"),
        (6, "user 'alice': unknown tier 'god' (expected one of root, admin, power, student)"),
        (7, "user 'carol': github_id must be a positive integer"),
    ]
    assert str(error).splitlines() == [f"{PATH}:{p.line}: {p.message}" for p in error.problems]


def test_userlist_errors_reported_together():
    error = rejected("ok\nbad--login\nfine root\nx y z\nz wizard\n", "users.txt")
    assert [p.line for p in error.problems] == [2, 4, 5]
    assert str(error).splitlines()[0] == "users.txt:2: user: 'bad--login' is not a valid GitHub login"


def test_fatal_error_also_lists_warnings():
    error = rejected(
        """\
        users:
          opal: admin
          bad--one: {}
        courses:
          c1:
            students: [opal]
        """
    )
    assert [(p.line, p.fatal) for p in error.problems] == [(2, False), (3, True)]
    assert str(error).splitlines()[0].startswith(f"{PATH}:2: warning: course c1 lists admin-tier")


# -- files ---------------------------------------------------------------------


def test_load_roster_from_file(tmp_path):
    path = tmp_path / "class.yaml"
    path.write_text(DESIGN_EXAMPLE)
    roster = load_roster(path)
    assert roster.path == str(path)
    assert len(roster) == 5


def test_non_utf8_file(tmp_path):
    path = tmp_path / "roster.yaml"
    path.write_bytes(b"users:\n  alice: {}\n  b\xe9a: {}\n")
    with pytest.raises(RosterError) as info:
        load_roster(path)
    assert_single_problem(info.value, str(path), 3, "roster is not valid UTF-8")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(RosterError) as info:
        load_roster(path)
    assert_single_problem(info.value, str(path), 0, "cannot read roster: No such file or directory")


# -- normalization ---------------------------------------------------------------

MIXED_CASE = """\
users:
  Alice: {tier: Root, github_id: 101}
  BOB: admin
  carol: {github_id: 303}
blocked: [Mallory, EVE]
courses:
  Data101:
    title: Data
    instructors: [bob]
    tas: [CAROL]
    students: [Dave, alice]
  bio202:
    instructors: [Carol]
    students: [DAVE, Erin]
"""


@pytest.fixture
def mixed():
    return parse(MIXED_CASE)


def test_logins_lower_cased_everywhere(mixed):
    assert sorted(mixed.people) == ["alice", "bob", "carol", "dave", "erin"]
    assert all(p.login == login for login, p in mixed.people.items())
    assert mixed.blocked == {"mallory", "eve"}
    assert sorted(mixed.courses) == ["bio202", "data101"]
    assert dict(mixed.courses["data101"].members) == {
        "bob": "instructor",
        "carol": "ta",
        "dave": "student",
        "alice": "student",
    }
    assert dict(mixed.courses["bio202"].members) == {
        "carol": "instructor",
        "dave": "student",
        "erin": "student",
    }


@pytest.mark.parametrize(
    "login, tier",
    [("ALICE", "root"), ("alice", "root"), ("Bob", "admin"), ("erin", "student"), ("eve", None), ("zed", None)],
)
def test_lookup_is_case_insensitive(mixed, login, tier):
    assert mixed.tier(login) == tier
    assert (login in mixed) is (tier is not None)


def test_login_for_github_id(mixed):
    assert mixed.login_for_github_id(101) == "alice"
    assert mixed.login_for_github_id(303) == "carol"
    assert mixed.login_for_github_id(999) is None


def test_course_only_people_are_students(mixed):
    assert mixed.people["dave"].tier == "student"
    assert mixed.people["erin"].tier == "student"
    # listed under users: the users entry's tier and line win
    assert mixed.people["carol"].line == 4


@pytest.mark.parametrize(
    "login, expected",
    [
        ("DAVE", {"data101": "student", "bio202": "student"}),
        ("carol", {"data101": "ta", "bio202": "instructor"}),
        ("bob", {"data101": "instructor"}),
        ("alice", {"data101": "student"}),
        ("mallory", {}),
        ("zed", {}),
    ],
)
def test_courses_of(mixed, login, expected):
    assert dict(mixed.courses_of(login)) == expected


def test_memberships_are_read_only(mixed):
    with pytest.raises(TypeError):
        mixed.memberships["dave"]["data101"] = "instructor"
    with pytest.raises(TypeError):
        mixed.courses["data101"].members["zed"] = "student"


# -- warnings and summary --------------------------------------------------------


def test_privileged_students_warn(mixed):
    # alice (root) is a student of data101: its instructor could open her server
    assert len(mixed.warnings) == 1
    warning = mixed.warnings[0]
    assert not warning.fatal
    assert warning.line == 2
    assert str(warning) == (
        f"{PATH}:2: warning: course data101 lists root-tier user 'alice' as a student: "
        "its instructors can open that user's server"
    )


@pytest.mark.parametrize(
    "tier, warns",
    [("root", True), ("admin", True), ("power", False), ("student", False)],
)
def test_warning_per_tier(tier, warns):
    roster = parse(f"users:\n  pat: {tier}\ncourses:\n  c1:\n    students: [pat]\n")
    assert bool(roster.warnings) is warns


def test_privileged_staff_do_not_warn():
    roster = parse("users:\n  pat: admin\ncourses:\n  c1:\n    instructors: [pat]\n    tas: [PAT2]\n")
    assert roster.warnings == ()


def test_summary(mixed):
    assert mixed.summary().splitlines() == [
        f"{PATH}: 5 people, 2 courses",
        "  root     1",
        "  admin    1",
        "  power    0",
        "  student  3",
        "  blocked  2",
        "  course data101 (Data): 1 instructors, 1 tas, 2 students",
        "  course bio202: 1 instructors, 0 tas, 2 students",
        str(mixed.warnings[0]),
    ]


def test_summary_without_blocked():
    assert "blocked" not in parse("users:\n  a: {}\n").summary()


# -- access policy -----------------------------------------------------------------

ACCESS_ROSTER = """\
users:
  rooty: root
  opal: admin
  pia: power
  stu: {}
  ines: {}
blocked: [mal]
courses:
  data101:
    instructors: [ines]
    tas: [tara]
    students: [sam, sue]
  bio202:
    instructors: [ivan]
    tas: [tom]
    students: [bea, sue]
"""


@pytest.fixture
def access_roster():
    return parse(ACCESS_ROSTER)


@pytest.mark.parametrize(
    "login, tier, admin, groups, roles",
    [
        ("rooty", "root", True, ["tier-root"], ["user", "admin"]),
        ("opal", "admin", False, ["tier-admin"], ["user", "classroom-admin"]),
        ("pia", "power", False, ["tier-power"], ["user"]),
        ("stu", "student", False, ["tier-student"], ["user"]),
        ("ines", "student", False, ["course-data101-instructors", "tier-student"], ["user", "course-data101-instructor"]),
        ("IVAN", "student", False, ["course-bio202-instructors", "tier-student"], ["user", "course-bio202-instructor"]),
        ("tara", "student", False, ["course-data101-tas", "tier-student"], ["user"]),
        ("sam", "student", False, ["course-data101-students", "tier-student"], ["user"]),
        ("Sue", "student", False, ["course-bio202-students", "course-data101-students", "tier-student"], ["user"]),
    ],
)
def test_default_grants(access_roster, login, tier, admin, groups, roles):
    grant = AccessPolicy().grant(access_roster, login)
    assert grant.tier == tier
    assert grant.admin is admin
    assert list(grant.groups) == groups
    assert list(grant.role_names) == roles


@pytest.mark.parametrize("login", ["mal", "MAL", "nobody"])
def test_not_admitted(access_roster, login):
    assert AccessPolicy().grant(access_roster, login) is None


def test_instructor_scopes_stay_in_their_course(access_roster):
    grant = AccessPolicy().grant(access_roster, "ines")
    role = dict(zip(grant.role_names, grant.roles))["course-data101-instructor"]
    assert role["scopes"] == sorted(
        [
            "list:users!group=course-data101-students",
            "read:users!group=course-data101-students",
            "admin:servers!group=course-data101-students",
            "access:servers!group=course-data101-students",
        ]
    )
    assert not any("bio202" in scope for scope in role["scopes"])


def test_admin_tier_scopes(access_roster):
    grant = AccessPolicy().grant(access_roster, "opal")
    role = grant.roles[1]
    assert role["scopes"] == sorted(DEFAULT_TIER_SCOPES["admin"])
    # never the servers of root or of other admins
    assert not any("tier-root" in s or "tier-admin" in s for s in role["scopes"])


def test_root_gets_jupyterhubs_admin_role(access_roster):
    grant = AccessPolicy().grant(access_roster, "rooty")
    admin_role = grant.roles[1]
    assert admin_role["name"] == "admin"
    assert "admin:users" in admin_role["scopes"]


@pytest.mark.parametrize("login", ["rooty", "opal", "pia", "stu", "ines", "sam"])
def test_everyone_scopes_reach_every_tier(access_roster, login):
    access = "access:services!service=classroom"
    policy = AccessPolicy(everyone_scopes=[access])
    roles = {r["name"]: r for r in policy.grant(access_roster, login).roles}
    assert roles["classroom-everyone"]["scopes"] == [access]
    assert "classroom-everyone" in {r["name"] for r in policy.all_roles(access_roster)}
    # without it, no such role
    assert "classroom-everyone" not in {r["name"] for r in AccessPolicy().grant(access_roster, login).roles}


@pytest.mark.parametrize(
    "login, extra, tier",
    [
        ("stu", "power", "power"),  # extra is higher: it wins
        ("opal", "student", "admin"),  # roster is higher: it stays
        ("rooty", "admin", "root"),
        ("nobody", "admin", "admin"),  # admitted by the extra tier alone
        ("stu", None, "student"),
    ],
)
def test_extra_tier_takes_the_higher(access_roster, login, extra, tier):
    grant = AccessPolicy().grant(access_roster, login, extra_tier=extra)
    assert grant.tier == tier
    assert f"tier-{tier}" in grant.groups
    assert grant.admin is (tier == "root")


def test_extra_tier_keeps_course_memberships(access_roster):
    grant = AccessPolicy().grant(access_roster, "ines", extra_tier="admin")
    assert grant.groups == ("course-data101-instructors", "tier-admin")
    assert grant.role_names == ("user", "classroom-admin", "course-data101-instructor")


def test_blocked_beats_extra_tier(access_roster):
    assert AccessPolicy().grant(access_roster, "mal", extra_tier="root") is None


def test_configured_scopes(access_roster):
    policy = AccessPolicy(
        tier_scopes={"power": ["read:users"], "admin": []},
        course_scopes={"ta": ["read:users!group={students}", "read:groups!group={tas}"], "instructor": []},
    )
    assert policy.grant(access_roster, "pia").role_names == ("user", "classroom-power")
    assert policy.grant(access_roster, "opal").role_names == ("user",)
    assert policy.grant(access_roster, "ines").role_names == ("user",)
    ta = policy.grant(access_roster, "tara")
    assert ta.role_names == ("user", "course-data101-ta")
    assert ta.roles[1]["scopes"] == [
        "read:groups!group=course-data101-tas",
        "read:users!group=course-data101-students",
    ]


def test_all_roles(access_roster):
    names = sorted(r["name"] for r in AccessPolicy().all_roles(access_roster))
    assert names == ["classroom-admin", "course-bio202-instructor", "course-data101-instructor"]


def test_roles_and_scopes_are_valid_for_jupyterhub():
    course = "c" + "x" * 62 + "9"  # the longest course id
    roster = parse(f"courses:\n  {course}:\n    instructors: [i]\n    tas: [t]\n    students: [s]\n")
    policy = AccessPolicy(course_scopes={"ta": ["read:users!group={students}"]})
    roles = policy.all_roles(roster)
    assert len(roles) == 3
    for role in roles:
        _validate_role_name(role["name"])
        _check_scopes_exist(role["scopes"])
    for scopes in [*DEFAULT_TIER_SCOPES.values(), *DEFAULT_COURSE_SCOPES.values()]:
        _check_scopes_exist([s.format(students="g", tas="g", instructors="g") for s in scopes])


def test_auth_fields_are_copies(access_roster):
    """JupyterHub's sync_roles writes into the role dicts it is given: that
    must not leak into the grant (or into other users' grants)."""
    policy = AccessPolicy()
    grant = policy.grant(access_roster, "ines")
    fields = grant.auth_fields()
    assert fields == {
        "admin": False,
        "groups": ["course-data101-instructors", "tier-student"],
        "roles": [dict(r) for r in grant.roles],
    }
    for role in fields["roles"]:
        role["managed_by_auth"] = True
    fields["groups"].append("x")
    again = policy.grant(access_roster, "stu").auth_fields()
    assert "managed_by_auth" not in again["roles"][0]
    assert "managed_by_auth" not in grant.roles[1]
    assert grant.groups == ("course-data101-instructors", "tier-student")


# -- classroomhub roster check ---------------------------------------------------


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "class.yaml"
    path.write_text(ACCESS_ROSTER)
    return path


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("users:\n  alice: god\n  ok: {}\n  -bad: {}\n")
    return path


def test_cli_check_good(good_file, capsys):
    assert cli.main(["roster", "check", str(good_file)]) == 0
    out, err = capsys.readouterr()
    assert out == load_roster(good_file).summary() + "\n"
    assert out.startswith(f"{good_file}: 11 people, 2 courses\n")
    assert err == ""


def test_cli_check_bad(bad_file, capsys):
    assert cli.main(["roster", "check", str(bad_file)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{bad_file}:2: user 'alice': unknown tier 'god' (expected one of root, admin, power, student)",
        f"{bad_file}:4: user: '-bad' is not a valid GitHub login",
        f"{bad_file}: 2 error(s); roster not usable",
    ]


def test_cli_check_missing(tmp_path, capsys):
    path = tmp_path / "missing.yaml"
    assert cli.main(["roster", "check", str(path)]) == 1
    assert capsys.readouterr().err.startswith(f"{path}:0: cannot read roster")


def test_cli_check_verbose(good_file, capsys):
    assert cli.main(["roster", "check", "-v", str(good_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    per_person = [line for line in lines if line.startswith("  ") and ";" in line]
    assert len(per_person) == 11
    assert "  ines: student; groups course-data101-instructors, tier-student; roles user, course-data101-instructor" in lines
    assert "  rooty: root; groups tier-root; roles user, admin" in lines
    assert "  sue: student; groups course-bio202-students, course-data101-students, tier-student; roles user" in lines
    # sorted by login, after the summary
    assert per_person == sorted(per_person)
    assert lines[0] == f"{good_file}: 11 people, 2 courses"


def test_cli_check_prints_warnings_on_success(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("users:\n  opal: admin\ncourses:\n  c1:\n    students: [opal]\n")
    assert cli.main(["roster", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}:2: warning: course c1 lists admin-tier user 'opal' as a student" in out


def test_cli_check_needs_a_file(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["roster", "check"])
    assert info.value.code == 2


def test_console_script(good_file, bad_file, tmp_path):
    """The installed ``classroomhub`` entry point, in a real process."""
    script = Path(sys.executable).with_name("classroomhub")
    assert script.exists(), f"console script missing next to {sys.executable}"
    ok = subprocess.run([script, "roster", "check", good_file], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"{good_file}: 11 people, 2 courses\n")
    bad = subprocess.run([script, "roster", "check", bad_file], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert f"{bad_file}:4: user: '-bad' is not a valid GitHub login" in bad.stderr.splitlines()
    assert bad.stdout == ""
