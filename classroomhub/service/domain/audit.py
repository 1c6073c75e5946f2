"""The audit log: who set, collected, viewed, downloaded or returned what, and when."""

from __future__ import annotations

from sqlalchemy import select

from ..db.models import AuditEvent


def record(context, person, action, course, material="", student="", detail=""):
    """Add one event by *person* to the log in *context*'s database."""
    # a file name that is not UTF-8 (\udcXX escapes) is logged with its bytes shown, not refused
    detail = detail.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    with context.sessions() as db:
        db.add(
            AuditEvent(actor=person.name, action=action, course=course, material=material, student=student, detail=detail)
        )
        db.commit()


def events(context, course):
    """The events of *course*, oldest first."""
    with context.sessions() as db:
        return db.scalars(select(AuditEvent).where(AuditEvent.course == course).order_by(AuditEvent.id)).all()
