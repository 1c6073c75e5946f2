"""What a roster grants: JupyterHub groups, roles and the admin flag.

:class:`AccessPolicy` computes it from a :class:`~classroomhub.roster.Roster`
without side effects, for the login path, the live roster sync and
``classroomhub roster check`` alike, so the three can never disagree.

Naming (stable, documented in docs/reference/access.md):

* ``tier-<tier>`` — one group per tier (:func:`classroomhub.tiers.tier_group`);
* ``course-<id>-instructors`` / ``-tas`` / ``-students`` — one group per
  course role;
* ``classroom-<tier>`` — the role carrying a tier's extra scopes;
* ``classroom-everyone`` — the role carrying ``everyone_scopes``, if any;
* ``course-<id>-instructor`` / ``-ta`` — the role carrying a course role's
  scopes, filtered to that course's students' group.
"""

from __future__ import annotations

from dataclasses import dataclass

from jupyterhub.roles import get_default_roles

from .roster import COURSE_ROLE_KEYS
from .tiers import DEFAULT_TIER_SCOPES, higher_tier, tier_group

_ROLE_GROUP_SUFFIX = {role: key for key, role in COURSE_ROLE_KEYS.items()}
#: Prefixes of the roles this package manages; anything else is left alone.
MANAGED_ROLE_PREFIXES = ("classroom-", "course-")

DEFAULT_COURSE_SCOPES = {
    "instructor": [
        "list:users!group={students}",
        "read:users!group={students}",
        "admin:servers!group={students}",
        "access:servers!group={students}",
    ],
    "ta": [],
    "student": [],
}


def course_group(course_id, role):
    return f"course-{course_id}-{_ROLE_GROUP_SUFFIX[role]}"


#: the role every roster person holds, when ``everyone_scopes`` is set
EVERYONE_ROLE = "classroom-everyone"


def tier_role_name(tier):
    return f"classroom-{tier}"


def course_role_name(course_id, role):
    return f"course-{course_id}-{role}"


@dataclass(frozen=True)
class Grant:
    """What one person gets; the fields of a JupyterHub auth model."""

    tier: str
    admin: bool
    groups: tuple
    roles: tuple  # role dicts, as JupyterHub's sync_roles expects

    @property
    def role_names(self):
        return tuple(r["name"] for r in self.roles)

    def auth_fields(self):
        return {
            "admin": self.admin,
            "groups": list(self.groups),
            "roles": [dict(r) for r in self.roles],
        }


def _plus(scopes, more):
    """Per-key scope lists *scopes* with the lists of *more* appended."""
    return {key: [*scopes.get(key, []), *(more or {}).get(key, [])] for key in {*scopes, *(more or {})}}


class AccessPolicy:
    """Turns roster entries into grants, given the scopes configured per
    tier and per course role (the authenticator's traits)."""

    def __init__(
        self,
        tier_scopes=None,
        course_scopes=None,
        everyone_scopes=(),
        service_tier_scopes=None,
        service_course_scopes=None,
    ):
        self.tier_scopes = _plus({**DEFAULT_TIER_SCOPES, **(tier_scopes or {})}, service_tier_scopes)
        self.course_scopes = _plus({**DEFAULT_COURSE_SCOPES, **(course_scopes or {})}, service_course_scopes)
        self.everyone_scopes = sorted(everyone_scopes)
        defaults = {r["name"]: r for r in get_default_roles()}
        self._user_role = defaults["user"]
        self._admin_role = defaults["admin"]

    def tier_role(self, tier):
        scopes = self.tier_scopes.get(tier) or []
        if not scopes:
            return None
        return {
            "name": tier_role_name(tier),
            "description": f"classroomhub: extra rights of the {tier} tier",
            "scopes": sorted(scopes),
        }

    def everyone_role(self):
        if not self.everyone_scopes:
            return None
        return {
            "name": EVERYONE_ROLE,
            "description": "classroomhub: what every person on the roster may do",
            "scopes": list(self.everyone_scopes),
        }

    def course_role(self, course_id, role):
        templates = self.course_scopes.get(role) or []
        if not templates:
            return None
        groups = {
            key: course_group(course_id, r) for key, r in COURSE_ROLE_KEYS.items()
        }
        return {
            "name": course_role_name(course_id, role),
            "description": f"classroomhub: {role} of course {course_id}",
            "scopes": sorted(t.format(**groups) for t in templates),
        }

    def grant(self, roster, login, extra_tier=None):
        """The grant for *login*, or None if the roster does not admit them.

        *extra_tier* is a tier obtained outside the roster (GitHub team
        mapping); the higher of the two applies.
        """
        login = login.lower()
        if login in roster.blocked:
            return None
        tier = higher_tier(roster.tier(login), extra_tier or None)
        if tier is None:
            return None
        groups = [tier_group(tier)]
        roles = [self._user_role]
        if tier == "root":
            roles.append(self._admin_role)
        for role in (self.everyone_role(), self.tier_role(tier)):
            if role:
                roles.append(role)
        for course_id, role in sorted(roster.courses_of(login).items()):
            groups.append(course_group(course_id, role))
            course_role = self.course_role(course_id, role)
            if course_role:
                roles.append(course_role)
        return Grant(tier, tier == "root", tuple(sorted(groups)), tuple(roles))

    def all_roles(self, roster):
        """Every managed role the roster defines (with no members)."""
        roles = {}
        everyone = self.everyone_role()
        if everyone:
            roles[everyone["name"]] = everyone
        for tier in self.tier_scopes:
            role = self.tier_role(tier)
            if role:
                roles[role["name"]] = role
        for course in roster.courses.values():
            for role_name in set(course.members.values()):
                role = self.course_role(course.id, role_name)
                if role:
                    roles[role["name"]] = role
        return list(roles.values())
