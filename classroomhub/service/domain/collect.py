"""Due dates and collection: the service snapshots students' work itself.

At each student's effective due date (the assignment's, or their
extension's) the scheduler snapshots ``~/<course>/<material>/`` as the
student (the same export walker as releases: no link followed, special
files and oversized files left out with a note) into the store. The time is
the service's, never the student's. A due date that passed while the service
was down is collected at start-up and marked ``caught_up``; one snapshot per
student and due date, whatever is interrupted and run again.

Nothing a student does after their due date counts as on time: for a
deadline snapshot their processes are frozen (:mod:`.freezer`), the worker
copying is one they cannot signal, and every file and folder whose ctime is
past the due date once copied is listed in ``changed`` and makes the
snapshot late. ``finished`` records when the copy ended.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from ..files import runas
from .limits import KeyedLocks, RateLimit, TooMany
from ..db.models import Assignment, Extension, GradedChoice, Submission, utcnow
from ..files.store import SourceError, snapshot_folder

#: folders in the assignment folder that are not the student's work
FEEDBACK_FOLDER = "feedback"


def aware(dt):
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


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


class Collector:
    def __init__(
        self,
        sessions,
        store,
        hub,
        log,
        max_bytes,
        max_file_bytes,
        timeout=600,
        concurrency=None,
        max_files=10_000,
        max_submissions=20,
        submit_rate=(5, 600),
        freezer=None,
    ):
        self.sessions = sessions
        self.store = store
        self.hub = hub
        self.log = log
        self.max_bytes = max_bytes
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.max_submissions = max_submissions  # hand-ins per student and assignment (0: no limit)
        self.submit_rate = RateLimit(*submit_rate, what="hand-ins")
        self.freezer = freezer  # a Freezer: students' processes stop for their deadline snapshot
        # ClassroomSpawner's cgroup_parent: a hand-in's worker joins the student's server's groups
        self.cgroup_parent = None
        self.timeout = timeout
        self.limit = asyncio.Semaphore(concurrency or 2 * (os.cpu_count() or 1))
        self.runner = None  # how workers start (see runas); None: a process per home
        self.progress = {}  # (course, material) -> {"total", "done", "running"}
        self.started = datetime.now(timezone.utc)
        self._students = KeyedLocks()  # one snapshot of a student at a time

    # -- due dates ----------------------------------------------------------------------

    def assignment(self, course, material):
        with self.sessions() as db:
            return db.get(Assignment, (course, material))

    def extensions(self, course, material):
        with self.sessions() as db:
            rows = db.scalars(select(Extension).where(Extension.course == course, Extension.material == material))
            return {row.student: aware(row.due) for row in rows}

    def set_due(self, course, material, due, late_seconds, by):
        with self.sessions() as db:
            row = db.get(Assignment, (course, material)) or Assignment(course=course, material=material)
            row.due, row.late_seconds, row.set_by, row.updated = due, late_seconds, by, utcnow()
            db.add(row)
            db.commit()
            return row

    def set_extension(self, course, material, student, due, by):
        with self.sessions() as db:
            if due is None:
                row = db.get(Extension, (course, material, student))
                if row is not None:
                    db.delete(row)
            else:
                db.merge(Extension(course=course, material=material, student=student, due=due, set_by=by))
            db.commit()

    def due_of(self, assignment, student, extensions=None):
        extensions = self.extensions(assignment.course, assignment.material) if extensions is None else extensions
        return extensions.get(student, aware(assignment.due))

    # -- snapshots ----------------------------------------------------------------------

    def check_submit(self, course, material, student):
        """Raise :class:`~.limits.TooMany` if *student* may not hand in now."""
        if self.max_submissions:
            with self.sessions() as db:
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
                self.store,
                account,
                [course, material],
                max_bytes=self.max_bytes,
                max_file_bytes=self.max_file_bytes,
                max_entries=self.max_files,
                skip_top=[FEEDBACK_FOLDER],
                timeout=self.timeout,
                runner=self.runner,
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
        with self.sessions() as db:
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

        assignment = self.assignment(course, material)
        extensions = self.extensions(course, material) if assignment else {}

        async def one(student):
            due = self.due_of(assignment, student, extensions) if assignment else None
            row = await self.snapshot(course, material, student, kind, due=due)
            progress["done"] += 1
            return row

        try:
            return list(await asyncio.gather(*(one(s) for s in students)))
        finally:
            progress["running"] = False

    def submissions(self, course, material, student=None, students=None):
        """Submissions of a material: of one *student*, of a list of *students*, or all."""
        with self.sessions() as db:
            query = select(Submission).where(Submission.course == course, Submission.material == material)
            if student is not None:
                query = query.where(Submission.student == student)
            if students is not None:
                query = query.where(Submission.student.in_(list(students)))
            return db.scalars(query.order_by(Submission.student, Submission.taken, Submission.id)).all()

    def submitters(self, course, material):
        """Everyone with a submission of a material (no file lists read)."""
        with self.sessions() as db:
            return set(
                db.scalars(
                    select(Submission.student)
                    .where(Submission.course == course, Submission.material == material)
                    .distinct()
                )
            )

    # -- which submission counts ------------------------------------------------------

    def overrides(self, course, material):
        """{student: GradedChoice} of an assignment."""
        with self.sessions() as db:
            rows = db.scalars(select(GradedChoice).where(GradedChoice.course == course, GradedChoice.material == material))
            return {row.student: row for row in rows}

    def set_graded(self, course, material, student, submission_id, by):
        """Make *submission_id* the one that counts for *student* (returns the
        choice); None: back to the rule (returns the choice taken back, if any)."""
        with self.sessions() as db:
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

    # -- the scheduler ------------------------------------------------------------------

    async def pending(self, now):
        """(assignment, student, due) whose due date has passed without a deadline snapshot."""
        with self.sessions() as db:
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
        courses = await self.hub.courses()
        found = []
        for assignment in assignments:
            students = courses.get(assignment.course, {}).get("student", [])
            extensions = self.extensions(assignment.course, assignment.material)
            for student in students:
                due = self.due_of(assignment, student, extensions)
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
        with self.sessions() as db:
            dues = [aware(a.due) for a in db.scalars(select(Assignment))]
            dues += [aware(e.due) for e in db.scalars(select(Extension))]
        future = [(d - now).total_seconds() for d in dues if d > now]
        return min(future) if future else None

    async def run(self, interval=30.0, wake=None):
        """Collect at each due date (and whatever was missed) until cancelled.

        Sleeps until the next due date, at most *interval* seconds; setting
        the event *wake* (a due date changed) makes it look again at once.
        """
        wake = wake or asyncio.Event()
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
