"""The roster in force: read at start, re-read when its file changes, applied to the hub.

:class:`RosterWatchMixin` is the base of the roster authenticators. At the
hub's start it applies the roster to the database before anything is served
(a roster file broken or missing then runs on the last good copy, else the
hub stops with one ``file:line`` line); afterwards it polls the file and
applies each change at once. A file broken later leaves the roster in force
and is reported in the log and in ``roster_error``.
"""

from __future__ import annotations

import asyncio
import copy
import os

from jupyterhub.app import JupyterHub
from jupyterhub.auth import Authenticator
from traitlets import Bool, Float, Unicode, default, validate

from ..lastgood import LastGoodRoster
from ..roster import RosterError, load_roster
from ..sync import apply_roster, managed_role_specs, stop_unadmitted_servers

LAST_GOOD_NAME = "classroomhub-last-good-roster.json"


class RosterWatchMixin(Authenticator):
    """Keeps ``self.roster`` the roster file's last good content, applied to the hub."""

    roster_path = Unicode(
        help="""Path of the roster file (YAML or plain userlist).

        The only allow list: a person is admitted iff the roster lists them
        (or a configured GitHub team maps them to a tier). Re-read when it
        changes; see `roster_poll_interval`.
        """,
    ).tag(config=True)

    @validate("roster_path")
    def _validate_roster_path(self, proposal):
        return os.path.abspath(proposal.value) if proposal.value else ""

    last_good_roster_file = Unicode(
        help="""Where the hub keeps a copy (mode 0600) of the last roster it applied.

        If the roster file is broken or missing when the hub starts, the hub
        runs on this copy (logging the file's problems) until the file is
        fixed; with no copy either, it refuses to start. Default:
        ``classroomhub-last-good-roster.json`` beside the hub's SQLite
        database, else in the hub's working directory.
        """,
    ).tag(config=True)

    @default("last_good_roster_file")
    def _default_last_good_roster_file(self):
        db_url = getattr(self.parent, "db_url", "")
        db_path = db_url[len("sqlite:///") :].split("?", 1)[0] if db_url.startswith("sqlite:///") else ""
        if db_path and db_path != ":memory:":
            return os.path.join(os.path.dirname(os.path.abspath(db_path)), LAST_GOOD_NAME)
        return os.path.abspath(LAST_GOOD_NAME)

    roster_poll_interval = Float(
        2.0,
        help="""Seconds between checks of the roster file for changes.

        A changed roster is applied within this interval plus the time the
        sync takes (well under a second for a thousand people).
        """,
    ).tag(config=True)

    @validate("roster_poll_interval")
    def _validate_poll_interval(self, proposal):
        if proposal.value <= 0:
            raise ValueError("roster_poll_interval must be positive")
        return proposal.value

    stop_removed_servers = Bool(
        True,
        help="""Stop the servers of people removed from (or blocked in) the roster.

        Their groups, roles, admin flag and API tokens are revoked and their
        browser sessions ended in any case.
        """,
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.roster_path:
            raise ValueError(f"{self.__class__.__name__}.roster_path must be set")
        self.last_good = LastGoodRoster(self.last_good_roster_file)
        self._roster_stat = self._stat_roster()
        self.roster, self.roster_error = self._first_roster()
        self._watch_task = None
        self._sync_lock = asyncio.Lock()
        self.last_sync = None
        self._start_roles = None
        self.log.info("Loaded roster %s", self.roster.summary().replace("\n", "; "))

    def _first_roster(self):
        """The roster file's roster, else the last one applied; else stop the hub."""
        try:
            return load_roster(self.roster_path), None
        except RosterError as e:
            error = e
        kept = self.last_good.load()
        if kept is None:
            if isinstance(self.parent, JupyterHub):
                # one line a sysadmin can act on, not a traceback
                raise SystemExit(f"classroomhub: {error.first_problem()}") from None
            raise error
        roster, saved = kept
        self.log.error(
            "Roster %s cannot be used; running on the last good roster (%s people, applied %s, kept in %s) "
            "until it is fixed:\n%s",
            self.roster_path,
            len(roster),
            saved,
            self.last_good.path,
            error,
        )
        return roster, str(error)

    @property
    def hub_app(self):
        """The running JupyterHub application (our traitlets parent)."""
        return self.parent

    async def load_managed_roles(self):
        """The roster's roles with their exact members, for the hub's start.

        JupyterHub calls this twice while it starts, before it serves
        anything; the first call applies the roster to the database (a
        roster edited while the hub was down is in force from the first
        request) and starts watching the file.
        """
        if self._start_roles is None:
            self._check_default_roles_free()
            await self.sync_roster(stop_servers=False)
            self._start_roles = managed_role_specs(self.hub_app.db, self)
            self.start_roster_watch()
        return copy.deepcopy(self._start_roles)

    def _check_default_roles_free(self):
        defined = sorted(
            {r.get("name") for r in getattr(self.hub_app, "load_roles", [])} & {"user", "admin"}
        )
        if defined:
            raise SystemExit(
                f"classroomhub: c.JupyterHub.load_roles defines {', '.join(defined)}, whose members the "
                f"roster decides: remove it; give everyone scopes with {self.__class__.__name__}.everyone_scopes "
                "and tiers theirs with tier_scopes"
            )

    def _stat_roster(self):
        try:
            st = os.stat(self.roster_path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def reload_roster(self, force=False):
        """Re-read the roster if the file changed; True if a new one is in force.

        A broken file leaves the last good roster in force and is reported in
        the log and in `roster_error`.
        """
        stat = self._stat_roster()
        if stat == self._roster_stat and not force:
            return False
        self._roster_stat = stat
        try:
            roster = load_roster(self.roster_path)
        except RosterError as e:
            self.roster_error = str(e)
            self.log.error(
                "Roster %s is invalid; keeping the last good roster (%s people):\n%s",
                self.roster_path,
                len(self.roster),
                e,
            )
            return False
        self.roster_error = None
        if roster.digest == self.roster.digest:
            return False
        self.roster = roster
        self.log.info("Roster changed: %s", roster.summary().replace("\n", "; "))
        return True

    async def sync_roster(self, stop_servers=True):
        """Apply the roster in force to the hub's database now, and keep it
        as the last good one."""
        async with self._sync_lock:
            report = await apply_roster(
                self.hub_app, self, stop_servers=stop_servers and self.stop_removed_servers
            )
            self.last_sync = report
            self.log.info("Roster sync: %s", report)
            self.last_good.save(self.roster)
            return report

    def _hub_ready(self):
        """True once the hub has started: its servers are loaded and routed."""
        app = self.hub_app
        started = getattr(app, "_start_future", None)  # JupyterHub resolves it at the end of start()
        if started is not None:
            return started.done()
        return getattr(app, "tornado_application", None) is not None and getattr(app, "proxy", None)

    def start_roster_watch(self):
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.ensure_future(self._watch_roster())
        return self._watch_task

    async def _watch_roster(self):
        # the roster applied while the hub started needs no sync, only the
        # servers of people it removed (the hub could not stop them then)
        synced_digest = self.roster.digest if self._start_roles is not None else None
        stop_unadmitted = self.stop_removed_servers
        while not self._hub_ready():
            await asyncio.sleep(0.1)
        while True:
            try:
                if stop_unadmitted:
                    report = self.last_sync
                    await stop_unadmitted_servers(self.hub_app, self, report)
                    stop_unadmitted = False
                self.reload_roster()
                report = self.last_sync
                if self.roster.digest != synced_digest or (report and report.pending):
                    await self.sync_roster()
                    synced_digest = self.roster.digest
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("Roster sync failed; will retry")
            await asyncio.sleep(self.roster_poll_interval)

    def stop_roster_watch(self):
        if self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None
