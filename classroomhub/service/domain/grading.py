"""Grading: graders' copies of submissions, feedback returned to students,
and archives of the submissions that count.

A grader copies a submission into their own ``~/grading/<course>/<material>/<student>/``
(written as the grader), works there, and returns that folder: it is read
as the grader into the store's private area, then delivered into the
student's ``~/<course>/<material>/feedback/`` as the student, with the same
rules as a release (a file the student changed since the last return is
kept). Who may do what is the web layer's to check.
"""

from __future__ import annotations

import os
import zipfile
from datetime import timezone

from sqlalchemy import select

from ..db.models import Feedback
from ..files import runas
from ..files.delivery import DeliveryJob, deliver_to
from ..files.store import SourceError, snapshot_folder
from .assignments import aware
from .collect import FEEDBACK_FOLDER
from .errors import Invalid
from .releases import TAKEN

#: how nbgrader writes a submission's time (``Exchange.timestamp_format``, in UTC)
NBGRADER_TIMESTAMP = "%Y-%m-%d %H:%M:%S.%f %Z"


def nbgrader_timestamp(taken):
    """``2026-11-25 16:00:00.123456 UTC``, as ``nbgrader submit`` writes timestamp.txt."""
    return aware(taken).astimezone(timezone.utc).strftime(NBGRADER_TIMESTAMP)


def grading_folder(course, material, student):
    """Where a grader's copy of a student's work goes, in the grader's home."""
    return ["grading", course, material, student]


def shown(folder):
    """``~/a/b`` for a folder given as parts."""
    return "~/" + "/".join(folder)


def write_graded_zip(store, chosen, out, name, extra=None):
    """Write the files of each student's submission that counts into the zip *out*.

    *chosen*: ``{student: submission}``; ``name(student, path)`` gives a
    file's name in the archive (None: left out); ``extra(student, submission)``
    more files ``{name: bytes}``. Blocking: run it in a thread. A name that
    is not UTF-8 (kept as ``\\udcXX`` escapes) gets U+FFFD for its bad bytes:
    zip names are UTF-8.
    """

    def utf8(arcname):
        return os.fsencode(arcname).decode("utf-8", "replace")

    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for student, row in sorted(chosen.items()):
            for path, meta in sorted(row.files.items()):
                arcname = name(student, path)
                if arcname is not None:
                    archive.write(store.object_path(meta["sha256"]), utf8(arcname))
            for arcname, data in (extra(student, row) if extra else {}).items():
                archive.writestr(utf8(arcname), data)


def nbgrader_names(material):
    """(name, extra) for :func:`write_graded_zip`: nbgrader's
    ``submitted/<student>/<assignment>/``, each with the ``timestamp.txt``
    nbgrader writes (the service's time of the submission)."""

    def name(student, path):
        # nbgrader's own timestamp.txt is the service's time, never the student's file
        return None if path == "timestamp.txt" else f"submitted/{student}/{material}/{path}"

    def extra(student, row):
        return {f"submitted/{student}/{material}/timestamp.txt": nbgrader_timestamp(row.taken)}

    return name, extra


class Grading:
    """Copies for graders and feedback for students, with the workers of *context*.

    *max_bytes*: the most read from a grader's folder to return.
    """

    def __init__(self, context, *, max_bytes):
        self.context = context
        self.max_bytes = max_bytes

    async def copy_for_grading(self, grader, submission):
        """Write *submission* into *grader*'s ``~/grading/…`` as the grader;
        returns (the folder's parts, the worker's report)."""
        folder = grading_folder(submission.course, submission.material, submission.student)
        job = DeliveryJob(submission.course, submission.material, submission.id, submission.files, folder=tuple(folder))
        report = await deliver_to(
            self.context.store, grader, job, timeout=self.context.worker_timeout, runner=self.context.runner
        )
        return folder, report

    def feedback(self, course, material, student=None):
        """Feedback returned in an assignment: to every student, or to *student*."""
        with self.context.sessions() as db:
            query = select(Feedback).where(Feedback.course == course, Feedback.material == material)
            if student is not None:
                query = query.where(Feedback.student == student)
            return db.scalars(query.order_by(Feedback.id)).all()

    async def return_feedback(self, grader, course, material, student):
        """Deliver *grader*'s ``~/grading/<course>/<material>/<student>/`` into
        the student's ``feedback/`` folder; returns (the ``Feedback`` row, the
        delivery report, what was left out [(path, reason)]).
        :class:`~.errors.Invalid` if the folder has nothing to return."""
        folder = grading_folder(course, material, student)
        try:
            files, skipped = await snapshot_folder(
                self.context.store,
                runas.Account.of(grader),
                folder,
                max_bytes=self.max_bytes,
                runner=self.context.runner,
            )
        except (LookupError, SourceError, runas.WorkerError) as e:
            raise Invalid(f"Nothing to return from {shown(folder)}: {e}") from None
        if not files:
            raise Invalid(f"{shown(folder)} has no files to return")
        with self.context.sessions() as db:
            earlier = db.scalars(
                select(Feedback)
                .where(Feedback.course == course, Feedback.material == material, Feedback.student == student)
                .order_by(Feedback.id.desc())
            ).first()
        previous = {}
        if earlier is not None:  # what the student was given last time, as a release's baseline
            previous = {
                r["path"]: {**earlier.files[r["path"]], "stamp": r.get("stamp")}
                for r in earlier.results
                if r["status"] in TAKEN and r["path"] in earlier.files
            }
        version = (earlier.id if earlier else 0) + 1
        job = DeliveryJob(course, material, version, files, folder=(course, material, FEEDBACK_FOLDER))
        report = await deliver_to(
            self.context.store, student, job, previous, self.context.worker_timeout, self.context.runner
        )
        row = Feedback(course=course, material=material, student=student, grader=grader, files=files, results=report.results)
        with self.context.sessions() as db:
            db.add(row)
            db.commit()
        return row, report, skipped
