"""Shared environments through the service: builds as background jobs.

A build takes seconds to minutes, so a create or an update that builds is a
:class:`Build` job: it is answered at once and runs in the background, at
most ``at_once`` of them in the whole service and one per environment
(a second is refused with :class:`Busy`, as is a queue longer than
``queue``, a person's own builds past ``per_person`` and a build while the
environments' disk is short, see ``EnvironmentManager.build_reserve``).
The manager (``environments.EnvironmentManager``) does the work with its
installer as child processes, so the service keeps answering.

Each job is kept as a JSON file in its own folder (0700), so a restart
still shows what happened: a job the stop cut off (``queued`` or
``running`` when the service ended, even by SIGKILL) is marked ``failed``
("interrupted") at the next start; the manager never made its version
current.

A build runs in an event loop of its own, in a thread: the installer's
processes are asynchronous, but what the manager does between them (walking
a new version's files to make them read-only, handing them over) is not,
and would hold up every request meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import datetime
import json
import os
import threading

from sqlalchemy import select

from ...environments import BuildError, EnvError, EnvironmentBusy, EnvironmentSpec, SpecError
from ...environments.layout import write_json_atomic
from ..db.models import AuditEvent
from .audit import record
from .errors import Invalid, NotFound

#: lines of a build's output kept with its job (the whole log is the manager's)
LOG_LINES = 2000
#: actions of the audit log written here
ACTIONS = ("environment-create", "environment-update", "environment-remove")
INTERRUPTED = "interrupted: the service stopped before the build ended; the version in force stays"


class Busy(RuntimeError):
    """Another build of the environment runs or waits, or the queue is full (a 409)."""


async def in_own_loop(work, progress):
    """``await work(report)`` in a new event loop in a worker thread, where
    ``report(line)`` calls *progress* in this loop; a cancellation here
    cancels the work there (the manager then stops its installer and
    cleans up) and waits for it."""
    loop = asyncio.get_running_loop()
    started = concurrent.futures.Future()
    stop = threading.Event()

    def report(line):
        loop.call_soon_threadsafe(progress, line)

    def run():
        inner = asyncio.new_event_loop()
        try:
            task = inner.create_task(work(report))
            started.set_result((inner, task))
            if stop.is_set():  # cancelled before this thread began
                task.cancel()
            return inner.run_until_complete(task)
        finally:
            inner.close()

    done = loop.run_in_executor(None, run)
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        stop.set()
        if started.done():
            inner, task = started.result()
            with contextlib.suppress(RuntimeError):  # its loop has ended meanwhile
                inner.call_soon_threadsafe(task.cancel)
        await asyncio.wait([done])
        with contextlib.suppress(BaseException):  # its end is the cancellation's, already on its way
            done.result()
        raise


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Build:
    """One create or update that builds: who asked, what, and how it went."""

    FIELDS = ("id", "environment", "action", "by", "declaration", "state", "queued", "started", "finished", "version", "error", "removed", "kept")

    def __init__(self, id, environment, action, by, declaration, **fields):
        self.id, self.environment, self.action, self.by = id, environment, action, by
        #: the declaration asked for (a create) or the fields changed (an update)
        self.declaration = declaration
        self.state = fields.get("state", "queued")  # queued, running, succeeded, failed
        self.queued = fields.get("queued") or _now()
        self.started = fields.get("started")
        self.finished = fields.get("finished")
        self.version = fields.get("version")
        self.error = fields.get("error", "")
        self.removed = fields.get("removed", [])  # old versions pruned after it
        self.kept = fields.get("kept", {})  # old versions kept: {version: pids}
        self.log = collections.deque(fields.get("log", ()), maxlen=LOG_LINES)

    @property
    def done(self):
        return self.state in ("succeeded", "failed")

    def to_dict(self, log=True):
        data = {key: getattr(self, key) for key in self.FIELDS}
        if log:
            data["log"] = list(self.log)
        return data


class EnvironmentBuilds:
    """The service's side of shared environments: builds as jobs, removals,
    declaration changes, each written to the audit log."""

    def __init__(self, context, manager, folder, at_once=1, queue=8, per_person=2, keep=200):
        self.context = context
        self.manager = manager
        self.folder = folder
        self.queue = queue
        self.per_person = per_person
        self.keep = keep
        self._places = asyncio.Semaphore(at_once)
        self._builds = {}  # id -> Build
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
        self._load()

    @property
    def log(self):
        return self.context.log

    # -- the jobs, kept on disk ------------------------------------------------------

    def _path(self, build_id):
        return os.path.join(self.folder, f"{int(build_id)}.json")

    def _save(self, build):
        write_json_atomic(self._path(build.id), build.to_dict(), mode=0o600)

    def _load(self):
        """Read the jobs of earlier runs; the ones a stop cut off failed."""
        for entry in os.listdir(self.folder):
            stem, _, ext = entry.partition(".")
            if not stem.isdigit() or ext != "json":
                continue
            try:
                with open(os.path.join(self.folder, entry)) as f:
                    data = json.load(f)
                build = Build(**data)
            except (OSError, ValueError, TypeError) as e:
                self.log.warning("Skipping the unreadable build record %s: %s", entry, e)
                continue
            if not build.done:
                build.state, build.error, build.finished = "failed", INTERRUPTED, build.finished or _now()
                self._save(build)
                self.log.warning("Environment %s: build %d was interrupted by a stop", build.environment, build.id)
            self._builds[build.id] = build

    def _forget_old(self):
        finished = sorted(b.id for b in self._builds.values() if b.done)
        for build_id in finished[: max(0, len(self._builds) - self.keep)]:
            del self._builds[build_id]
            try:
                os.unlink(self._path(build_id))
            except FileNotFoundError:
                pass

    def active(self, name):
        """The build of *name* that waits or runs, or None."""
        return next((b for b in self._builds.values() if b.environment == name and not b.done), None)

    def builds(self, name=None):
        """The builds (of *name*), newest first."""
        return sorted((b for b in self._builds.values() if name is None or b.environment == name), key=lambda b: -b.id)

    def build(self, name, build_id):
        build = self._builds.get(build_id)
        if build is None or build.environment != name:
            raise NotFound(f"No build {build_id} of environment {name!r}")
        return build

    # -- reading ---------------------------------------------------------------------

    def spec(self, name):
        """The declaration of *name*, or :class:`NotFound`."""
        try:
            return self.manager.spec(name)
        except SpecError as e:  # not a valid name: it cannot exist
            raise NotFound(str(e)) from None
        except EnvError:
            raise NotFound(f"No environment named {name!r}") from None

    def info(self, name):
        self.spec(name)
        return self.manager.info(name)

    def build_log(self, name, version=None):
        try:
            return self.manager.build_log(name, version)
        except (EnvError, SpecError) as e:
            raise NotFound(str(e)) from None

    def history(self, name):
        """The audit log's events about *name*, oldest first."""
        with self.context.sessions() as db:
            query = select(AuditEvent).where(AuditEvent.material == name, AuditEvent.action.in_(ACTIONS))
            return db.scalars(query.order_by(AuditEvent.id)).all()

    # -- changing --------------------------------------------------------------------

    def _check_free(self, name):
        active = self.active(name)
        if active is not None:
            raise Busy(f"Environment {name}: build {active.id} is {active.state}; wait for it to end")
        waiting = sum(1 for b in self._builds.values() if not b.done)
        if waiting >= self.queue:
            raise Busy(f"{waiting} environment builds are waiting or running; try again when one has ended")

    def _check_may_queue(self, person):
        """A new build of *person*'s: refused (:class:`Busy`) past their own share of the
        queue (so one person cannot fill it for everyone) or when the disk is short."""
        theirs = sum(1 for b in self._builds.values() if not b.done and b.by == person.name)
        if theirs >= self.per_person:
            raise Busy(f"You have {theirs} environment builds waiting or running (at most {self.per_person}); try again when one has ended")
        try:
            self.manager.check_space()
        except EnvError as e:
            raise Busy(str(e)) from None

    def _audit(self, person, action, audiences, detail):
        """One event per course the environment is (or was) for; one hub-wide one (course '') otherwise."""
        courses = sorted({a.partition(":")[2] for audience in audiences for a in audience if a.startswith("course:")})
        for course in courses or [""]:
            record(self.context, person, action, course, detail["name"], "", detail["text"])

    def start_create(self, person, spec):
        """Queue the first build of the new environment *spec*; returns its :class:`Build`."""
        if spec.name in self.manager.names():
            raise Busy(f"Environment {spec.name} exists already: update it instead")
        self._check_free(spec.name)
        self._check_may_queue(person)
        build = self._start(person, spec.name, "create", spec.to_dict(), lambda progress: self.manager.create(spec, progress))
        text = f"build {build.id}: packages {' '.join(spec.packages)}; for {', '.join(spec.audience)}"
        self._audit(person, "environment-create", [spec.audience], {"name": spec.name, "text": text})
        return build

    def changed(self, name, changes):
        """The declaration *name* would have with *changes* (the manager's
        update fields but rebuild); :class:`Invalid` if it is not valid."""
        data = self.spec(name).to_dict()
        data.update({key: value for key, value in changes.items() if value is not None})
        try:
            return EnvironmentSpec.from_dict(data)
        except SpecError as e:
            raise Invalid(str(e)) from None

    def builds_for(self, name, changes, rebuild):
        """Whether an update with *changes* builds a new version (as the manager decides)."""
        old = self.spec(name)
        return bool(rebuild) or changes.get("packages") is not None or self.changed(name, changes).display_name != old.display_name

    def start_update(self, person, name, changes, rebuild=False):
        """Queue a build of *name* with *changes*; afterwards the versions no process uses are removed."""
        old, new = self.spec(name), self.changed(name, changes)
        self._check_free(name)
        self._check_may_queue(person)

        async def update(progress):
            version = await self.manager.update(name, **changes, rebuild=True, progress=progress)
            try:  # as `classroomhub env update`: the old versions go once unused
                build.removed, kept = self.manager.prune(name)  # (in the build's own thread)
                build.kept = {str(v): pids for v, pids in kept.items()}
            except EnvError as e:
                build.log.append(f"# old versions not removed: {e}")
            return version

        build = self._start(person, name, "update", {k: v for k, v in changes.items() if v is not None}, update)
        self._audit(person, "environment-update", [old.audience, new.audience], {"name": name, "text": self._describe(build.id, changes, rebuild)})
        return build

    @staticmethod
    def _describe(build_id, changes, rebuild):
        parts = [f"build {build_id}"] if build_id else []
        if changes.get("packages") is not None:
            parts.append(f"packages {' '.join(changes['packages'])}")
        elif rebuild:
            parts.append("rebuilt")
        for key in ("audience", "display_name", "default"):
            if changes.get(key) is not None:
                value = changes[key]
                parts.append(f"{key} {', '.join(value) if isinstance(value, list) else value}")
        return "; ".join(parts)

    async def update_declaration(self, person, name, changes):
        """Change who gets *name* (audience, default) without a build; returns the new declaration."""
        old, new = self.spec(name), self.changed(name, changes)
        self._check_free(name)
        try:
            await self.manager.update(name, **changes, rebuild=False)
        except EnvironmentBusy as e:
            raise Busy(str(e)) from None
        self._audit(person, "environment-update", [old.audience, new.audience], {"name": name, "text": self._describe(None, changes, False)})
        return self.manager.spec(name)

    async def remove(self, person, name):
        """Remove *name* entirely; :class:`Busy` while a build runs or a process uses it."""
        spec = self.spec(name)
        self._check_free(name)
        try:  # reads every process's /proc entry and deletes a tree: not in the event loop
            await asyncio.to_thread(self.manager.remove, name)
        except EnvError as e:  # in use, or a build or removal from the command line runs
            raise Busy(str(e)) from None
        self._audit(person, "environment-remove", [spec.audience], {"name": name, "text": f"packages {' '.join(spec.packages)}"})

    def _start(self, person, name, action, declaration, work):
        build_id = max(self._builds, default=0) + 1
        build = Build(build_id, name, action, person.name, declaration)
        self._builds[build_id] = build
        self._save(build)
        self._forget_old()
        self.context.keep(asyncio.ensure_future(self._run(build, work)))
        return build

    async def _run(self, build, work):
        try:
            async with self._places:
                build.state, build.started = "running", _now()
                self._save(build)
                build.version = await in_own_loop(work, build.log.append)
            build.state = "succeeded"
        except (BuildError, EnvError, SpecError) as e:
            build.state, build.error = "failed", str(e)
        except asyncio.CancelledError:  # the service stops
            build.state, build.error = "failed", INTERRUPTED
            raise
        except Exception as e:
            build.state, build.error = "failed", f"internal error: {e.__class__.__name__}; the service's log has the details"
            self.log.exception("Environment %s: build %d failed", build.environment, build.id)
        finally:
            build.finished = _now()
            self._save(build)
            self.log.info("Environment %s: build %d %s", build.environment, build.id, build.state)
