"""The classroom service: a JupyterHub-managed tornado application.

Run by the hub as a managed service (``classroomhub-service``), it reads its
address, prefix and token from the environment JupyterHub gives it, and its
own settings from ``--config`` (a Python file with ``c.ClassroomService.…``)
or the command line. It composes the layers: one
:class:`~.domain.context.ServiceContext`, the domain objects made on it, and
the web handlers, which find it in the application's settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from urllib.parse import urlparse

from jupyterhub.services.auth import HubOAuthCallbackHandler
from tornado import web
from traitlets import Bool, Float, Integer, List, TraitError, Unicode, default, validate
from sqlalchemy import select
from traitlets.config import Application

from .._version import __version__
from ..accounts import AccountPolicy
from ..databases import CopyError
from ..environments import EnvironmentManager
from .db.migrations import SchemaTooNew, backup_beside, upgrade_database
from .db.models import Feedback, Release, Submission, make_private_sqlite, open_database
from .domain.assignments import AssignmentRules
from .domain.collect import Collector
from .domain.context import ServiceContext
from .domain.environments import EnvironmentBuilds
from .domain.grading import Grading
from .domain.releases import ReleaseService
from .files import runas
from .files.freezer import Freezer
from .files.runas import Account, ForkServer
from .files.store import ReleaseStore
from .web.api import api_handlers
from .web.assignments import assignment_handlers
from .web.grading import grading_handlers
from .web.assignment_page import assignment_page_handlers
from .web.environment_pages import environment_page_handlers
from .web.environments import environment_handlers
from .web.hub import HubClient
from .web.pages import page_handlers

#: the SQLite database's file name, in ``data_dir/db/`` by default
DATABASE = "classroom.sqlite"


class ClassroomService(Application):
    name = "classroomhub-service"
    version = __version__
    description = "Release course content into students' homes, as each student."
    # --AccountPolicy.allowed_system_accounts=…, --EnvironmentManager.cache_dir=… on the command line
    classes = [AccountPolicy, EnvironmentManager]

    aliases = {
        "config": "ClassroomService.config_file",
        "data-dir": "ClassroomService.data_dir",
        "db-url": "ClassroomService.db_url",
        "log-level": "Application.log_level",
    }

    config_file = Unicode("", help="A Python configuration file to load (c.ClassroomService.…).").tag(config=True)

    data_dir = Unicode(
        "/srv/classroomhub",
        help="""Where the service keeps its database (by default, in ``db/``,
        mode 0700, the file 0600) and its store. Made mode 0711: workers
        running as students open the released files named in their job, and
        can list nothing; collected work is in the store's 0700 ``private/``.""",
    ).tag(config=True)

    db_url = Unicode(
        help="SQLAlchemy URL of the service's database; default: SQLite in `data_dir`. PostgreSQL works.",
    ).tag(config=True)

    @default("db_url")
    def _default_db_url(self):
        return f"sqlite:///{os.path.join(self.data_dir, 'db', DATABASE)}"

    store_dir = Unicode(help="Folder of the release store; default: `data_dir`/store.").tag(config=True)

    @default("store_dir")
    def _default_store_dir(self):
        return os.path.join(self.data_dir, "store")

    concurrency = Integer(
        0,
        help="How many students' homes are written at once; 0: twice the number of CPUs.",
    ).tag(config=True)

    worker_timeout = Float(
        120,
        help="Seconds a worker may spend in one home before it is killed and the student's delivery fails.",
    ).tag(config=True)

    max_release_bytes = Integer(
        10 * 1024**3,
        help="Largest total size of one release; a bigger folder is refused with a message.",
    ).tag(config=True)

    collect_interval = Float(
        30.0,
        help="""Longest sleep of the collection scheduler between looks at due
        dates (it wakes at each due date, and when one is set).""",
    ).tag(config=True)

    max_collect_bytes = Integer(
        1024**3,
        help="Most bytes collected from one student's assignment folder; the rest is left out with a note.",
    ).tag(config=True)

    max_collect_file_bytes = Integer(
        100 * 1024**2,
        help="Files larger than this are not collected (a note says so): datasets and outputs, not work.",
    ).tag(config=True)

    hub_cache_seconds = Float(
        5.0,
        help="How long answers of the hub's API (people's groups, course members) are reused.",
    ).tag(config=True)

    max_collect_files = Integer(
        10_000,
        help="""Most files and folders read from one student's assignment folder per
        snapshot; the rest is left out with a note (a folder's names are read
        only up to this many, so the worker's memory stays bounded).""",
    ).tag(config=True)

    max_submissions = Integer(
        20,
        help="How many times a student may hand in one assignment themselves (0: no limit); then 403.",
    ).tag(config=True)

    submit_rate_limit = Integer(
        5,
        help="Hand-ins of one assignment a student may make per `submit_rate_window` (0: no limit); then 429.",
    ).tag(config=True)

    submit_rate_window = Float(600.0, help="Seconds over which `submit_rate_limit` counts.").tag(config=True)

    sync_rate_limit = Integer(
        6,
        help="""Syncs (``POST /api/sync``) one person may start per `sync_rate_window`
        (0: no limit); then 429. Calls while their sync runs share it and are not counted.""",
    ).tag(config=True)

    sync_rate_window = Float(60.0, help="Seconds over which `sync_rate_limit` counts.").tag(config=True)

    freeze_at_deadline = Bool(
        True,
        help="""Freeze every process of a student (cgroup v1 freezer) while their
        deadline snapshot is copied, so nothing changes during the copy. Without
        a writable freezer hierarchy the copy runs unfrozen; files changed after
        the due date are flagged either way.""",
    ).tag(config=True)

    freezer_parent = Unicode(
        help="""Folder in the freezer hierarchy for the groups of frozen students
        (thawed at start if left over). Default: ``classroomhub-collect-`` and
        8 hex digits of `data_dir`'s path, so that services with their own data
        folders on one host never thaw each other's students.""",
    ).tag(config=True)

    @default("freezer_parent")
    def _default_freezer_parent(self):
        digest = hashlib.sha256(os.fsencode(os.path.realpath(self.data_dir))).hexdigest()
        return f"classroomhub-collect-{digest[:8]}"

    student_cgroup_parent = Unicode(
        "classroomhub",
        help="""ClassroomSpawner's ``cgroup_parent`` on this hub: the worker of a
        student's hand-in joins their running server's memory and pids groups
        (their own limits). Empty: never.""",
    ).tag(config=True)

    worker_memory_bytes = Integer(
        512 * 1024**2,
        help="Address space (RLIMIT_AS) of each worker that reads or writes a home.",
    ).tag(config=True)

    fork_server = Bool(
        True,
        help="""Start workers by forking a pre-loaded root process (each child
        becomes the student before it does anything) instead of a new Python
        per home: about 30 ms less per student. Off: one process per home.""",
    ).tag(config=True)

    environment_builds_at_once = Integer(
        1,
        help="""How many environment builds run at once (each runs the installer:
        a CPU and network load); the others wait their turn.""",
    ).tag(config=True)

    environment_build_queue = Integer(
        8,
        help="How many environment builds may wait or run; past it, a create or update is refused (409).",
    ).tag(config=True)

    environment_builds_per_person = Integer(
        2,
        help="How many environment builds one person may have waiting or running; past it, their "
        "create or update is refused (409), so one person cannot fill the queue for everyone.",
    ).tag(config=True)

    live_server_roles = List(
        Unicode(),
        ["instructor"],
        help="""Course roles whose members see a link to each student's live
        server on the submissions table (root and admin tiers always do). The
        hub alone decides who may open a server: list a role here only if the
        roster authenticator's ``course_scopes`` give it
        ``access:servers!group={students}`` (instructors have it by default,
        TAs do not).""",
    ).tag(config=True)

    @validate("live_server_roles")
    def _validate_live_server_roles(self, proposal):
        roles = proposal["value"]
        if set(roles) - {"instructor", "ta"}:
            raise TraitError(f"live_server_roles: only 'instructor' and 'ta' may open students' servers, not {roles}")
        return roles

    hub_base_url = Unicode(help="The hub's base URL (for links to servers); default: $JUPYTERHUB_BASE_URL.").tag(
        config=True
    )

    @default("hub_base_url")
    def _default_hub_base_url(self):
        return os.environ.get("JUPYTERHUB_BASE_URL", "/")

    bind_url = Unicode(help="Where to listen; default: $JUPYTERHUB_SERVICE_URL.").tag(config=True)

    @default("bind_url")
    def _default_bind_url(self):
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    base_url = Unicode(help="URL prefix; default: $JUPYTERHUB_SERVICE_PREFIX.").tag(config=True)

    @default("base_url")
    def _default_base_url(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/classroom/")

    hub_api_url = Unicode(help="The hub's API; default: $JUPYTERHUB_API_URL.").tag(config=True)

    @default("hub_api_url")
    def _default_hub_api_url(self):
        return os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api")

    api_token = Unicode(help="The service's hub token; default: $JUPYTERHUB_API_TOKEN.").tag(config=True)

    @default("api_token")
    def _default_api_token(self):
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    @default("log_level")
    def _default_log_level(self):
        return logging.INFO

    def initialize(self, argv=None):
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
        os.makedirs(self.data_dir, mode=0o711, exist_ok=True)
        os.chmod(self.data_dir, 0o711)
        # every account the service works as passes this (see classroomhub.accounts)
        Account.policy = AccountPolicy(parent=self)
        self._move_legacy_database()
        self._upgrade_database()
        store = ReleaseStore(self.store_dir)
        store.sweep_lent()
        # what every part shares, made once: the domain objects get it, handlers find it in the settings
        self.context = context = ServiceContext(
            sessions=open_database(self.db_url),
            store=store,
            log=self.log,
            hub=HubClient(self.hub_api_url, self.api_token, self.hub_cache_seconds, log=self.log),
            worker_timeout=self.worker_timeout,
            concurrency=self.concurrency or None,
        )
        self._seal_collected_objects()
        context.releases = ReleaseService(
            context, max_bytes=self.max_release_bytes, sync_rate=(self.sync_rate_limit, self.sync_rate_window)
        )
        context.rules = AssignmentRules(context)
        context.collector = Collector(
            context,
            context.rules,
            max_bytes=self.max_collect_bytes,
            max_file_bytes=self.max_collect_file_bytes,
            max_files=self.max_collect_files,
            max_submissions=self.max_submissions,
            submit_rate=(self.submit_rate_limit, self.submit_rate_window),
            freezer=self._freezer(),
            cgroup_parent=self.student_cgroup_parent or None,
        )
        context.grading = Grading(context, max_bytes=self.max_collect_bytes)
        # shared environments: in data_dir/environments unless EnvironmentManager.data_dir says otherwise
        manager = EnvironmentManager(parent=self, log=self.log)
        if not manager.data_dir:
            manager.data_dir = self.data_dir
        context.environments = EnvironmentBuilds(
            context,
            manager,
            os.path.join(self.data_dir, "environment-builds"),
            at_once=self.environment_builds_at_once,
            queue=self.environment_build_queue,
            per_person=self.environment_builds_per_person,
        )
        runas.Subprocesses.memory = self.worker_memory_bytes

    def _freezer(self):
        """The freezer of deadline snapshots, if they freeze and one is writable."""
        if not self.freeze_at_deadline:
            return None
        freezer = Freezer(parent=self.freezer_parent, log=self.log)
        if not freezer.available:
            self.log.warning("No writable cgroup v1 freezer at %s: deadline snapshots run unfrozen", freezer.root)
            return None
        return freezer

    # the context's database and store, for tools and tests
    sessions = property(lambda self: self.context.sessions)
    store = property(lambda self: self.context.store)

    def _upgrade_database(self):
        """Bring the database to this release's schema (after a backup beside
        it, when there is something to migrate); a database from a newer
        classroomhub stops the service with one line."""
        if self.db_url.startswith("sqlite"):
            make_private_sqlite(self.db_url)  # before anything opens it: the backup gets its mode
        try:
            upgrade_database(
                self.db_url,
                backup=lambda url: backup_beside(url, os.path.join(self.data_dir, "db")),
                log=self.log,
            )
        except SchemaTooNew as e:
            self.log.critical("%s", e)
            self.exit(1)
        except CopyError as e:  # no backup, no migration
            self.log.critical(
                "The database must be upgraded, but could not be backed up first: %s."
                " Back it up yourself, then run `classroomhub upgrade-db --no-backup`",
                e,
            )
            self.exit(1)

    def _move_legacy_database(self):
        """An older service kept its SQLite database in ``data_dir`` itself
        (0711): move it, with its -wal and -shm files, into the 0700 ``db/``."""
        legacy = os.path.join(self.data_dir, DATABASE)
        if self.db_url != self._default_db_url() or not os.path.exists(legacy):
            return
        target = os.path.join(self.data_dir, "db")
        os.makedirs(target, mode=0o700, exist_ok=True)
        if os.path.exists(os.path.join(target, DATABASE)):
            self.log.warning("Both %s and %s exist: using the latter", legacy, target)
            return
        for suffix in ("-wal", "-shm", ""):  # the database last: it is what marks the move done
            if os.path.exists(legacy + suffix):
                os.chmod(legacy + suffix, 0o600)
                os.rename(legacy + suffix, os.path.join(target, DATABASE + suffix))
        self.log.info("Moved the service's database into %s (mode 0700)", target)

    def _seal_collected_objects(self):
        """A store written before it had a private area kept collected work
        with the released files: move what was only ever collected (once)."""
        store = self.context.store
        marker = os.path.join(store.private, ".sealed")
        if os.path.exists(marker):
            return
        with self.context.sessions() as db:
            released = {m["sha256"] for files in db.scalars(select(Release.files)) for m in files.values()}
            collected = {
                m["sha256"]
                for model in (Submission, Feedback)
                for files in db.scalars(select(model.files))
                for m in files.values()
            }
        moved = store.make_private(collected - released)
        if moved:
            self.log.info("Moved %d collected files into the store's private area", moved)
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))

    def make_app(self):
        prefix = self.base_url if self.base_url.endswith("/") else self.base_url + "/"
        handlers = [
            (prefix + "oauth_callback", HubOAuthCallbackHandler),
            *grading_handlers(prefix),
            *assignment_page_handlers(prefix),
            *environment_page_handlers(prefix),
            *page_handlers(prefix),
            *assignment_handlers(prefix),
            *environment_handlers(prefix),
            *api_handlers(prefix),  # ends with the API's catch-all 404
        ]
        return web.Application(
            handlers,
            context=self.context,
            service_prefix=prefix,
            hub_base_url=self.hub_base_url,
            live_server_roles=self.live_server_roles,
            cookie_secret=os.urandom(32),
            xsrf_cookies=False,
        )

    async def serve(self):
        url = urlparse(self.bind_url)
        context = self.context
        if self.fork_server:
            context.runner = ForkServer(os.path.join(self.data_dir, "run"), log=self.log, memory=self.worker_memory_bytes)
            await context.runner.start()
        app = self.make_app()
        server = app.listen(url.port or 80, address=url.hostname or "127.0.0.1", xheaders=True)
        self.log.info("classroomhub service %s listening on %s%s", __version__, self.bind_url, self.base_url)
        # collects whatever came due while the service was down, then each due date
        context.keep(asyncio.ensure_future(context.collector.run(self.collect_interval)))
        # deliveries cut off by a stop go on to the students not reached yet
        context.keep(asyncio.ensure_future(context.releases.resume()))
        try:
            await asyncio.Event().wait()
        finally:
            server.stop()
            if context.runner is not None:
                await context.runner.stop()

    def start(self):
        asyncio.run(self.serve())


def main(argv=None):
    service = ClassroomService()
    service.initialize(argv)
    service.start()
