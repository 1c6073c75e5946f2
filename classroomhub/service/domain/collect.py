"""Collection: the service snapshots students' work itself.

At each student's effective due date (the assignment's, or their
extension's: :mod:`.assignments`) the scheduler snapshots
``~/<course>/<material>/`` as the student (the same export walker as
releases: no link followed, special files and oversized files left out with
a note) into the store. The time is the service's, never the student's. A
due date that passed while the service was down is collected at start-up
and marked ``caught_up``; one snapshot per student and due date, whatever is
interrupted and run again.

Nothing a student does after their due date counts as on time: for a
deadline snapshot their processes are frozen (:mod:`..files.freezer`), the
worker copying is one they cannot signal, and every file and folder whose
ctime is past the due date once copied is listed in ``changed`` and makes
the snapshot late. ``finished`` records when the copy ended.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ..db.models import Assignment, Extension, Submission, utcnow
from ..files import runas
from ..files.store import SourceError, snapshot_folder
from .assignments import AssignmentRules, aware
from .limits import KeyedLocks, RateLimit, TooMany

#: folders in the assignment folder that are not the student's work
FEEDBACK_FOLDER = "feedback"


class SubmissionsClosed(Exception):
    """A hand-in after the assignment's late window closed."""


class Collector:
    """Snapshots of students' assignment folders: at due dates, on an
    instructor's "collect now", and a student's own hand-ins.

    *rules*: the :class:`~.assignments.AssignmentRules` giving due dates
    (a new one on *context* if not given).
    """

    def __init__(
        self,
        context,
        rules=None,
        *,
        max_bytes,
        max_file_bytes,
        max_files=10_000,
        max_submissions=20,
        submit_rate=(5, 600),
        freezer=None,
        cgroup_parent=None,
    ):
        self.context = context
        self.rules = rules or AssignmentRules(context)
        self.log = context.log
        self.max_bytes = max_bytes
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.max_submissions = max_submissions  # hand-ins per student and assignment (0: no limit)
        self.submit_rate = RateLimit(*submit_rate, what="hand-ins")
        self.freezer = freezer  # a Freezer: students' processes stop for their deadline snapshot
        # ClassroomSpawner's cgroup_parent: a hand-in's worker joins the student's server's groups
        self.cgroup_parent = cgroup_parent
        self.limit = context.places()
        self.progress = {}  # (course, material) -> {"total", "done", "running"}
        self.started = datetime.now(timezone.utc)
        self._students = KeyedLocks()  # one snapshot of a student at a time

    # -- snapshots ----------------------------------------------------------------------

    def check_submit(self, course, material, student):
        """Raise :class:`~.limits.TooMany` if *student* may not hand in now."""
        if self.max_submissions:
            with self.context.sessions() as db:
                count = db.scalar(
                    select(func.count(Submission.id)).where(
                        Submission.course == course,
                        Submission.material == material,
                        Submission.student == student,
                        Submission.kind == "submitted",
                    )
                )
            if count >= self.max_submissions:
                raise TooMany(f"{student} has handed in {material} {count} times, the most allowed")
        self.submit_rate.take((course, material, student))

    async def hand_in(self, assignment, student):
        """*student* hands in their work now: early, or late within the
        assignment's late window (:class:`SubmissionsClosed` after it)."""
        due = self.rules.due_of(assignment, student)
        now = datetime.now(timezone.utc)
        closes = due + timedelta(seconds=assignment.late_seconds)
        if now > closes:
            raise SubmissionsClosed(f"Submissions closed at {closes.isoformat()}")
        return await self.submit(assignment.course, assignment.material, student, late=now > due, due=due)

    async def submit(self, course, material, student, late, due):
        """A student's own hand-in, within the limits (:class:`~.limits.TooMany` past them)."""
        taken = utcnow()  # on arrival: a queue behind their earlier hand-in does not make it late
        async with self._students.hold(student):
            self.check_submit(course, material, student)
            return await self._snapshot(course, material, student, "submitted", taken, late=late, due=due)

    async def snapshot(self, course, material, student, kind, deadline=None, late=False, caught_up=False, due=None):
        """Take one snapshot and record it; a deadline snapshot only once.

        *due*: the student's due date; files changed after it make the
        snapshot late (for a deadline snapshot, *deadline* is that date).
        """
        taken = utcnow()
        async with self._students.hold(student):
            return await self._snapshot(course, material, student, kind, taken, deadline, late, caught_up, due)

    async def _frozen_copy(self, account, course, material, freeze, due, changed, own_limits=False):
        """Copy the folder into the store, the student's processes frozen if *freeze*.

        With *own_limits* (a hand-in) the worker runs inside the student's own
        limits (their server's cgroups); never with *freeze*: a worker
        needing memory there would wait for frozen processes to give it up.
        """
        cgroups = ()
        if own_limits and not freeze and self.cgroup_parent:
            cgroups = await asyncio.to_thread(runas.server_cgroups, account.name, self.cgroup_parent)
        frozen = None
        if freeze and self.freezer is not None and account.uid != 0:
            freezing = asyncio.ensure_future(asyncio.to_thread(self.freezer.freeze, account.uid))
            try:
                frozen = await asyncio.shield(freezing)
            except OSError as e:
                self.log.warning("Cannot freeze the processes of %s for their snapshot: %s", account.name, e)
            except asyncio.CancelledError:  # (the service stops) the freeze goes on in its thread: undo it after
                freezing.add_done_callback(
                    lambda t: None if t.cancelled() or t.exception() else self.freezer.thaw(t.result())
                )
                raise
        try:
            return await snapshot_folder(
                self.context.store,
                account,
                [course, material],
                max_bytes=self.max_bytes,
                max_file_bytes=self.max_file_bytes,
                max_entries=self.max_files,
                skip_top=[FEEDBACK_FOLDER],
                timeout=self.context.worker_timeout,
                runner=self.context.runner,
                changed_since=due,
                changed=changed,
                cgroups=cgroups,
            )
        finally:
            if frozen is not None:
                await asyncio.to_thread(self.freezer.thaw, frozen)

    async def _snapshot(self, course, material, student, kind, taken, deadline=None, late=False, caught_up=False, due=None):
        files, skipped, error, changed = {}, [], "", []
        due = deadline or due
        async with self.limit:
            try:
                account = runas.Account.of(student)
                files, skipped = await self._frozen_copy(
                    account, course, material, kind == "deadline", due, changed, own_limits=kind == "submitted"
                )
            except (LookupError, SourceError, runas.WorkerError, OSError) as e:
                error = f"nothing collected: {e}"
        finished = utcnow()
        changed = sorted(set(changed)) if not error else []
        row = Submission(
            course=course,
            material=material,
            student=student,
            taken=taken,
            finished=finished,
            deadline=deadline,
            kind=kind,
            late=late or bool(changed),
            caught_up=caught_up,
            files=files,
            skipped=[list(s) for s in skipped],
            changed=changed,
            error=error,
        )
        if changed:
            self.log.info(
                "%s/%s of %s (%s): %s changed after the due date %s: late",
                course, material, student, kind, ", ".join(changed[:5]), due.isoformat(),
            )
        with self.context.sessions() as db:
            db.add(row)
            try:
                db.commit()
            except IntegrityError:  # this deadline was collected meanwhile
                db.rollback()
                return db.scalars(
                    select(Submission).where(
                        Submission.course == course,
                        Submission.material == material,
                        Submission.student == student,
                        Submission.deadline == deadline,
                    )
                ).one()
        return row

    async def collect(self, course, material, students, kind="collected"):
        """Snapshot every student now (an instructor's "collect now")."""
        progress = self.progress[(course, material)] = {"total": len(students), "done": 0, "running": True}

        assignment = self.rules.assignment(course, material)
        extensions = self.rules.extensions(course, material) if assignment else {}

        async def one(student):
            due = self.rules.due_of(assignment, student, extensions) if assignment else None
            row = await self.snapshot(course, material, student, kind, due=due)
            progress["done"] += 1
            return row

        try:
            return list(await asyncio.gather(*(one(s) for s in students)))
        finally:
            progress["running"] = False

    # -- the scheduler ------------------------------------------------------------------

    async def pending(self, now):
        """(assignment, student, due) whose due date has passed without a deadline snapshot."""
        with self.context.sessions() as db:
            assignments = db.scalars(select(Assignment)).all()
            # only the keys: every round would otherwise load every snapshot's file list
            done = {
                (course, material, student, aware(deadline))
                for course, material, student, deadline in db.execute(
                    select(Submission.course, Submission.material, Submission.student, Submission.deadline).where(
                        Submission.deadline.isnot(None)
                    )
                )
            }
        if not assignments:
            return []
        courses = await self.context.hub.courses()
        found = []
        for assignment in assignments:
            students = courses.get(assignment.course, {}).get("student", [])
            extensions = self.rules.extensions(assignment.course, assignment.material)
            for student in students:
                due = self.rules.due_of(assignment, student, extensions)
                if due <= now and (assignment.course, assignment.material, student, due) not in done:
                    found.append((assignment, student, due))
        return found

    async def collect_due(self, now=None):
        """Collect every passed deadline not collected yet; returns the new snapshots.

        One that passed before this service started was missed while it was
        down (or cut off): it is marked ``caught_up``.
        """
        now = now or datetime.now(timezone.utc)
        todo = await self.pending(now)
        rows = await asyncio.gather(
            *(
                self.snapshot(a.course, a.material, student, "deadline", deadline=due, caught_up=due < self.started)
                for a, student, due in todo
            )
        )
        for row in rows:
            self.log.info(
                "Collected %s/%s of %s at its due date%s: %s files%s",
                row.course,
                row.material,
                row.student,
                " (caught up after a stop)" if row.caught_up else "",
                len(row.files),
                f"; {row.error}" if row.error else "",
            )
        return rows

    async def next_due(self, now):
        """Seconds until the next due date of any student, or None."""
        with self.context.sessions() as db:
            dues = [aware(a.due) for a in db.scalars(select(Assignment))]
            dues += [aware(e.due) for e in db.scalars(select(Extension))]
        future = [(d - now).total_seconds() for d in dues if d > now]
        return min(future) if future else None

    async def run(self, interval=30.0, wake=None):
        """Collect at each due date (and whatever was missed) until cancelled.

        Sleeps until the next due date, at most *interval* seconds; setting
        the event *wake* (by default the rules' ``changed``: a due date was
        set) makes it look again at once.
        """
        wake = wake or self.rules.changed
        if self.freezer is not None and self.freezer.available:
            # a service killed mid-snapshot left its students frozen
            await asyncio.to_thread(self.freezer.sweep)
        while True:
            try:
                await self.collect_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("Collection at due dates failed; trying again in %s s", interval)
            wait = await self.next_due(datetime.now(timezone.utc))
            try:
                await asyncio.wait_for(wake.wait(), interval if wait is None else max(0.05, min(wait + 0.01, interval)))
            except asyncio.TimeoutError:
                pass
            wake.clear()
