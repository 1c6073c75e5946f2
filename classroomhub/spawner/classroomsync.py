"""Late joiners at start: the classroom service delivers the owner's missing
course content before their server runs (``classroom_service_url``)."""

from __future__ import annotations

import asyncio
import time

from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable

from ..synchook import sync_before_start


class ClassroomSync(LoggingConfigurable):
    """ClassroomSpawner's classroom sync before a start (a mixin of it)."""

    classroom_service_url = Unicode(
        "",
        help="""URL of the classroom service (e.g.
        ``http://127.0.0.1:10101/services/classroom/``). When set, every
        start first asks it to deliver the current releases of the owner's
        courses that they have not had yet (late joiners), after the system
        user is created and before the server runs. Empty: no sync.""",
    ).tag(config=True)

    classroom_sync_timeout = Float(
        60,
        help="""Seconds a start waits for the classroom sync; after that the server
        starts anyway, with a warning in the log. The sync never takes more than
        half of `start_timeout`: the other half is kept for launching the server
        and waiting for its port, so a slow service cannot fail a start.""",
    ).tag(config=True)

    async def sync_classroom(self, deadline):
        """Deliver missing course content, within half of what is left until
        *deadline* (a `time.monotonic` value): a slow or hung service delays
        a start, never fails it."""
        if not self.classroom_service_url:
            return
        budget = min(self.classroom_sync_timeout, (deadline - time.monotonic()) / 2)
        try:
            await asyncio.wait_for(sync_before_start(self, self.classroom_service_url, budget), budget)
        except asyncio.TimeoutError:
            self.log.warning(
                "Classroom sync for %s did not finish in %.0f s; starting the server without it",
                self.user.name,
                budget,
            )
        except Exception as e:  # e.g. the hub cannot make the sync's token
            self.log.warning("Classroom sync for %s failed; starting the server without it: %s", self.user.name, e)
