"""REST API of due dates, collection and submissions (see ``openapi.yaml``).

Same rules as the rest of the API (``api.BaseHandler``): a course's
instructors (and the admin and root tiers) set due dates and extensions and
collect; instructors and TAs read every submission; a student reads and
makes their own. The rules themselves are the domain's
(:mod:`..domain.assignments`, :mod:`..domain.collect`).
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from tornado import web

from ..domain.assignments import MAX_ID, parse_due
from ..domain.audit import record
from ..domain.collect import SubmissionsClosed
from ..domain.limits import TooMany
from .api import BaseHandler

ASSIGNMENT_KEYS = {"due": str, "late_seconds": int}
EXTENSION_KEYS = {"due": str}
COLLECT_KEYS = {"wait": bool}
GRADED_KEYS = {"submission": int}
# students per page of the submissions table
PAGE_DEFAULT, PAGE_MAX = 100, 500


class AssignmentBase(BaseHandler):
    @property
    def collector(self):
        return self.context.collector

    @property
    def rules(self):
        return self.context.rules

    def assignment_or_404(self, course_id, material):
        self.release_or_404(course_id, material)  # a due date belongs to a released material
        assignment = self.rules.assignment(course_id, material)
        if assignment is None:
            raise web.HTTPError(404, f"{material!r} of course {course_id!r} has no due date")
        return assignment

    def check_instructor(self, person, course_id):
        if not person.can_release(course_id):
            raise web.HTTPError(403, f"Only instructors of {course_id!r} (or admins) can do this")

    def refuse(self, e):
        """Answer a :class:`~..domain.limits.TooMany`: 429 with Retry-After for a rate past
        its limit, 403 for a count that will not reset (written here: an
        HTTPError's answer would lose the header)."""
        status = 403 if e.retry_after is None else 429
        if e.retry_after is not None:
            self.set_header("Retry-After", str(e.retry_after))
        self.write_json({"status": status, "message": str(e)}, status=status)

    def int_argument(self, name, default, low, high):
        value = self.get_query_argument(name, None)
        if value is None:
            return default
        if not value.isdigit() or not low <= int(value) <= high:
            raise web.HTTPError(400, f"{name!r} must be a whole number from {low} to {high}, not {value!r}")
        return int(value)


class AssignmentsHandler(AssignmentBase):
    async def get(self, course_id):
        person = await self.person()
        await self.course(course_id, person)
        items = []
        for release in self.context.releases.latest_releases([course_id]):
            assignment = self.rules.assignment(course_id, release.material)
            if assignment is None:
                continue
            data = assignment.to_dict()
            if not person.can_see_reports(course_id):
                data["your_due"] = self.rules.due_of(assignment, person.name).isoformat()
            items.append(data)
        self.write_json({"assignments": items})


class AssignmentHandler(AssignmentBase):
    async def get(self, course_id, material):
        person = await self.person()
        await self.course(course_id, person)
        self.write_json(self.assignment_or_404(course_id, material).to_dict())

    async def put(self, course_id, material):
        person = await self.person()
        await self.course(course_id, person)
        self.check_instructor(person, course_id)
        self.release_or_404(course_id, material)
        body = self.json_body(ASSIGNMENT_KEYS)
        if "due" not in body:
            raise web.HTTPError(400, "'due' is required")
        late = body.get("late_seconds", 0)
        with self.refusals():
            row = self.rules.set_due(course_id, material, body["due"], late, person.name)
        record(self.context, person, "set-due", course_id, material, "", f"due {row.due.isoformat()}, late window {late} s")
        self.write_json(row.to_dict())


class ExtensionHandler(AssignmentBase):
    async def put(self, course_id, material, student):
        person = await self.person()
        members = await self.course(course_id, person)
        self.check_instructor(person, course_id)
        self.assignment_or_404(course_id, material)
        if student not in members["student"]:
            raise web.HTTPError(404, f"{student!r} is not a student of {course_id!r}")
        with self.refusals():
            due = parse_due(self.json_body(EXTENSION_KEYS).get("due") or "")
        self.rules.set_extension(course_id, material, student, due, person.name)
        record(self.context, person, "extension", course_id, material, student, f"due {due.isoformat()}")
        self.write_json({"student": student, "due": due.isoformat()})

    async def delete(self, course_id, material, student):
        person = await self.person()
        await self.course(course_id, person)
        self.check_instructor(person, course_id)
        self.assignment_or_404(course_id, material)
        self.rules.set_extension(course_id, material, student, None, person.name)
        self.set_status(204)
        self.finish()


class CollectHandler(AssignmentBase):
    """Collect now, from every student (an instructor's button)."""

    async def get(self, course_id, material):
        """The progress of the running (or last) collection, for a progress bar."""
        person = await self.person()
        await self.course(course_id, person)
        self.check_instructor(person, course_id)
        self.release_or_404(course_id, material)
        self.write_json({"progress": self.collector.progress.get((course_id, material), {"running": False})})

    async def post(self, course_id, material):
        person = await self.person()
        members = await self.course(course_id, person)
        self.check_instructor(person, course_id)
        self.release_or_404(course_id, material)
        body = self.json_body(COLLECT_KEYS)
        task = asyncio.ensure_future(self.collector.collect(course_id, material, members["student"]))
        self.context.keep(task)
        record(self.context, person, "collect", course_id, material, "", f"{len(members['student'])} students")
        if body.get("wait"):
            rows = await task
            self.write_json({"submissions": [r.to_dict() for r in rows]}, status=201)
        else:
            # the task sets the progress once it runs; until then nobody is done
            starting = {"total": len(members["student"]), "done": 0, "running": True}
            self.write_json({"progress": self.collector.progress.get((course_id, material), starting)}, status=202)


class SubmitHandler(AssignmentBase):
    """A student hands in their work now (early, or late within the window)."""

    async def post(self, course_id, material):
        person = await self.person()
        await self.course(course_id, person)
        if person.courses.get(course_id) != "student":
            raise web.HTTPError(403, f"Only students of {course_id!r} hand in work")
        assignment = self.assignment_or_404(course_id, material)
        self.json_body({})
        try:
            row = await self.collector.hand_in(assignment, person.name)
        except SubmissionsClosed as e:
            raise web.HTTPError(403, str(e)) from None
        except TooMany as e:
            return self.refuse(e)
        if row.error:
            raise web.HTTPError(400, row.error)
        self.write_json(row.to_dict(), status=201)


class SubmissionsHandler(AssignmentBase):
    """The submissions table, one page of students at a time (``offset``, ``limit``)."""

    async def get(self, course_id, material):
        person = await self.person()
        self.check_query("offset", "limit")
        offset = self.int_argument("offset", 0, 0, MAX_ID)
        limit = self.int_argument("limit", PAGE_DEFAULT, 1, PAGE_MAX)
        members = await self.course(course_id, person)
        assignment = self.assignment_or_404(course_id, material)
        if person.can_see_reports(course_id):  # the course's students and whoever handed in (a student who left)
            students = sorted(set(members["student"]) | self.rules.submitters(course_id, material))
        else:
            students = [person.name]
        total, students = len(students), students[offset : offset + limit]
        live = person.can_open_servers(course_id, self.settings["live_server_roles"])
        hub = self.settings["hub_base_url"].rstrip("/") + "/"
        table = self.rules.table(assignment, students)
        for line in table:
            # the hub checks access when it is followed; shown only to those it lets in
            line["server_url"] = f"{hub}user/{quote(line['student'], safe='')}/" if live else None
        following = offset + limit if offset + limit < total else None
        self.write_json(
            {
                "assignment": assignment.to_dict(),
                "students": table,
                "total": total,
                "offset": offset,
                "limit": limit,
                "next": f"?offset={following}&limit={limit}" if following is not None else None,
            }
        )


class GradedHandler(AssignmentBase):
    """PUT/DELETE …/graded/<student>: an instructor chooses the submission that counts."""

    async def put(self, course_id, material, student):
        person = await self.person()
        await self.course(course_id, person)
        self.check_instructor(person, course_id)
        self.release_or_404(course_id, material)
        body = self.json_body(GRADED_KEYS)
        with self.refusals():
            row, choice = self.rules.choose_graded(course_id, material, student, body.get("submission"), person.name)
        record(self.context, person, "override", course_id, material, student, f"graded: submission {row.id}")
        self.write_json({"student": student, "graded": row.id, "override": choice.to_dict()})

    async def delete(self, course_id, material, student):
        person = await self.person()
        await self.course(course_id, person)
        self.check_instructor(person, course_id)
        self.release_or_404(course_id, material)
        if self.rules.set_graded(course_id, material, student, None, person.name) is not None:
            record(self.context, person, "override", course_id, material, student, "graded: back to the rule")
        self.set_status(204)
        self.finish()


def assignment_handlers(prefix):
    api = prefix + "api/"
    name = r"([^/]+)"
    base = api + f"courses/{name}/assignments"
    return [
        (base, AssignmentsHandler),
        (base + f"/{name}", AssignmentHandler),
        (base + f"/{name}/extensions/{name}", ExtensionHandler),
        (base + f"/{name}/collect", CollectHandler),
        (base + f"/{name}/submit", SubmitHandler),
        (base + f"/{name}/submissions", SubmissionsHandler),
        (base + f"/{name}/graded/{name}", GradedHandler),
    ]
