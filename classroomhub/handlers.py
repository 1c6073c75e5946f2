"""The hub API endpoints the roster authenticators add (``get_handlers``).

``/hub/api/classroom/roster``: ``GET`` reports the roster in force and the
last sync; ``POST`` re-reads the file and applies it at once (what
``classroomhub roster sync`` calls). Both need ``admin:users``, which only
the root tier holds by default: the roster is the hub owner's.

``/hub/api/classroom/usage``: what each running server uses, from every
spawner that reports usage (``usage_report()``: ClassroomSpawner,
ClassroomSlurmSpawner); what ``classroomhub usage`` shows.
"""

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope
from tornado import web


class RosterAPIHandler(APIHandler):
    def _status(self):
        auth = self.authenticator
        roster = auth.roster
        last = auth.last_sync
        return {
            "path": roster.path,
            "digest": roster.digest,
            "people": len(roster),
            "courses": sorted(roster.courses),
            "error": auth.roster_error,
            "warnings": [str(w) for w in roster.warnings],
            "last_sync": last.to_dict() if last else None,
        }

    @needs_scope("admin:users")
    async def get(self):
        self.write(self._status())

    @needs_scope("admin:users")
    async def post(self):
        auth = self.authenticator
        auth.reload_roster(force=True)
        await auth.sync_roster()
        status = self._status()
        # a broken file is the client's problem to fix: say so with a 4xx
        self.set_status(422 if auth.roster_error else 200)
        self.write(status)


class UsageAPIHandler(APIHandler):
    """``GET /hub/api/classroom/usage``: what each running server uses.

    Lists the servers the caller may read (``read:servers``, as filtered by
    their roles: an instructor sees their course's students, root sees all).
    """

    async def get(self):
        may_read = self.get_scope_filter("read:servers")
        if "read:servers" not in self.parsed_scopes:
            raise web.HTTPError(403, "reading usage needs the read:servers scope")
        servers = []
        for user in list(self.users.values()):
            for spawner in list(user.spawners.values()):
                # the one interface: a spawner that knows its usage has usage_report()
                if not hasattr(spawner, "usage_report") or not spawner.active:
                    continue
                if not may_read(spawner.orm_spawner, kind="server"):
                    continue
                servers.append(spawner.usage_report())
        servers.sort(key=lambda s: (s["user"], s["server"]))
        self.write({"servers": servers})
