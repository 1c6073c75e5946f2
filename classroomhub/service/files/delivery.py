"""Delivering a release into students' homes, as each student.

One worker per student, a few at a time; each returns a result per file
(``added``, ``unchanged``, ``updated``, ``kept``, ``restored``,
``left-deleted``, ``failed``) and a student whose worker fails as a whole
gets ``failed`` for every file, with the reason. Other students are not
affected either way.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from . import runas

STATUSES = ("added", "unchanged", "updated", "kept", "restored", "left-deleted", "failed")


@dataclass
class DeliveryJob:
    """What a worker writes into one home: a version of a release (the
    database row is ``db.models.Release``), a grader's copy or feedback."""

    course: str
    material: str
    version: int
    files: dict  # {path: {sha256, size, mode}}
    restore_deleted: bool = False
    shared: bool = False
    #: the folder in the home, if not ``<course>/<material>`` (feedback, a grader's copy)
    folder: tuple = ()

    @property
    def base(self):
        return list(self.folder) or [self.course, self.material]


@dataclass
class StudentReport:
    student: str
    results: list = field(default_factory=list)  # [{path, status, detail}]
    error: str = ""
    #: no system account yet: nothing was tried; delivered when their server first starts
    pending: bool = False

    def counts(self):
        counts = dict.fromkeys(STATUSES, 0)
        for result in self.results:
            counts[result["status"]] += 1
        if self.pending:  # kept with the counts: the stored report has no column of its own for it
            counts["pending"] = 1
        return counts

    @property
    def ok(self):
        return not self.error and not any(r["status"] == "failed" for r in self.results)


def deliver_job(store, account, release, previous):
    """The worker's job: *previous* is {path: {sha256, size}} delivered to this student before."""
    files = []
    for path, meta in sorted(release.files.items()):
        files.append(
            {
                "path": path,
                "sha256": meta["sha256"],
                "size": meta["size"],
                "mode": meta["mode"],
                "object": store.object_path(meta["sha256"]),
                "previous": previous.get(path),
            }
        )
    return {
        "home": account.home,
        "base": release.base,
        "version": release.version,
        "restore_deleted": release.restore_deleted,
        "files": files,
    }


async def deliver_to(store, login, release, previous=None, timeout=120, runner=None):
    """Deliver *release* to one student; never raises for the student's files.

    *runner* starts the worker: a :class:`~.runas.ForkServer`, or by default
    a new process per student.
    """
    runner = runner or runas.Subprocesses
    report = StudentReport(login)
    try:
        account = runas.Account.of(login)
        if release.shared:
            target = store.shared_tree(f"{release.course}--{release.material}--v{release.version}", release.files)
            job = {"home": account.home, "base": release.base, "target": target}
            report.results = await runner.run_json(account, "link", job, timeout)
        else:
            job = deliver_job(store, account, release, previous or {})
            async with store.lent_to(account, job["files"]):  # collected work: a copy only they can read
                report.results = await runner.run_json(account, "deliver", job, timeout)
    except runas.NoAccount as e:
        report.error, report.pending = str(e), True
    except (LookupError, runas.WorkerError, OSError) as e:
        report.error = str(e)
        report.results = [{"path": p, "status": "failed", "detail": str(e)} for p in sorted(release.files)]
    return report


async def deliver_all(
    store, release, students, previous=None, concurrency=None, timeout=120, progress=None, runner=None
):
    """Deliver *release* to every login in *students*, *concurrency* at a time.

    *previous*: {login: {path: {sha256, size}}}. *progress*, if given, is
    called with each StudentReport as it completes.
    """
    previous = previous or {}
    limit = asyncio.Semaphore(concurrency or 2 * (os.cpu_count() or 1))

    async def one(login):
        async with limit:
            report = await deliver_to(store, login, release, previous.get(login), timeout, runner)
        if progress is not None:
            progress(report)
        return report

    return list(await asyncio.gather(*(one(login) for login in students)))
