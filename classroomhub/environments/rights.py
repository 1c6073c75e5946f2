"""Who may do what with shared environments, by roster and token.

Two gates, as for the classroom service's other staff powers: the person's
roster (tier, course roles) *and* their token's scope
(``custom:classroom:environments``, given per course as
``!group=course-<id>-students`` and unfiltered to the admin and root tiers).
The token's scope is asked through *holds* (``holds(course)``: the scope for
that course; ``holds(None)``: unfiltered), so this module needs no service.

* the admin and root tiers create, update and remove any environment;
* a course's instructors create and update environments whose audience is
  only courses they instruct (``course:<id>``), never ``everyone`` or a tier,
  and never one that another course may use;
* everyone else, TAs and students included, may only see the environments
  they may use (:func:`.visibility.may_use`) and change nothing.
"""

from __future__ import annotations

from ..access import course_group
from ..tiers import STAFF_TIERS, tier_group
from .visibility import may_use

#: the course role that may build environments for its course
BUILDER_ROLE = "instructor"


class NotAllowed(PermissionError):
    """The person may not do this; the message says who may."""


def groups_of(tier, courses):
    """The JupyterHub group names of a person of *tier* with *courses* ({id: role})."""
    return [tier_group(tier)] + [course_group(course, role) for course, role in courses.items()]


def manages_all(tier, holds):
    """The admin and root tiers, with a token carrying the unfiltered scope."""
    return tier in STAFF_TIERS and holds(None)


def audience_courses(audience):
    """The course ids of an audience made only of ``course:<id>`` entries, else None."""
    courses = []
    for entry in audience:
        kind, _, value = entry.partition(":")
        if kind != "course":
            return None
        courses.append(value)
    return courses


def builds_for(tier, courses, holds):
    """The courses whose environments this person may create and update (all: None)."""
    if manages_all(tier, holds):
        return None
    return sorted(c for c, role in courses.items() if role == BUILDER_ROLE and holds(c))


def check_may_change(tier, courses, holds, audience, what):
    """Refuse (:class:`NotAllowed`) unless the person may create or update an
    environment for *audience*; *what* names the action in the message."""
    if manages_all(tier, holds):
        return
    allowed = builds_for(tier, courses, holds)
    if not allowed:
        raise NotAllowed(f"Only the admin and root tiers and a course's instructors may {what}")
    wanted = audience_courses(audience)
    if wanted is None:
        raise NotAllowed(
            f"Instructors may {what} only for their own courses (audience course:<id>), "
            f"not for {', '.join(e for e in audience if not e.startswith('course:'))}"
        )
    others = sorted(set(wanted) - set(allowed))
    if others:
        raise NotAllowed(f"Not an instructor of {', '.join(others)}: you may {what} only for {', '.join(allowed)}")


def check_may_remove(tier, holds, name):
    if not manages_all(tier, holds):
        raise NotAllowed(f"Only the admin and root tiers may remove shared environments ({name})")


def may_see(spec, tier, courses, holds):
    """Whether the person may see *spec* (its packages, versions, build logs):
    those who may use it, and those who manage every environment."""
    return manages_all(tier, holds) or may_use(spec, groups_of(tier, courses))
