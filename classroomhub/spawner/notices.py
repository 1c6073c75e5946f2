"""Telling a user why their kernel died: a notice on the hub's pages.

A kernel killed at the memory limit looks like a plain restart in
JupyterLab. ClassroomSpawner records each OOM kill in its state in the hub's
database (kept when the server stops and across hub restarts); this adds a
line for the owner, for an hour after the kill (and a warning while an idle
server is about to be stopped for memory pressure), to the announcements of the
hub's home, spawn and "not running" pages, after any announcement the hub's
configuration has for that page.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from html import escape

from ..units import human_bytes

NOTICE_SECONDS = 3600

#: template variables the notice is added to: ``announcement`` (every page
#: without its own) and the per-page ones that would replace it
ANNOUNCEMENTS = ("announcement", "announcement_home", "announcement_spawn")


def recent(events, now=None):
    """The OOM events ``[time, count, limit]`` (a fourth item: the servers'
    budget, when that was reached instead) of the last `NOTICE_SECONDS`."""
    now = now or time.time()
    return [list(e) for e in events if now - e[0] < NOTICE_SECONDS]


def _servers(user):
    """``(state, name in a sentence, orm spawner)`` of each server of *user* (a
    hub User) in the database, by name: servers that stopped (whose spawner
    objects the hub drops) and hub restarts keep what a notice reads."""
    orm_user = getattr(user, "orm_user", None)
    for orm_spawner in sorted(orm_user.orm_spawners.values(), key=lambda s: s.name) if orm_user else ():
        server = f"server {orm_spawner.name!r}" if orm_spawner.name else "your server"
        yield orm_spawner.state or {}, server, orm_spawner


def _clock(when):
    return datetime.fromtimestamp(when, timezone.utc).strftime("%H:%M UTC")


def _html(lines):
    return "<br>".join(escape(line) for line in lines)


def oom_notice(user, now=None):
    """The notice for *user*'s OOM kills of the last hour, or ""."""
    lines = []
    for state, server, _ in _servers(user):
        events = recent(state.get("oom_events", []), now)
        if not events:
            continue
        count, last = sum(e[1] for e in events), _clock(events[-1][0])
        limit = human_bytes(events[-1][2] if len(events[-1]) > 2 else 0)
        if len(events[-1]) > 3:  # killed at the servers' common budget
            lines.append(
                f"{count} process(es) in {server} were stopped (last at {last}) because all servers "
                f"together reached the memory budget of {human_bytes(events[-1][3])} of this hub (your "
                f"server's own limit is {limit}). A kernel that was killed restarts empty: re-run your "
                "notebook, and shut down kernels you no longer use."
            )
            continue
        lines.append(
            f"{count} process(es) in {server} were stopped (last at {last}) because it reached its "
            f"memory limit of {limit}. A kernel that was killed restarts empty: re-run your notebook, "
            "shut down kernels you no longer use, or ask your instructor about a larger tier."
        )
    return _html(lines)


def pressure_notice(user):
    """The warning for *user* whose idle server will be stopped for memory
    pressure (see :mod:`.pressure`), or ""."""
    return _html(
        f"The servers are short of memory: {server} has been idle and will be stopped at "
        f"{_clock(state['pressure_warning'][1])} unless you use it. Save your work; you can start it again later."
        for state, server, orm_spawner in _servers(user)
        if state.get("pressure_warning") and orm_spawner.server is not None
    )


def kernel_shutdown_notice(user, now=None):
    """Why kernels of *user* stopped without their owner: idle ones shut down
    for memory pressure (``kernel_shutdowns`` in a spawner's state: ``[time,
    count]``), for `NOTICE_SECONDS`; or ""."""
    lines = []
    for state, server, _ in _servers(user):
        shutdowns = recent(state.get("kernel_shutdowns", []), now)
        if shutdowns:
            lines.append(
                f"{sum(s[1] for s in shutdowns)} idle kernel(s) of {server} were shut down (last at "
                f"{_clock(shutdowns[-1][0])}) because the hub was short of memory. Your notebooks are saved; "
                "a kernel that was shut down starts empty the next time you run a cell: re-run your notebook "
                "from the top."
            )
    return _html(lines)


def ended_notice(user, now=None):
    """Why a server of *user* ended without its owner or the hub stopping it
    (a spawner records ``[time, message]`` as ``ended`` in its state: e.g. a
    Slurm job that reached its time limit), for `NOTICE_SECONDS`; or ""."""
    now = now or time.time()
    return _html(
        ended[1] for state, _, _ in _servers(user) if (ended := state.get("ended")) and now - ended[0] < NOTICE_SECONDS
    )


def install(template_vars):
    """Add the notice to the announcements in the hub's *template_vars* (once):
    to ``announcement``, and to ``announcement_home``/``announcement_spawn``
    where the configuration sets them (they replace ``announcement`` there)."""
    for key in ANNOUNCEMENTS:
        existing = template_vars.get(key)
        if getattr(existing, "classroomhub_oom_notice", False):
            continue
        if key != "announcement" and existing is None:
            continue  # the page shows `announcement`, which has the notice
        template_vars[key] = _with_notice(existing)


def _with_notice(existing):
    def announcement(user):
        base = existing(user) if callable(existing) else (existing or "")
        notices = (oom_notice, kernel_shutdown_notice, pressure_notice, ended_notice)
        return "<br>".join(part for part in (base, *(notice(user) for notice in notices)) if part)

    announcement.classroomhub_oom_notice = True
    return announcement
