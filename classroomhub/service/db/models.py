"""The classroom service's own database (SQLite by default, PostgreSQL works).

Courses and memberships are not stored here: they come from the hub's
groups, which the roster maintains. What is stored is what only the service
knows, one table each: releases (:class:`Release`), what each student was
last given (``delivered``) and the delivery reports (``delivery_reports``),
assignments with due dates and students' extensions, submissions (the
snapshots collected), the instructor's choice of the submission that counts
(``graded_choices``), feedback returned to students, and the audit trail
(``audit``). Their files' bytes live in the store (:mod:`..files.store`);
changes to these tables come with a migration (:mod:`.migrations`).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker
from sqlalchemy.types import TypeDecorator

from ...databases import private_sqlite


def utcnow():
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A point in time, always read back in UTC with its offset.

    SQLite keeps no time zone (``DateTime(timezone=True)`` reads back naive)
    and PostgreSQL answers in the session's zone: both become aware UTC, so
    ``isoformat()`` is an RFC 3339 date-time everywhere.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class Release(Base):
    """One immutable version of a course material."""

    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("course", "material", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    course: Mapped[str] = mapped_column(String(255), index=True)
    material: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(Text)
    # {path: {sha256, size, mode}}; JSON keeps non-UTF-8 names as \\udcXX escapes
    files: Mapped[dict] = mapped_column(JSON)
    skipped: Mapped[list] = mapped_column(JSON, default=list)
    restore_deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    # when delivery to every student of the course ended; None while it runs,
    # or if the service stopped meanwhile (it resumes at the next start)
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    reports: Mapped[list[DeliveryReport]] = relationship(back_populates="release", cascade="all, delete-orphan")

    def to_dict(self, files=False):
        data = {
            "course": self.course,
            "material": self.material,
            "version": self.version,
            "created": self.created.isoformat() if self.created else None,
            "created_by": self.created_by,
            "source": self.source,
            "n_files": len(self.files),
            "size": sum(f["size"] for f in self.files.values()),
            "restore_deleted": self.restore_deleted,
            "shared": self.shared,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "finished": self.finished.isoformat() if self.finished else None,
        }
        if files:
            data["files"] = [{"path": p, **meta} for p, meta in sorted(self.files.items())]
        return data


class Delivered(Base):
    """What a student was last given of one material: {path: {sha256, size}}.

    The baseline for the next update: a file that still matches it was not
    touched by the student and may be replaced.
    """

    __tablename__ = "delivered"

    course: Mapped[str] = mapped_column(String(255), primary_key=True)
    material: Mapped[str] = mapped_column(String(255), primary_key=True)
    student: Mapped[str] = mapped_column(String(255), primary_key=True)
    files: Mapped[dict] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=0)


class DeliveryReport(Base):
    """The result of delivering one release to one student."""

    __tablename__ = "delivery_reports"

    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"), primary_key=True)
    student: Mapped[str] = mapped_column(String(255), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    error: Mapped[str] = mapped_column(Text, default="")
    counts: Mapped[dict] = mapped_column(JSON, default=dict)
    results: Mapped[list] = mapped_column(JSON, default=list)

    release: Mapped[Release] = relationship(back_populates="reports")

    def to_dict(self, results=True):
        data = {
            "student": self.student,
            "at": self.at.isoformat() if self.at else None,
            "error": self.error,
            "counts": self.counts,
            "ok": not self.error and not self.counts.get("failed"),
            # no system account yet: delivered at their first start (sync_student tries again)
            "pending": bool(self.counts.get("pending")),
        }
        if results:
            data["results"] = self.results
        return data


class Assignment(Base):
    """A released material with a due date: collected at each student's deadline."""

    __tablename__ = "assignments"

    course: Mapped[str] = mapped_column(String(255), primary_key=True)
    material: Mapped[str] = mapped_column(String(255), primary_key=True)
    due: Mapped[datetime] = mapped_column(UTCDateTime)
    late_seconds: Mapped[int] = mapped_column(Integer, default=0)
    set_by: Mapped[str] = mapped_column(String(255))
    updated: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_dict(self):
        return {
            "course": self.course,
            "material": self.material,
            "due": self.due.isoformat(),
            "late_seconds": self.late_seconds,
            "set_by": self.set_by,
            "updated": self.updated.isoformat() if self.updated else None,
        }


class Extension(Base):
    """One student's own due date for an assignment."""

    __tablename__ = "extensions"

    course: Mapped[str] = mapped_column(String(255), primary_key=True)
    material: Mapped[str] = mapped_column(String(255), primary_key=True)
    student: Mapped[str] = mapped_column(String(255), primary_key=True)
    due: Mapped[datetime] = mapped_column(UTCDateTime)
    set_by: Mapped[str] = mapped_column(String(255))


class Submission(Base):
    """An immutable snapshot of a student's assignment folder, timestamped by the service.

    ``deadline`` is set on the snapshot taken at a due date (one per
    student and due date: the unique constraint makes a collection that is
    interrupted and run again add no duplicates); submissions a student
    makes themselves have none.
    """

    __tablename__ = "submissions"
    __table_args__ = (UniqueConstraint("course", "material", "student", "deadline"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    course: Mapped[str] = mapped_column(String(255), index=True)
    material: Mapped[str] = mapped_column(String(255))
    student: Mapped[str] = mapped_column(String(255))
    taken: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # when the copy ended (taken: when it was asked for, or the due date's round began)
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    kind: Mapped[str] = mapped_column(String(32))  # deadline | submitted | collected
    late: Mapped[bool] = mapped_column(Boolean, default=False)
    # collected after its deadline because the service was not running then
    caught_up: Mapped[bool] = mapped_column(Boolean, default=False)
    files: Mapped[dict] = mapped_column(JSON, default=dict)
    skipped: Mapped[list] = mapped_column(JSON, default=list)
    # files and folders ("dir/") whose ctime was after the due date once copied: they make it late
    changed: Mapped[list] = mapped_column(JSON, default=list)
    error: Mapped[str] = mapped_column(Text, default="")

    #: file names listed per submission in tables (n_files has the count; the file API serves any)
    MAX_PATHS = 200

    def to_dict(self, files=False):
        paths = sorted(self.files)
        data = {
            "id": self.id,
            "course": self.course,
            "material": self.material,
            "student": self.student,
            "taken": self.taken.isoformat() if self.taken else None,
            "finished": self.finished.isoformat() if self.finished else None,
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "kind": self.kind,
            "late": self.late,
            "caught_up": self.caught_up,
            "n_files": len(self.files),
            "paths": paths if files else paths[: self.MAX_PATHS],
            "size": sum(f["size"] for f in self.files.values()),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped[: self.MAX_PATHS]],
            "n_skipped": len(self.skipped),
            "changed": list(self.changed or ())[: self.MAX_PATHS],
            "n_changed": len(self.changed or ()),
            "error": self.error,
        }
        if files:
            data["files"] = [{"path": p, **meta} for p, meta in sorted(self.files.items())]
        return data


class GradedChoice(Base):
    """An instructor's choice of the submission that counts for one student
    (instead of the rule: the last one on time, else the first late one)."""

    __tablename__ = "graded_choices"

    course: Mapped[str] = mapped_column(String(255), primary_key=True)
    material: Mapped[str] = mapped_column(String(255), primary_key=True)
    student: Mapped[str] = mapped_column(String(255), primary_key=True)
    submission_id: Mapped[int] = mapped_column(Integer)
    by: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def to_dict(self):
        return {"submission": self.submission_id, "by": self.by, "at": self.at.isoformat() if self.at else None}


class Feedback(Base):
    """Files a grader returned to a student (into ``~/<course>/<material>/feedback/``)."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    course: Mapped[str] = mapped_column(String(255), index=True)
    material: Mapped[str] = mapped_column(String(255))
    student: Mapped[str] = mapped_column(String(255))
    grader: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    files: Mapped[dict] = mapped_column(JSON, default=dict)
    results: Mapped[list] = mapped_column(JSON, default=list)

    def to_dict(self):
        return {
            "id": self.id,
            "course": self.course,
            "material": self.material,
            "student": self.student,
            "grader": self.grader,
            "at": self.at.isoformat() if self.at else None,
            "files": sorted(self.files),
            "results": self.results,
        }


class AuditEvent(Base):
    """Who looked at, took or returned whose work, and when."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(32))
    course: Mapped[str] = mapped_column(String(255), index=True)
    material: Mapped[str] = mapped_column(String(255), default="")
    student: Mapped[str] = mapped_column(String(255), default="")
    detail: Mapped[str] = mapped_column(Text, default="")

    FIELDS = ("at", "actor", "action", "course", "material", "student", "detail")

    def to_dict(self):
        return {f: (self.at.isoformat() if f == "at" else getattr(self, f)) for f in self.FIELDS}


def _sqlite_pragmas(connection, _record):
    # WAL: readers never wait for a writer, and a commit appends to the log
    # without an fsync of its own (synchronous=NORMAL): a collection of 300
    # students writes 300 rows, which cost a disk flush each before. A crash
    # cannot corrupt the database; a power cut may lose the last commits, and
    # a deadline snapshot lost that way is taken again at the next start.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_private_sqlite(url):
    """Make the SQLite database file of *url* readable by root alone, before
    SQLite opens it: a missing folder is made 0700, then the file 0600, as
    the example config does for the hub's (SQLite gives its ``-wal`` and
    ``-shm`` files the database's mode; existing ones are set to 0600 too)."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:"):
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    private_sqlite(url)


def open_database(url, echo=False):
    """A session factory for *url*, with the tables created if missing."""
    kwargs = {}
    if url.startswith("sqlite"):
        make_private_sqlite(url)
        kwargs["connect_args"] = {"check_same_thread": False}
    engine = create_engine(url, echo=echo, future=True, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    Base.metadata.create_all(engine)
    return sessionmaker(engine, expire_on_commit=False)
