"""Grading access: submitted files for a course's graders, and the audit log.

Instructors and TAs of the course (and the admin and root tiers) download a
submission's files (one, or a zip of every student's graded submission) and
read notebooks rendered without any script (``render.py``); a student gets
their own. Graders copy a submission into their home and return feedback
(:mod:`..domain.grading` does both). Every view and download is written to
the audit log, which the course's instructors and the admin and root tiers
can read, also as CSV.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import tempfile
from urllib.parse import quote

from tornado import web

from ..db.models import AuditEvent
from ..domain.audit import events as audit_events
from ..domain.audit import record
from ..domain.grading import nbgrader_names, shown, write_graded_zip
from .assignments import AssignmentBase
from .pages import PageHandler
from .render import CONTENT_SECURITY_POLICY, render_notebook


async def submission_file(handler, course_id, material, submission_id, any_path=False):
    """(person, submission, path) for a request, with the course's rules applied."""
    person = await handler.person()
    await handler.course(course_id, person)
    handler.release_or_404(course_id, material)
    with handler.refusals():
        row = handler.context.rules.submission(course_id, material, submission_id)
    if row.student != person.name and not person.can_see_reports(course_id):
        raise web.HTTPError(403, "Only the course's instructors and TAs see other students' work")
    handler.check_query("path")
    # as bytes: a name that is not UTF-8 is asked for by its bytes, and
    # get_argument would strip a name's leading or trailing spaces
    path = handler.request.query_arguments.get("path", [b""])[-1].decode("utf-8", "surrogateescape")
    if not any_path and path not in row.files:
        raise web.HTTPError(404, f"Submission {row.id} has no file {path!r}")
    return person, row, path


#: characters an ASCII ``filename="…"`` keeps as they are (no quote, backslash, percent or control)
_PLAIN = frozenset(chr(c) for c in range(0x20, 0x7F)) - set('"\\%;')


def attachment(filename):
    """A ``Content-Disposition`` value (RFC 6266) for a download named *filename*:
    an ASCII fallback for old clients, and the exact name as RFC 5987
    ``filename*`` (UTF-8, percent-encoded). Any name gives a valid header:
    quotes, newlines, non-Latin-1 and non-UTF-8 names (surrogate escapes) too."""
    text = os.fsencode(filename).decode("utf-8", "replace")
    fallback = "".join(c if c in _PLAIN else "_" for c in text)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(text, safe='')}"


class SubmissionFileHandler(AssignmentBase):
    """GET …/submissions/<id>/file?path=…: the file as submitted."""

    async def get(self, course_id, material, submission_id):
        person, row, path = await submission_file(self, course_id, material, submission_id)
        record(self.context, person, "download", course_id, material, row.student, f"submission {row.id}: {path}")
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition", attachment(os.path.basename(path)))
        with open(self.context.store.object_path(row.files[path]["sha256"]), "rb") as f:
            while chunk := f.read(1 << 20):
                self.write(chunk)
                await self.flush()
        self.finish()


class GradedZipBase(AssignmentBase):
    """A zip of every student's graded submission (the instructor's choice, else the rule)."""

    async def send_graded_zip(self, course_id, material, filename, what, name, extra=None):
        person = await self.person()
        await self.course(course_id, person)
        if not person.can_see_reports(course_id):
            raise web.HTTPError(403, "Only the course's instructors and TAs download everyone's work")
        self.release_or_404(course_id, material)
        self.check_query()
        chosen = {s: graded for s, (_, graded, _) in self.rules.graded(course_id, material).items() if graded}
        store = self.context.store
        out = tempfile.SpooledTemporaryFile(max_size=64 << 20, dir=store.tmp)
        try:
            await asyncio.to_thread(write_graded_zip, store, chosen, out, name, extra)
            record(self.context, person, "download", course_id, material, "", f"{what} ({len(chosen)} students)")
            self.set_header("Content-Type", "application/zip")
            self.set_header("Content-Disposition", attachment(filename))
            out.seek(0)
            while chunk := out.read(1 << 20):
                self.write(chunk)
                await self.flush()
        finally:
            out.close()
        self.finish()


class SubmissionsZipHandler(GradedZipBase):
    """GET …/submissions.zip: every student's graded submission, one folder each."""

    async def get(self, course_id, material):
        filename = f"{course_id}-{material}.zip"
        await self.send_graded_zip(
            course_id, material, filename, "all graded submissions", lambda student, path: f"{student}/{path}"
        )


class NbgraderZipHandler(GradedZipBase):
    """GET …/nbgrader.zip: the graded submissions as nbgrader's ``submitted/<student>/<assignment>/``
    (see :func:`..domain.grading.nbgrader_names`)."""

    async def get(self, course_id, material):
        name, extra = nbgrader_names(material)
        await self.send_graded_zip(
            course_id, material, f"{course_id}-{material}-nbgrader.zip", "nbgrader export", name, extra
        )


class NotebookPage(PageHandler):
    """A submitted notebook rendered for reading; no script of the student's can run."""

    @web.authenticated
    async def get(self, course_id, material, submission_id):
        person, row, path = await submission_file(self, course_id, material, submission_id)
        with open(self.context.store.object_path(row.files[path]["sha256"]), "rb") as f:
            data = f.read()
        try:
            page = render_notebook(data, f"{row.student}: {path}")
        except ValueError as e:
            raise web.HTTPError(400, f"{path} cannot be shown: {e}") from None
        record(self.context, person, "view", course_id, material, row.student, f"submission {row.id}: {path}")
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(page)


class AuditHandler(AssignmentBase):
    """GET /api/courses/<course>/audit (``?format=csv`` for a spreadsheet)."""

    async def get(self, course_id):
        person = await self.person()
        await self.course(course_id, person)
        if not person.can_release(course_id):
            raise web.HTTPError(403, f"Only instructors of {course_id!r} (or admins) read its audit log")
        events = audit_events(self.context, course_id)
        self.check_query("format")
        kind = self.get_argument("format", "json")
        if kind not in ("json", "csv"):
            raise web.HTTPError(400, f"format must be json or csv, not {kind!r}")
        if kind == "csv":
            out = io.StringIO()
            writer = csv.writer(out)
            writer.writerow(AuditEvent.FIELDS)
            for event in events:
                writer.writerow(event.to_dict().values())
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            self.set_header("Content-Disposition", attachment(f"{course_id}-audit.csv"))
            self.finish(out.getvalue())
        else:
            self.write_json({"events": [e.to_dict() for e in events]})


class CopyHandler(AssignmentBase):
    """POST …/submissions/<id>/copy: the submission into ``~/grading/…`` of the grader, as the grader."""

    async def post(self, course_id, material, submission_id):
        person, row, _ = await submission_file(self, course_id, material, submission_id, any_path=True)
        if not person.can_see_reports(course_id):
            raise web.HTTPError(403, "Only the course's instructors and TAs copy students' work")
        self.json_body({})
        folder, report = await self.context.grading.copy_for_grading(person.name, row)
        record(self.context, person, "copy", course_id, material, row.student, f"submission {row.id} to {shown(folder)}")
        self.write_json({"folder": shown(folder), "error": report.error, "results": report.results})


class FeedbackHandler(AssignmentBase):
    """GET …/feedback: returned feedback (graders: all; a student: theirs).
    POST …/feedback/<student>: return the grader's ``~/grading/<course>/<material>/<student>/``."""

    async def get(self, course_id, material, student=None):
        person = await self.person()
        await self.course(course_id, person)
        self.release_or_404(course_id, material)
        mine = None if person.can_see_reports(course_id) else person.name
        rows = self.context.grading.feedback(course_id, material, mine)
        self.write_json({"feedback": [r.to_dict() for r in rows]})

    async def post(self, course_id, material, student=None):
        person = await self.person()
        members = await self.course(course_id, person)
        self.release_or_404(course_id, material)
        if not person.can_see_reports(course_id):
            raise web.HTTPError(403, "Only the course's instructors and TAs return feedback")
        if student not in members["student"]:
            raise web.HTTPError(404, f"{student!r} is not a student of {course_id!r}")
        self.json_body({})
        with self.refusals():
            row, report, skipped = await self.context.grading.return_feedback(person.name, course_id, material, student)
        record(self.context, person, "return", course_id, material, student, f"{len(row.files)} files")
        data = row.to_dict()
        data["error"] = report.error
        data["skipped"] = [{"path": p, "reason": r} for p, r in skipped]
        self.write_json(data, status=201)


def grading_handlers(prefix):
    """List before the pages' and the API's catch-alls."""
    name = r"([^/]+)"
    sub = f"courses/{name}/assignments/{name}/submissions"
    return [
        (prefix + "api/" + sub + r"/([0-9]{1,9})/file", SubmissionFileHandler),
        (prefix + "api/" + sub + r"\.zip", SubmissionsZipHandler),
        (prefix + f"api/courses/{name}/assignments/{name}/nbgrader\\.zip", NbgraderZipHandler),
        (prefix + "api/" + sub + r"/([0-9]{1,9})/copy", CopyHandler),
        (prefix + f"api/courses/{name}/assignments/{name}/feedback(?:/{name})?", FeedbackHandler),
        (prefix + f"api/courses/{name}/audit", AuditHandler),
        (prefix + sub + r"/([0-9]{1,9})/view", NotebookPage),
    ]
