"""What the classroom service's parts share: one object, made once.

The app (``app.py``) makes one :class:`ServiceContext` at start and hands it
to every domain object (``ReleaseService(context, ...)``,
``Collector(context, ...)``, ...) and, through tornado's application
settings, to every handler (``self.context``). Domain objects read
``runner`` when they start a worker, so the fork server the app starts
later is used from then on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class ServiceContext:
    """The database, store, hub client and workers of one running service,
    and the domain objects made on them."""

    #: the service's database: a SQLAlchemy session factory (``db.models.open_database``)
    sessions: Callable
    #: the release store (``files.store.ReleaseStore``): released content and collected work
    store: Any
    log: logging.Logger
    #: what the hub knows about people and courses (``web.hub.HubClient``); None in tests without a hub
    hub: Any = None
    #: how workers start: a ``files.runas.ForkServer``, or None: a new process per home
    runner: Any = None
    #: seconds a worker may spend in one home before it is killed
    worker_timeout: float = 120
    #: homes read or written at once, per kind of job; None: twice the number of CPUs
    concurrency: int | None = None

    # the domain objects, made by the app from this context (handlers reach them here)
    releases: Any = None  # domain.releases.ReleaseService
    rules: Any = None  # domain.assignments.AssignmentRules
    collector: Any = None  # domain.collect.Collector
    grading: Any = None  # domain.grading.Grading
    environments: Any = None  # domain.environments.EnvironmentBuilds

    _tasks: set = field(default_factory=set, repr=False)

    def keep(self, task: asyncio.Future):
        """Hold a background task until it is done (and log its failure)."""
        self._tasks.add(task)

        def done(t):
            self._tasks.discard(t)
            if not t.cancelled() and t.exception():
                self.log.error("Background task failed", exc_info=t.exception())

        task.add_done_callback(done)

    def places(self):
        """A semaphore of ``concurrency`` places (homes worked in at once)."""
        return asyncio.Semaphore(self.concurrency or 2 * (os.cpu_count() or 1))
