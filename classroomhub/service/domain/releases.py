"""Releases of course materials: import, record, deliver, report.

Ties the store (immutable content), the delivery workers (as each student)
and the database (what each student was given). Used by the REST API, the
late-joiner sync and the benchmarks. Names: a ``Release`` is the database
row of one version; a :class:`~..files.delivery.DeliveryJob` is what one
worker writes into one home; :class:`ReleaseService` does the work.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile

from sqlalchemy import func, select

from ..db.models import Delivered, DeliveryReport, Release, utcnow
from ..files import runas
from ..files.delivery import DeliveryJob, deliver_to
from ..files.store import SourceError, import_folder
from .limits import KeyedLocks, RateLimit

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# statuses after which the store's version is what lies in the home
TAKEN = ("added", "unchanged", "updated", "restored")


def check_name(kind, value):
    if not isinstance(value, str) or not NAME.fullmatch(value):  # fullmatch: "$" lets a trailing newline in
        raise ValueError(
            f"{kind} {value!r} is not a valid name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def job_for(release):
    """The delivery job of a ``Release`` row, for each home."""
    return DeliveryJob(
        release.course,
        release.material,
        release.version,
        release.files,
        restore_deleted=release.restore_deleted,
        shared=release.shared,
    )


class ReleaseService:
    """Makes releases and delivers them, with the database, store and
    workers of *context* (a :class:`~.context.ServiceContext`)."""

    def __init__(self, context, *, max_bytes=10 * 1024**3, git_timeout=300, sync_rate=(6, 60)):
        self.context = context
        self.log = context.log
        self.max_bytes = max_bytes
        self.git_timeout = git_timeout
        self.progress = {}  # release id -> {"total": n, "done": k, "running": bool}
        # homes written at once, by all deliveries together: a slow home holds one place
        self.limit = context.places()
        # one delivery of a material into one home at a time, never a wait on other homes
        self._homes = KeyedLocks()
        self._syncs = {}  # student -> the sync running for them (later calls share it)
        self.sync_rate = RateLimit(*sync_rate, what="syncs")

    # -- import ---------------------------------------------------------------------

    async def create(self, course, material, author, source=None, git=None, ref=None, restore_deleted=False, shared=False):
        """Import a new version from *source* (a folder) or *git* (a repository), read as *author*."""
        check_name("course", course)
        check_name("material", material)
        if bool(source) == bool(git):
            raise ValueError("give exactly one of 'source' (a folder) or 'git' (a repository)")
        account = runas.Account.of(author)
        if source:
            if not os.path.isabs(source):
                raise ValueError(f"source must be an absolute path, not {source!r}")
            files, skipped = await import_folder(
                self.context.store, account, source, max_bytes=self.max_bytes, runner=self.context.runner
            )
            # a folder name need not be UTF-8; the database and the API want text
            origin = source.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        else:
            files, skipped = await self._import_git(account, git, ref)
            origin = f"{git}@{ref}" if ref else git
            origin = origin.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        if not files:
            raise SourceError(f"{origin} has no files to release")
        with self.context.sessions() as db:
            latest = db.scalar(
                select(func.max(Release.version)).where(Release.course == course, Release.material == material)
            )
            release = Release(
                course=course,
                material=material,
                version=(latest or 0) + 1,
                created_by=author,
                source=origin,
                files=files,
                skipped=[list(s) for s in skipped],
                restore_deleted=restore_deleted,
                shared=shared,
            )
            db.add(release)
            db.commit()
        self.log.info("Release %s/%s v%s by %s: %s files from %s", course, material, release.version, author, len(files), origin)
        return release

    async def start(self, course, material, author, students, **fields):
        """:meth:`create` a new version (*fields*: its keyword arguments) and
        deliver it to *students* in the background; returns (the release,
        the delivery task)."""
        release = await self.create(course, material, author, **fields)
        task = asyncio.ensure_future(self.deliver(release, students))
        self.context.keep(task)
        return release, task

    async def _import_git(self, account, url, ref):
        """Clone as *account* into a private temporary folder, import, remove."""
        if url.startswith("-") or (ref or "").startswith("-"):
            raise ValueError("git repository and ref must not start with '-'")
        folder = tempfile.mkdtemp(prefix="classroomhub-git-")
        os.chown(folder, account.uid, account.gid)
        clone = os.path.join(folder, "repo")
        cmd = ["git", "clone", "--quiet", "--depth", "1", "--no-local"]
        if ref:
            cmd += ["--branch", ref]
        cmd += ["--", url, clone]
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": account.home,
            "LANG": "C.UTF-8",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",  # no ext:: helpers
        }
        options = {**runas.popen_options(account), "env": env}
        try:
            try:
                result = await asyncio.to_thread(
                    subprocess.run,
                    cmd,
                    capture_output=True,
                    encoding="utf-8",
                    errors="backslashreplace",  # git may print paths that are not UTF-8
                    timeout=self.git_timeout,
                    **options,
                )
            except subprocess.TimeoutExpired:
                raise SourceError(f"git clone of {url} took more than {self.git_timeout} s") from None
            if result.returncode != 0:
                raise SourceError(f"git clone of {url} failed: {result.stderr.strip().splitlines()[-1:] or ''}")
            return await import_folder(
                self.context.store, account, clone, max_bytes=self.max_bytes, runner=self.context.runner
            )
        finally:
            # removed as the account: the clone is theirs
            await asyncio.to_thread(subprocess.run, ["rm", "-rf", "--", clone], **runas.popen_options(account))
            shutil.rmtree(folder, ignore_errors=True)

    # -- delivery ---------------------------------------------------------------------

    async def deliver(self, release, students, finish=True):
        """Deliver *release* to *students*, record what each got as it ends,
        return the reports.

        Each home waits only for earlier deliveries of the same material into
        that home (and for a free place), never for other homes: a stuck home
        costs its own timeout and one place. *finish*: this is the course's
        delivery; the release is marked finished when every home is done.
        """
        progress = self.progress[release.id] = {"total": len(students), "done": 0, "running": True}
        job = job_for(release)

        async def one(student):
            async with self._homes.hold((release.course, release.material, student)):
                async with self.limit:
                    with self.context.sessions() as db:
                        row = db.get(Delivered, (release.course, release.material, student))
                        previous = dict(row.files) if row is not None else {}
                    report = await deliver_to(
                        self.context.store, student, job, previous, self.context.worker_timeout, self.context.runner
                    )
                with self.context.sessions() as db:  # recorded at once: a restart redoes only the homes not recorded
                    self._record(db, release, report, previous)
                    db.commit()
            progress["done"] += 1
            return report

        try:
            reports = list(await asyncio.gather(*(one(s) for s in students)))
        finally:
            progress["running"] = False
        if finish:
            with self.context.sessions() as db:
                row = db.get(Release, release.id)
                row.finished = release.finished = utcnow()
                db.commit()
        failed = [r.student for r in reports if not r.ok]
        self.log.info(
            "Delivered %s/%s v%s to %s students (%s with failures%s)",
            release.course,
            release.material,
            release.version,
            len(reports),
            len(failed),
            f": {', '.join(failed[:10])}" if failed else "",
        )
        return reports

    async def resume(self, attempts=30, pause=2.0):
        """Finish deliveries a stopped service left unfinished: every release
        not marked finished goes to the course's students (as the hub has
        them now) who have no report of it yet; one already
        recorded is never delivered twice. Returns the releases resumed.
        """
        with self.context.sessions() as db:
            unfinished = db.scalars(select(Release).where(Release.finished.is_(None)).order_by(Release.id)).all()
        if not unfinished:
            return []
        for attempt in range(attempts):
            try:
                courses = await self.context.hub.courses()
                break
            except Exception as e:  # the hub may not answer yet while it starts us
                if attempt + 1 == attempts:
                    raise
                self.log.info("Waiting for the hub to resume %s deliveries: %s", len(unfinished), e)
                await asyncio.sleep(pause)
        resumed = []
        latest = {(r.course, r.material): r.id for r in self.latest_releases({r.course for r in unfinished})}
        for release in unfinished:
            if latest.get((release.course, release.material)) != release.id:
                with self.context.sessions() as db:  # a newer version replaced it: that one is delivered
                    db.get(Release, release.id).finished = utcnow()
                    db.commit()
                continue
            with self.context.sessions() as db:
                done = set(db.scalars(select(DeliveryReport.student).where(DeliveryReport.release_id == release.id)))
            todo = [s for s in courses.get(release.course, {}).get("student", []) if s not in done]
            self.log.warning(
                "Release %s/%s v%s was cut off by a stop: delivering to the %s students not reached yet",
                release.course,
                release.material,
                release.version,
                len(todo),
            )
            await self.deliver(release, todo)
            resumed.append(release)
        return resumed

    def _record(self, db, release, report, before):
        db.merge(
            DeliveryReport(
                release_id=release.id,
                student=report.student,
                error=report.error,
                counts=report.counts(),
                results=report.results,
            )
        )
        if release.shared:
            return
        files = dict(before)
        for result in report.results:
            if result["status"] in TAKEN:
                meta = release.files[result["path"]]
                files[result["path"]] = {"sha256": meta["sha256"], "size": meta["size"], "stamp": result.get("stamp")}
        db.merge(
            Delivered(
                course=release.course, material=release.material, student=report.student, files=files, version=release.version
            )
        )

    def latest_releases(self, courses):
        """The newest release of every material of *courses*."""
        if not courses:
            return []
        with self.context.sessions() as db:
            newest = (
                select(Release.course, Release.material, func.max(Release.version).label("version"))
                .where(Release.course.in_(list(courses)))
                .group_by(Release.course, Release.material)
                .subquery()
            )
            return db.scalars(
                select(Release)
                .join(
                    newest,
                    (Release.course == newest.c.course)
                    & (Release.material == newest.c.material)
                    & (Release.version == newest.c.version),
                )
                .order_by(Release.course, Release.material)
            ).all()

    async def sync_student(self, student, courses):
        """Give *student* every current release of *courses* they have not been given;
        returns [(release, report)].

        A release whose delivery to them failed as a whole (no account yet,
        a timeout) is tried again; one with per-file results is not.
        """
        delivered = []
        with self.context.sessions() as db:
            done = set(
                db.scalars(
                    select(DeliveryReport.release_id).where(
                        DeliveryReport.student == student, DeliveryReport.error == ""
                    )
                ).all()
            )
        for release in self.latest_releases(courses):
            if release.id not in done:
                (report,) = await self.deliver(release, [student], finish=False)
                delivered.append((release, report))
        return delivered

    async def sync(self, student, courses):
        """:meth:`sync_student`, once at a time per person: a call while one
        runs gets that one's answer; past the rate limit,
        :class:`~.limits.TooMany` (nothing is delivered twice either way)."""
        running = self._syncs.get(student)
        if running is None:
            self.sync_rate.take(student)
            running = self._syncs[student] = asyncio.ensure_future(self.sync_student(student, courses))
            running.add_done_callback(lambda t: self._syncs.pop(student) if self._syncs.get(student) is t else None)
        return await asyncio.shield(running)

    def find(self, course, material, version=None):
        with self.context.sessions() as db:
            query = select(Release).where(Release.course == course, Release.material == material)
            if version is None:
                query = query.order_by(Release.version.desc()).limit(1)
            else:
                query = query.where(Release.version == version)
            return db.scalars(query).first()

    def history(self, course, material):
        with self.context.sessions() as db:
            return db.scalars(
                select(Release).where(Release.course == course, Release.material == material).order_by(Release.version)
            ).all()

    def reports(self, release, student=None):
        with self.context.sessions() as db:
            query = select(DeliveryReport).where(DeliveryReport.release_id == release.id)
            if student is not None:
                query = query.where(DeliveryReport.student == student)
            return db.scalars(query.order_by(DeliveryReport.student)).all()
