"""Parse and validate roster files.

A roster is the single source of truth for who may use the hub, at which
tier, and in which courses. Two formats are accepted and produce the same
:class:`Roster` model:

* YAML with ``users``, ``courses`` and ``blocked`` keys;
* the classic "userlist": one GitHub login per line, optionally followed
  by a tier.

Every problem is reported with the file and line it comes from, and all
problems of a file are reported at once.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import yaml

from .tiers import DEFAULT_TIER, TIERS, unknown_tier

# libyaml's composer is about 4x faster on large rosters; a file it rejects is
# composed again by the pure-Python loader, whose error messages read better.
_FastLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: Course roles, most privileged first, and the roster key listing each.
COURSE_ROLES = ("instructor", "ta", "student")
COURSE_ROLE_KEYS = {"instructors": "instructor", "tas": "ta", "students": "student"}

USER_KEYS = ("tier", "github_id", "name")
COURSE_KEYS = ("title", *COURSE_ROLE_KEYS)
TOP_KEYS = ("users", "courses", "blocked")

# GitHub's own rule: alphanumerics and single hyphens, no leading/trailing
# hyphen, at most 39 characters.
LOGIN_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){0,38}")
# Course ids end up in JupyterHub group and role names, whose rules are the
# strictest of the two (see jupyterhub.roles._role_name_pattern).
COURSE_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,62}[a-z0-9]")


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    message: str
    fatal: bool = True

    def __str__(self):
        kind = "" if self.fatal else "warning: "
        return f"{self.path}:{self.line}: {kind}{self.message}"


class RosterError(ValueError):
    """A roster file that cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def first_problem(self):
        """The first fatal problem (``file:line: problem``) on one line, saying
        how many more there are and how to list them."""
        problems = [p for p in self.problems if p.fatal] or self.problems
        more = len(problems) - 1
        hint = f" (and {more} more: `classroomhub roster check {problems[0].path}` lists them)" if more else ""
        return f"{problems[0]}{hint}"


@dataclass(frozen=True)
class Person:
    login: str
    tier: str = DEFAULT_TIER
    github_id: int | None = None
    name: str = ""
    line: int = 0


@dataclass(frozen=True)
class Course:
    id: str
    title: str
    #: login -> course role
    members: Mapping[str, str]

    def with_role(self, role):
        return sorted(login for login, r in self.members.items() if r == role)


@dataclass(frozen=True)
class Roster:
    path: str
    people: Mapping[str, Person]
    courses: Mapping[str, Course]
    blocked: frozenset
    digest: str
    warnings: tuple = ()
    #: login -> {course id: course role}, precomputed for the login path.
    memberships: Mapping[str, Mapping[str, str]] = field(default=None, repr=False)

    def __post_init__(self):
        index = {}
        for course in self.courses.values():
            for login, role in course.members.items():
                index.setdefault(login, {})[course.id] = role
        object.__setattr__(
            self,
            "memberships",
            MappingProxyType({k: MappingProxyType(v) for k, v in index.items()}),
        )

    def __contains__(self, login):
        return login.lower() in self.people

    def __len__(self):
        return len(self.people)

    def tier(self, login):
        person = self.people.get(login.lower())
        return person.tier if person else None

    def courses_of(self, login):
        return self.memberships.get(login.lower(), MappingProxyType({}))

    def login_for_github_id(self, github_id):
        for person in self.people.values():
            if person.github_id == github_id:
                return person.login
        return None

    def summary(self):
        """A short human-readable description, as printed by ``roster check``."""
        lines = [f"{self.path}: {len(self.people)} people, {len(self.courses)} courses"]
        for tier in TIERS:
            count = sum(1 for p in self.people.values() if p.tier == tier)
            lines.append(f"  {tier:<8} {count}")
        if self.blocked:
            lines.append(f"  blocked  {len(self.blocked)}")
        for course in self.courses.values():
            counts = ", ".join(
                f"{len(course.with_role(role))} {key}"
                for key, role in COURSE_ROLE_KEYS.items()
            )
            title = f" ({course.title})" if course.title else ""
            lines.append(f"  course {course.id}{title}: {counts}")
        lines.extend(str(w) for w in self.warnings)
        return "\n".join(lines)


def load_roster(path):
    """Read and validate the roster at *path*; raise :class:`RosterError`."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise RosterError([Problem(path, 0, f"cannot read roster: {e.strerror}")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise RosterError([Problem(path, line, "roster is not valid UTF-8")])
    return parse_roster(text, path)


def guess_format(text, path=""):
    """``"yaml"`` or ``"userlist"``: by extension, else by content."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".yaml", ".yml"):
        return "yaml"
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            return "yaml" if ":" in line or line.startswith("-") else "userlist"
    return "userlist"


def parse_roster(text, path="<roster>", fmt=None):
    fmt = fmt or guess_format(text, path)
    builder = _Builder(path)
    if fmt == "yaml":
        builder.read_yaml(text)
    elif fmt == "userlist":
        builder.read_userlist(text)
    else:
        raise ValueError(f"unknown roster format {fmt!r}")
    return builder.finish(hashlib.sha256(text.encode("utf-8")).hexdigest())


class _Builder:
    """Collects people, courses and problems while reading one file."""

    def __init__(self, path):
        self.path = path
        self.problems = []
        self.people = {}  # login -> Person
        self.spelled = {}  # login -> (spelling, line) as first written
        self.courses = {}
        self.blocked = {}  # login -> line
        self.implicit = {}  # login -> line, people known only from courses

    def error(self, line, message):
        self.problems.append(Problem(self.path, line, message))

    def warn(self, line, message):
        self.problems.append(Problem(self.path, line, message, fatal=False))

    def login(self, raw, line, what):
        """Normalize one login, or record why it is not one."""
        if not isinstance(raw, str) or not raw.strip():
            self.error(line, f"{what}: expected a GitHub login, got {raw!r}")
            return None
        login = raw.strip().lower()
        if not LOGIN_PATTERN.fullmatch(login):
            self.error(line, f"{what}: {raw!r} is not a valid GitHub login")
            return None
        return login

    def add_person(self, raw, line, tier=DEFAULT_TIER, github_id=None, name=""):
        login = self.login(raw, line, "user")
        if login is None:
            return
        if login in self.people:
            first, first_line = self.spelled[login]
            same = "" if first == raw else f" (as {first!r})"
            self.error(line, f"duplicate user {raw!r}: already listed at line {first_line}{same}")
            return
        self.spelled[login] = (raw, line)
        self.people[login] = Person(login, tier, github_id, name, line)

    # -- userlist ---------------------------------------------------------

    def read_userlist(self, text):
        for lineno, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) > 2:
                self.error(lineno, f"expected 'login [tier]', got {line.strip()!r}")
                continue
            tier = words[1].lower() if len(words) == 2 else DEFAULT_TIER
            if tier not in TIERS:
                self.error(lineno, unknown_tier(words[1]))
                continue
            self.add_person(words[0], lineno, tier)
        if not self.people and not self.problems:
            self.error(1, "roster is empty: no users listed")

    # -- YAML -------------------------------------------------------------

    def read_yaml(self, text):
        try:
            try:
                root = yaml.compose(text, Loader=_FastLoader)
            except yaml.YAMLError:
                root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else 1
            self.error(line, f"invalid YAML: {e.problem or e.context}")
            return
        except yaml.YAMLError as e:
            self.error(1, f"invalid YAML: {e}")
            return
        if root is None or (isinstance(root, yaml.ScalarNode) and root.value == ""):
            self.error(1, "roster is empty: expected 'users:' and/or 'courses:'")
            return
        top = self.mapping(root, "roster", TOP_KEYS)
        if top is None:
            return
        if "users" in top:
            self.read_users(top["users"][1])
        if "blocked" in top:
            self.read_blocked(top["blocked"][1])
        if "courses" in top:
            self.read_courses(top["courses"][1])
        if not self.people and not self.implicit and not self.problems:
            self.error(1, "roster is empty: no users listed")

    def mapping(self, node, what, allowed=None, allow_null=False):
        """Return {key: (key_node, value_node)} of a mapping node."""
        if allow_null and _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.error(_line(node), f"{what}: expected a mapping, got {_describe(node)}")
            return None
        result = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not key:
                self.error(_line(key_node), f"{what}: keys must be plain names")
                continue
            if key in result:
                first = _line(result[key][0])
                self.error(_line(key_node), f"{what}: duplicate key {key!r} (first at line {first})")
                continue
            if allowed is not None and key not in allowed:
                self.error(
                    _line(key_node),
                    f"{what}: unknown key {key!r} (expected one of {', '.join(allowed)})",
                )
                continue
            result[key] = (key_node, value_node)
        return result

    def sequence(self, node, what):
        if _is_null(node):
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.error(_line(node), f"{what}: expected a list of logins, got {_describe(node)}")
            return []
        items = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode):
                self.error(_line(item), f"{what}: expected a login, got {_describe(item)}")
                continue
            items.append((item.value, _line(item)))
        return items

    def read_users(self, node):
        users = self.mapping(node, "users", allow_null=True)
        for raw, (key_node, value_node) in (users or {}).items():
            line = _line(key_node)
            tier, github_id, name = DEFAULT_TIER, None, ""
            if isinstance(value_node, yaml.ScalarNode) and not _is_null(value_node):
                # shorthand: `alice: admin`
                tier = value_node.value.lower()
                if tier not in TIERS:
                    self.error(line, f"user {raw!r}: {unknown_tier(value_node.value)}")
                    continue
            else:
                fields = self.mapping(value_node, f"user {raw!r}", USER_KEYS, allow_null=True)
                if fields is None:
                    continue
                if "tier" in fields:
                    tier_node = fields["tier"][1]
                    if not isinstance(tier_node, yaml.ScalarNode):
                        self.error(_line(tier_node), f"user {raw!r}: tier must be a name, got {_describe(tier_node)}")
                        continue
                    tier = str(tier_node.value).lower()
                    if tier not in TIERS:
                        self.error(_line(tier_node), f"user {raw!r}: {unknown_tier(tier_node.value)}")
                        continue
                if "github_id" in fields:
                    id_node = fields["github_id"][1]
                    try:
                        github_id = int(id_node.value)
                        if github_id <= 0 or id_node.tag != "tag:yaml.org,2002:int":
                            raise ValueError
                    except (TypeError, ValueError):
                        self.error(_line(id_node), f"user {raw!r}: github_id must be a positive integer")
                        continue
                if "name" in fields:
                    name_node = fields["name"][1]
                    if not isinstance(name_node, yaml.ScalarNode):
                        self.error(_line(name_node), f"user {raw!r}: name must be text, got {_describe(name_node)}")
                        continue
                    name = "" if _is_null(name_node) else str(name_node.value)
            self.add_person(raw, line, tier, github_id, name)
        seen_ids = {}
        for person in self.people.values():
            if person.github_id is None:
                continue
            if person.github_id in seen_ids:
                other = seen_ids[person.github_id]
                self.error(
                    person.line,
                    f"github_id {person.github_id} of {person.login!r} is also given to {other!r}",
                )
            seen_ids[person.github_id] = person.login

    def read_blocked(self, node):
        for raw, line in self.sequence(node, "blocked"):
            login = self.login(raw, line, "blocked")
            if login is None:
                continue
            if login in self.people:
                self.error(
                    line,
                    f"{raw!r} is blocked but also listed under users (line {self.people[login].line})",
                )
            self.blocked.setdefault(login, line)

    def read_courses(self, node):
        courses = self.mapping(node, "courses", allow_null=True)
        for raw_id, (key_node, value_node) in (courses or {}).items():
            line = _line(key_node)
            course_id = raw_id.lower()
            if not COURSE_PATTERN.fullmatch(course_id):
                self.error(
                    line,
                    f"course {raw_id!r}: ids use letters, digits, '-' and '_', "
                    "start with a letter and are 2-64 characters",
                )
                continue
            if course_id in self.courses:
                self.error(line, f"duplicate course {raw_id!r} (ids are case-insensitive)")
                continue
            fields = self.mapping(value_node, f"course {raw_id!r}", COURSE_KEYS, allow_null=True)
            if fields is None:
                continue
            title = str(fields["title"][1].value) if "title" in fields else ""
            members, member_lines = {}, {}
            for key, role in COURSE_ROLE_KEYS.items():
                if key not in fields:
                    continue
                for raw, item_line in self.sequence(fields[key][1], f"course {course_id} {key}"):
                    login = self.login(raw, item_line, f"course {course_id} {key}")
                    if login is None:
                        continue
                    if login in members:
                        self.error(
                            item_line,
                            f"course {course_id}: {raw!r} is listed as {role} and as "
                            f"{members[login]} (line {member_lines[login]})",
                        )
                        continue
                    if login in self.blocked:
                        self.error(
                            item_line,
                            f"course {course_id}: {raw!r} is blocked (line {self.blocked[login]})",
                        )
                        continue
                    members[login] = role
                    member_lines[login] = item_line
                    if login not in self.people and login not in self.implicit:
                        self.implicit[login] = (raw, item_line)
            self.courses[course_id] = Course(course_id, title, MappingProxyType(members))

    def finish(self, digest):
        # People listed only in courses are on the roster with the default tier.
        for login, (raw, line) in self.implicit.items():
            if login not in self.people:
                self.people[login] = Person(login, DEFAULT_TIER, None, "", line)
        for course in self.courses.values():
            for login in course.with_role("student"):
                tier = self.people[login].tier
                if tier in ("root", "admin"):
                    self.warn(
                        self.people[login].line,
                        f"course {course.id} lists {tier}-tier user {login!r} as a student: "
                        "its instructors can open that user's server",
                    )
        fatal = [p for p in self.problems if p.fatal]
        if fatal:
            raise RosterError(sorted(self.problems, key=lambda p: p.line))
        return Roster(
            path=self.path,
            people=MappingProxyType(dict(self.people)),
            courses=MappingProxyType(dict(self.courses)),
            blocked=frozenset(self.blocked),
            digest=digest,
            warnings=tuple(self.problems),
        )


def account_problems(roster, policy):
    """What ``roster check`` reports for people whose system account on this
    host the hub must not use (see :class:`classroomhub.accounts.AccountPolicy`):
    one problem each, at the line that names them."""
    problems = []
    for login, person in sorted(roster.people.items()):
        why = policy.refusal(login)
        if why:
            problems.append(
                Problem(roster.path, person.line, f"{why}: no server, delivery or collection for this person")
            )
    return sorted(problems, key=lambda p: p.line)


def _line(node):
    return node.start_mark.line + 1


def _is_null(node):
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _describe(node):
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(node.value)
