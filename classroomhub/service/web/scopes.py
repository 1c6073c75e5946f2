"""The classroom service's JupyterHub scopes: what a token may do here.

A request reaches the service only with a token that carries
``access:services!service=classroom`` (JupyterHub's default for a service:
every roster person's own tokens do, a token issued to a single-user server
does not). Course staff powers need one of two custom scopes on top, for the
course at hand, and the roster's course role too (a second gate):

* ``custom:classroom:instruct`` — release material, set due dates and
  extensions, collect, choose the submission that counts, read the audit log;
* ``custom:classroom:grade`` — every student's delivery reports and
  submissions: view, download, copy into one's home, return feedback;
* ``custom:classroom:environments`` — create and update shared environments
  for the course (unfiltered: any environment, and remove them; the rules
  are ``environments.rights``).

The roster gives them per course as ``!group=course-<id>-students``
(instructors all three, TAs ``grade``) and unfiltered to the admin and root
tiers.
"""

from __future__ import annotations

from jupyterhub.services.auth import check_scopes

from ...access import course_group
from ...synchook import SERVICE_NAME, access_scope

__all__ = ["SERVICE_NAME", "INSTRUCT", "GRADE", "ENVIRONMENTS", "CUSTOM_SCOPES", "COURSE_SCOPES", "TIER_SCOPES", "access_scope", "allows"]
INSTRUCT = f"custom:{SERVICE_NAME}:instruct"
GRADE = f"custom:{SERVICE_NAME}:grade"
ENVIRONMENTS = f"custom:{SERVICE_NAME}:environments"
#: for ``c.JupyterHub.custom_scopes``
CUSTOM_SCOPES = {
    INSTRUCT: {
        "description": "Classroom service: release material, set due dates and extensions, collect,"
        " choose the submission that counts, read the audit log."
    },
    GRADE: {
        "description": "Classroom service: read every student's reports and submissions,"
        " copy them for grading, return feedback."
    },
    ENVIRONMENTS: {
        "description": "Classroom service: create and update the course's shared environments (unfiltered:"
        " every shared environment, and remove them)."
    },
}
#: per course role, as the roster authenticator's course scope templates
COURSE_SCOPES = {
    "instructor": [f"{INSTRUCT}!group={{students}}", f"{GRADE}!group={{students}}", f"{ENVIRONMENTS}!group={{students}}"],
    "ta": [f"{GRADE}!group={{students}}"],
}
#: per tier: the admin and root tiers have the service's powers in every course
TIER_SCOPES = {"root": [INSTRUCT, GRADE, ENVIRONMENTS], "admin": [INSTRUCT, GRADE, ENVIRONMENTS]}


def allows(token_scopes, scope, course=None):
    """Whether *token_scopes* (a token's expanded scopes, as the hub reports
    them) hold *scope* for *course* (None: for every course)."""
    required = scope if course is None else f"{scope}!group={course_group(course, 'student')}"
    return bool(check_scopes(required, set(token_scopes)))
