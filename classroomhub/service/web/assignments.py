"""REST API of due dates, collection and submissions (see ``openapi.yaml``).

Same rules as the rest of the API (``api.BaseHandler``): a course's
instructors (and the admin and root tiers) set due dates and extensions and
collect; instructors and TAs read every submission; a student reads and
makes their own.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from tornado import web

from .api import BaseHandler
from ..domain.audit import record
from ..domain.collect import aware, graded_of
from ..domain.limits import TooMany

ASSIGNMENT_KEYS = {"due": str, "late_seconds": int}
EXTENSION_KEYS = {"due": str}
COLLECT_KEYS = {"wait": bool}
GRADED_KEYS = {"submission": int}
MAX_ID = 999_999_999
# students per page of the submissions table
PAGE_DEFAULT, PAGE_MAX = 100, 500


def parse_due(text):
    """An ISO 8601 date-time with its time zone (``2026-12-01T17:00:00+01:00``), as UTC."""
    try:
        due = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise web.HTTPError(400, f"'due' is not an ISO 8601 date-time: {text!r}") from None
    if due.tzinfo is None:
        raise web.HTTPError(400, f"'due' needs a time zone, e.g. {text}+01:00 or {text}Z")
    try:
        due = due.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        due = None
    # room after it for a year's late window (datetime ends with year 9999)
    if due is None or due.year > 9998:
        raise web.HTTPError(400, f"'due' is out of range (year 1 to 9998 in UTC): {text!r}")
    return due


def status_of(submissions, due, has_extension):
    """on time / late / missing, and whether a personal due date applies."""
    valid = [s for s in submissions if not s.error and s.files]
    if not valid:
        label = "missing"
    elif any(not s.late for s in valid):  # a deadline snapshot is late only if work changed after the due date
        label = "on time"
    else:
        label = "late"
    return f"{label} (extension)" if has_extension else label


class AssignmentBase(BaseHandler):
    @property
    def collector(self):
        return self.service.collector

    def assignment_or_404(self, course_id, material):
        self.release_or_404(course_id, material)  # a due date belongs to a released material
        assignment = self.collector.assignment(course_id, material)
        if assignment is None:
            raise web.HTTPError(404, f"{material!r} of course {course_id!r} has no due date")
        return assignment

    def check_instructor(self, person, course_id):
        if not person.can_release(course_id):
            raise web.HTTPError(403, f"Only instructors of {course_id!r} (or admins) can do this")

    def refuse(self, e):
        """Answer a :class:`~.limits.TooMany`: 429 with Retry-After for a rate past
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
        for release in self.service.releases.latest_releases([course_id]):
            assignment = self.collector.assignment(course_id, release.material)
            if assignment is None:
                continue
            data = assignment.to_dict()
            if not person.can_see_reports(course_id):
                data["your_due"] = self.collector.due_of(assignment, person.name).isoformat()
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
        if isinstance(late, bool) or not 0 <= late <= 366 * 24 * 3600:  # JSON true is no integer
            raise web.HTTPError(400, "'late_seconds' must be between 0 and a year")
        row = self.collector.set_due(course_id, material, parse_due(body["due"]), late, person.name)
        record(self.service, person, "set-due", course_id, material, "", f"due {row.due.isoformat()}, late window {late} s")
        self.service.wake_scheduler()
        self.write_json(row.to_dict())


class ExtensionHandler(AssignmentBase):
    async def put(self, course_id, material, student):
        person = await self.person()
        members = await self.course(course_id, person)
        self.check_instructor(person, course_id)
        self.assignment_or_404(course_id, material)
        if student not in members["student"]:
            raise web.HTTPError(404, f"{student!r} is not a student of {course_id!r}")
        due = parse_due(self.json_body(EXTENSION_KEYS).get("due") or "")
        self.collector.set_extension(course_id, material, student, due, person.name)
        record(self.service, person, "extension", course_id, material, student, f"due {due.isoformat()}")
        self.service.wake_scheduler()
        self.write_json({"student": student, "due": due.isoformat()})

    async def delete(self, course_id, material, student):
        person = await self.person()
        await self.course(course_id, person)
        self.check_instructor(person, course_id)
        self.assignment_or_404(course_id, material)
        self.collector.set_extension(course_id, material, student, None, person.name)
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
        self.service.keep(task)
        record(self.service, person, "collect", course_id, material, "", f"{len(members['student'])} students")
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
        due = self.collector.due_of(assignment, person.name)
        now = datetime.now(timezone.utc)
        closes = due + timedelta(seconds=assignment.late_seconds)
        if now > closes:
            raise web.HTTPError(403, f"Submissions closed at {closes.isoformat()}")
        try:
            row = await self.collector.submit(course_id, material, person.name, late=now > due, due=due)
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
        everyone = person.can_see_reports(course_id)
        if everyone:  # the course's students and whoever handed in (a student who left)
            students = sorted(set(members["student"]) | self.collector.submitters(course_id, material))
        else:
            students = [person.name]
        total, students = len(students), students[offset : offset + limit]
        live = person.can_open_servers(course_id, self.service.live_server_roles)
        hub = self.service.hub_base_url.rstrip("/") + "/"
        extensions = self.collector.extensions(course_id, material)
        overrides = self.collector.overrides(course_id, material)
        rows = {}
        for row in self.collector.submissions(course_id, material, students=students):
            rows.setdefault(row.student, []).append(row)
        table = []
        for student in students:
            mine = rows.get(student, [])
            due = extensions.get(student, aware(assignment.due))
            override = overrides.get(student)
            graded = graded_of(mine, due, override)
            chosen = override is not None and graded is not None and graded.id == override.submission_id
            table.append(
                {
                    "student": student,
                    "due": due.isoformat(),
                    "status": status_of(mine, due, student in extensions),
                    "graded": graded.id if graded else None,
                    "override": override.to_dict() if chosen else None,
                    "submissions": [r.to_dict() for r in mine],
                    # the hub checks access when it is followed; shown only to those it lets in
                    "server_url": f"{hub}user/{quote(student, safe='')}/" if live else None,
                }
            )
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
        chosen = body.get("submission")
        if chosen is None or isinstance(chosen, bool):  # JSON true is no integer
            raise web.HTTPError(400, "'submission' (the id of one of the student's submissions) is required")
        mine = self.collector.submissions(course_id, material, student)
        if not mine:
            raise web.HTTPError(404, f"{student!r} has no submission of {material!r} in course {course_id!r}")
        row = next((r for r in mine if r.id == chosen), None) if 0 < chosen <= MAX_ID else None
        if row is None:
            raise web.HTTPError(400, f"Submission {chosen} is not one of {student}'s submissions of {material!r}")
        if row.error:
            raise web.HTTPError(400, f"Submission {chosen} has nothing collected: {row.error}")
        choice = self.collector.set_graded(course_id, material, student, row.id, person.name)
        record(self.service, person, "override", course_id, material, student, f"graded: submission {row.id}")
        self.write_json({"student": student, "graded": row.id, "override": choice.to_dict()})

    async def delete(self, course_id, material, student):
        person = await self.person()
        await self.course(course_id, person)
        self.check_instructor(person, course_id)
        self.release_or_404(course_id, material)
        if self.collector.set_graded(course_id, material, student, None, person.name) is not None:
            record(self.service, person, "override", course_id, material, student, "graded: back to the rule")
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
