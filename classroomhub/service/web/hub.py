"""What the hub knows about people and courses, asked with the service's token.

The roster is the one source of truth; the hub holds it as groups
(``tier-<tier>``, ``course-<id>-instructors`` / ``-tas`` / ``-students``), so
the service reads those and keeps no copy. Answers are cached for a few
seconds: a roster change reaches the service as fast as it reaches the hub.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from ...roster import COURSE_ROLE_KEYS, COURSE_ROLES
from ...tiers import DEFAULT_TIER, STAFF_TIERS, tier_of
from .scopes import GRADE, INSTRUCT, allows

#: group suffix -> course role ("students" -> "student")
GROUP_ROLES = dict(COURSE_ROLE_KEYS)


@dataclass
class Person:
    """Who is asking, and with which token: the roster (tier, course roles)
    and the token's scopes must *both* allow a staff action."""

    name: str
    tier: str = DEFAULT_TIER
    courses: dict = field(default_factory=dict)  # course id -> "instructor" | "ta" | "student"
    #: the request's token's scopes; none: no staff powers at all
    scopes: frozenset = frozenset()

    @property
    def privileged(self):
        """The admin and root tiers, with a token carrying their every-course powers."""
        return self.tier in STAFF_TIERS and (allows(self.scopes, INSTRUCT) or allows(self.scopes, GRADE))

    def _may(self, scope, course, roles):
        roster = self.tier in STAFF_TIERS or self.courses.get(course) in roles
        return roster and allows(self.scopes, scope, course)

    def can_release(self, course):
        """Release, due dates, extensions, collection, overrides, the audit log."""
        return self._may(INSTRUCT, course, ("instructor",))

    def can_see_reports(self, course):
        """Every student's reports and submissions; copies; feedback."""
        return self._may(GRADE, course, ("instructor", "ta"))

    def can_open_servers(self, course, roles):
        """Whether the course's *roles* (see ``live_server_roles``) include this person's."""
        return self.can_see_reports(course) and (self.tier in STAFF_TIERS or self.courses.get(course) in roles)


def parse_group(name):
    """``course-data101-students`` -> (``data101``, ``student``); None otherwise."""
    if not name.startswith("course-"):
        return None
    rest = name[len("course-") :]
    course, _, suffix = rest.rpartition("-")
    if course and suffix in GROUP_ROLES:
        return course, GROUP_ROLES[suffix]
    return None


def person_from_groups(name, groups):
    person = Person(name)
    person.tier = tier_of(groups)
    for group in groups:
        parsed = parse_group(group)
        if parsed:
            course, role = parsed
            # one role per course in a valid roster; keep the strongest anyway
            held = person.courses.get(course)
            if held is None or COURSE_ROLES.index(role) < COURSE_ROLES.index(held):
                person.courses[course] = role
    return person


class HubClient:
    def __init__(self, api_url, token, cache_seconds=5.0, log=None):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.cache_seconds = cache_seconds
        self.log = log
        self._cache = {}

    async def _get(self, path):
        cached = self._cache.get(path)
        if cached and time.monotonic() - cached[0] < self.cache_seconds:
            return cached[1]
        request = HTTPRequest(
            self.api_url + path,
            headers={
                "Authorization": f"token {self.token}",
                "Accept": "application/jupyterhub-pagination+json",
            },
        )
        response = await AsyncHTTPClient().fetch(request)
        data = json.loads(response.body)
        self._cache[path] = (time.monotonic(), data)
        return data

    async def _all(self, path):
        items, offset = [], 0
        while True:
            page = await self._get(f"{path}?offset={offset}&limit=200")
            if isinstance(page, list):  # a hub without pagination
                return page
            items += page["items"]
            following = (page.get("_pagination") or {}).get("next")
            if not following:
                return items
            offset = following["offset"]

    async def person(self, name):
        """The tier and course roles of hub user *name* (a student with no course if unknown)."""
        try:
            model = await self._get(f"/users/{quote(name, safe='')}")
        except HTTPClientError as e:
            if e.code == 404:
                return Person(name)
            raise
        return person_from_groups(name, model.get("groups", []))

    async def courses(self):
        """{course id: {"instructor": [...], "ta": [...], "student": [...]}} from the hub's groups."""
        courses = {}
        for group in await self._all("/groups"):
            parsed = parse_group(group["name"])
            if parsed:
                course, role = parsed
                members = courses.setdefault(course, {r: [] for r in GROUP_ROLES.values()})
                members[role] = sorted(group.get("users", []))
        return courses
