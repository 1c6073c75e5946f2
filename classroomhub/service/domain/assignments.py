"""Assignments: due dates, extensions, and which submission counts.

An assignment is a released material with a due date (the ``Assignment``
row); a student may have their own due date (an extension). Of a student's
submissions the one that counts is the instructor's choice if they made
one, else the last one on time, else the first late one. The snapshots
themselves are taken by :mod:`.collect`.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from ..db.models import Assignment, Extension, GradedChoice, Submission, utcnow
from .errors import Invalid, NotFound

#: the longest late window (a year): due dates end in year 9998 so it fits before 9999
MAX_LATE_SECONDS = 366 * 24 * 3600
#: largest id accepted in a request
MAX_ID = 999_999_999


def aware(dt):
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def parse_due(text):
    """An ISO 8601 date-time with its time zone (``2026-12-01T17:00:00+01:00``), as UTC;
    :class:`~.errors.Invalid` says what is wrong with any other text."""
    try:
        due = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(f"'due' is not an ISO 8601 date-time: {text!r}") from None
    if due.tzinfo is None:
        raise Invalid(f"'due' needs a time zone, e.g. {text}+01:00 or {text}Z")
    try:
        due = due.astimezone(timezone.utc)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        due = None
    # room after it for a year's late window (datetime ends with year 9999)
    if due is None or due.year > 9998:
        raise Invalid(f"'due' is out of range (year 1 to 9998 in UTC): {text!r}")
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


def graded_choice(submissions, due):
    """The submission that counts: the last one on time, else the first late one."""
    grace = aware(due) + timedelta(seconds=60)
    on_time = [
        s for s in submissions if not s.error and not s.late and (s.kind == "deadline" or aware(s.taken) <= grace)
    ]
    if on_time:
        return max(on_time, key=lambda s: (aware(s.taken), s.id))
    late = [s for s in submissions if not s.error]
    return min(late, key=lambda s: (aware(s.taken), s.id)) if late else None


def graded_of(submissions, due, override=None):
    """The submission that counts for one student: the instructor's choice
    (*override*, a GradedChoice) if it is one of *submissions*; else the rule
    (:func:`graded_choice`) with a due date, the latest without one."""
    if override is not None:
        chosen = next((s for s in submissions if s.id == override.submission_id), None)
        if chosen is not None:
            return chosen
    if due is not None:
        return graded_choice(submissions, due)
    valid = [s for s in submissions if not s.error]
    return max(valid, key=lambda s: (aware(s.taken), s.id)) if valid else None


class AssignmentRules:
    """Due dates, extensions and the submission that counts, in the database of *context*."""

    def __init__(self, context):
        self.context = context
        #: set when a due date is set: the collection scheduler looks again at once
        self.changed = asyncio.Event()

    # -- due dates ----------------------------------------------------------------------

    def assignment(self, course, material):
        """The ``Assignment`` row of a material, or None (no due date)."""
        with self.context.sessions() as db:
            return db.get(Assignment, (course, material))

    def extensions(self, course, material):
        """{student: their own due date} of an assignment."""
        with self.context.sessions() as db:
            rows = db.scalars(select(Extension).where(Extension.course == course, Extension.material == material))
            return {row.student: aware(row.due) for row in rows}

    def set_due(self, course, material, due, late_seconds, by):
        """Set the due date (*due*: ISO 8601 text, see :func:`parse_due`) and
        the late window; returns the row."""
        if isinstance(late_seconds, bool) or not 0 <= late_seconds <= MAX_LATE_SECONDS:  # JSON true is no integer
            raise Invalid("'late_seconds' must be between 0 and a year")
        due = parse_due(due)
        with self.context.sessions() as db:
            row = db.get(Assignment, (course, material)) or Assignment(course=course, material=material)
            row.due, row.late_seconds, row.set_by, row.updated = due, late_seconds, by, utcnow()
            db.add(row)
            db.commit()
        self.changed.set()
        return row

    def set_extension(self, course, material, student, due, by):
        """Give *student* their own due date; None: back to the assignment's."""
        with self.context.sessions() as db:
            if due is None:
                row = db.get(Extension, (course, material, student))
                if row is not None:
                    db.delete(row)
            else:
                db.merge(Extension(course=course, material=material, student=student, due=due, set_by=by))
            db.commit()
        if due is not None:
            self.changed.set()

    def due_of(self, assignment, student, extensions=None):
        """*student*'s due date: their extension's, else the assignment's."""
        extensions = self.extensions(assignment.course, assignment.material) if extensions is None else extensions
        return extensions.get(student, aware(assignment.due))

    # -- submissions ------------------------------------------------------------------

    def submissions(self, course, material, student=None, students=None):
        """Submissions of a material: of one *student*, of a list of *students*, or all."""
        with self.context.sessions() as db:
            query = select(Submission).where(Submission.course == course, Submission.material == material)
            if student is not None:
                query = query.where(Submission.student == student)
            if students is not None:
                query = query.where(Submission.student.in_(list(students)))
            return db.scalars(query.order_by(Submission.student, Submission.taken, Submission.id)).all()

    def submitters(self, course, material):
        """Everyone with a submission of a material (no file lists read)."""
        with self.context.sessions() as db:
            return set(
                db.scalars(
                    select(Submission.student)
                    .where(Submission.course == course, Submission.material == material)
                    .distinct()
                )
            )

    def submission(self, course, material, submission_id):
        """One submission of a material, or :class:`~.errors.NotFound`."""
        with self.context.sessions() as db:
            row = db.get(Submission, int(submission_id))
        if row is None or (row.course, row.material) != (course, material):
            raise NotFound(f"No submission {submission_id} of {material!r} in course {course!r}")
        return row

    # -- which submission counts ------------------------------------------------------

    def overrides(self, course, material):
        """{student: GradedChoice} of an assignment."""
        with self.context.sessions() as db:
            rows = db.scalars(select(GradedChoice).where(GradedChoice.course == course, GradedChoice.material == material))
            return {row.student: row for row in rows}

    def set_graded(self, course, material, student, submission_id, by):
        """Make *submission_id* the one that counts for *student* (returns the
        choice); None: back to the rule (returns the choice taken back, if any)."""
        with self.context.sessions() as db:
            if submission_id is None:
                row = db.get(GradedChoice, (course, material, student))
                if row is not None:
                    db.delete(row)
                db.commit()
                return row
            choice = GradedChoice(
                course=course, material=material, student=student, submission_id=submission_id, by=by, at=utcnow()
            )
            row = db.merge(choice)
            db.commit()
            return row

    def choose_graded(self, course, material, student, submission_id, by):
        """An instructor's choice of one of *student*'s submissions, checked;
        returns (the submission, the GradedChoice)."""
        if submission_id is None or isinstance(submission_id, bool):  # JSON true is no integer
            raise Invalid("'submission' (the id of one of the student's submissions) is required")
        mine = self.submissions(course, material, student)
        if not mine:
            raise NotFound(f"{student!r} has no submission of {material!r} in course {course!r}")
        row = next((r for r in mine if r.id == submission_id), None) if 0 < submission_id <= MAX_ID else None
        if row is None:
            raise Invalid(f"Submission {submission_id} is not one of {student}'s submissions of {material!r}")
        if row.error:
            raise Invalid(f"Submission {submission_id} has nothing collected: {row.error}")
        return row, self.set_graded(course, material, student, row.id, by)

    def graded(self, course, material):
        """{student: (their submissions, the one that counts or None, GradedChoice or None)}
        for every student with a submission of the material."""
        assignment = self.assignment(course, material)
        extensions = self.extensions(course, material)
        overrides = self.overrides(course, material)
        by_student = {}
        for row in self.submissions(course, material):
            by_student.setdefault(row.student, []).append(row)
        table = {}
        for student, rows in by_student.items():
            due = extensions.get(student, aware(assignment.due)) if assignment else None
            override = overrides.get(student)
            table[student] = (rows, graded_of(rows, due, override), override)
        return table

    def table(self, assignment, students):
        """One line per student of *students* (in that order): their due
        date, status, submissions and the one that counts."""
        course, material = assignment.course, assignment.material
        extensions = self.extensions(course, material)
        overrides = self.overrides(course, material)
        rows = {}
        for row in self.submissions(course, material, students=students):
            rows.setdefault(row.student, []).append(row)
        lines = []
        for student in students:
            mine = rows.get(student, [])
            due = extensions.get(student, aware(assignment.due))
            override = overrides.get(student)
            graded = graded_of(mine, due, override)
            chosen = override is not None and graded is not None and graded.id == override.submission_id
            lines.append(
                {
                    "student": student,
                    "due": due.isoformat(),
                    "status": status_of(mine, due, student in extensions),
                    "graded": graded.id if graded else None,
                    "override": override.to_dict() if chosen else None,
                    "submissions": [r.to_dict() for r in mine],
                }
            )
        return lines
