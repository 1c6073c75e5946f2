"""Telling a user why their kernel died: a notice on the hub's pages.

A kernel killed at the memory limit looks like a plain restart in
JupyterLab. ClassroomSpawner records each OOM kill; this adds a line to the
hub's ``announcement`` (home, spawn and "not running" pages) for the owner,
for an hour, next to any announcement the hub already has.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from html import escape

from .enforcement import human_bytes

NOTICE_SECONDS = 3600


def oom_notice(user, now=None):
    """The notice for *user* (a hub User), or "" if nothing happened recently."""
    if user is None or not hasattr(user, "spawners"):
        return ""
    now = now or time.time()
    lines = []
    for name, spawner in sorted(user.spawners.items()):
        events = [e for e in getattr(spawner, "oom_events", ()) if now - e[0] < NOTICE_SECONDS]
        if not events:
            continue
        count = sum(n for _, n in events)
        last = datetime.fromtimestamp(events[-1][0], timezone.utc).strftime("%H:%M UTC")
        server = f"server {name!r}" if name else "your server"
        limit = human_bytes(getattr(spawner, "mem_limit", 0))
        lines.append(
            f"{count} process(es) in {server} were stopped (last at {last}) because it reached its "
            f"memory limit of {limit}. A kernel that was killed restarts empty: re-run your notebook, "
            "shut down kernels you no longer use, or ask your instructor about a larger tier."
        )
    return "<br>".join(escape(line) for line in lines)


def install(template_vars):
    """Add the notice to ``announcement`` in the hub's *template_vars* (once)."""
    existing = template_vars.get("announcement")
    if getattr(existing, "classroomhub_oom_notice", False):
        return

    def announcement(user):
        base = existing(user) if callable(existing) else (existing or "")
        notice = oom_notice(user)
        return "<br>".join(part for part in (base, notice) if part)

    announcement.classroomhub_oom_notice = True
    template_vars["announcement"] = announcement
