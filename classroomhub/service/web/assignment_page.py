"""The assignment page: due date, collection, submissions and feedback.

Server side it only checks who may see the page; the page's script does the
rest through the REST API (``assignments.py``, ``grading.py``) with the
browser's hub login, so every rule and every action has one implementation.
Dates are sent in UTC and shown in the viewer's own time zone.
"""

from __future__ import annotations

from markupsafe import Markup
from tornado import web

from .pages import PageHandler


class AssignmentPage(PageHandler):
    @web.authenticated
    async def get(self, course_id, material):
        person = await self.person()
        await self.course(course_id, person)
        release = self.release_or_404(course_id, material)
        self.render_page(
            "assignment.html",
            course=course_id,
            material=material,
            release_url=self.release_url(release),
            course_url=self.url("courses", course_id),
            api_url=self.url("api", "courses", course_id, "assignments", material),
            page_url=self.url("courses", course_id, "assignments", material),
            grader=person.can_see_reports(course_id),
            instructor=person.can_release(course_id),
            student=person.courses.get(course_id) == "student",
            me=person.name,
            xsrf_token=Markup(self.xsrf_token.decode()),
        )


def assignment_page_handlers(prefix):
    """List before the pages' catch-all."""
    name = r"([^/]+)"
    return [(prefix + f"courses/{name}/assignments/{name}/?", AssignmentPage)]
