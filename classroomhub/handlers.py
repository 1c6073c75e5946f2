"""Hub API endpoint for the roster: ``/hub/api/classroom/roster``.

``GET`` reports the roster in force and the last sync; ``POST`` re-reads the
file and applies it at once (what ``classroomhub roster sync`` calls).
Both need ``admin:users``, which only the root tier holds by default: the
roster is the hub owner's.
"""

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import needs_scope


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
