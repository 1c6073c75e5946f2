"""The audit log: who set, collected, viewed, downloaded or returned what, and when."""

from __future__ import annotations

from ..db.models import AuditEvent


def record(service, person, action, course, material="", student="", detail=""):
    # a file name that is not UTF-8 (\udcXX escapes) is logged with its bytes shown, not refused
    detail = detail.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    with service.sessions() as db:
        db.add(
            AuditEvent(actor=person.name, action=action, course=course, material=material, student=student, detail=detail)
        )
        db.commit()
