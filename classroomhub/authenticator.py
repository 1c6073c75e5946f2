"""Roster-driven authenticators.

:class:`RosterAuthenticatorMixin` turns any JupyterHub authenticator into one
whose allow list, tiers and course memberships come from a roster file; the
two concrete classes pair it with GitHub OAuth (production) and a shared
password (demos, air-gapped labs).
"""

from __future__ import annotations

import asyncio
import copy
import os

from jupyterhub.auth import Authenticator
from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from oauthenticator.github import GitHubOAuthenticator
from tornado import web
from traitlets import Bool, Dict, Float, List, Unicode, default, validate

from .access import DEFAULT_COURSE_SCOPES, AccessPolicy
from .handlers import RosterAPIHandler, UsageAPIHandler
from .identity import IdentityStore
from .lastgood import LastGoodRoster
from .roster import COURSE_ROLES, RosterError, load_roster
from .sync import apply_roster, managed_role_specs, stop_unadmitted_servers
from .tiers import DEFAULT_TIER_SCOPES, TIERS, higher_tier


_REMEMBERED = object()


class RosterAuthenticatorMixin(Authenticator):
    """Admit exactly the people of a roster file, with their tier and courses.

    Mixed in before an Authenticator class. The roster is re-read when the
    file changes and applied to the running hub at once; a broken file is
    reported and the last good roster stays in force.
    """

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
        name = "classroomhub-last-good-roster.json"
        db_url = getattr(self.parent, "db_url", "")
        db_path = db_url[len("sqlite:///") :].split("?", 1)[0] if db_url.startswith("sqlite:///") else ""
        if db_path and db_path != ":memory:":
            return os.path.join(os.path.dirname(os.path.abspath(db_path)), name)
        return os.path.abspath(name)

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

    tier_scopes = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        help="""Extra JupyterHub scopes per tier, replacing the defaults.

        Keys are tiers (root, admin, power, student). Each non-empty list
        becomes a role ``classroom-<tier>`` held by the people of that tier.
        root is always JupyterHub's built-in ``admin`` role on top. The
        default gives the admin tier the admin page, user and group read
        access, and start/stop/access of servers of the power and student
        tiers only.
        """,
    ).tag(config=True)

    @default("tier_scopes")
    def _default_tier_scopes(self):
        return {tier: list(scopes) for tier, scopes in DEFAULT_TIER_SCOPES.items()}

    @validate("tier_scopes")
    def _validate_tier_scopes(self, proposal):
        unknown = set(proposal.value) - set(TIERS)
        if unknown:
            raise ValueError(f"tier_scopes: unknown tiers {sorted(unknown)}; tiers are {TIERS}")
        return proposal.value

    everyone_scopes = List(
        Unicode(),
        help="""Scopes every person on the roster gets, whatever their tier:
        a role ``classroom-everyone``. For example
        ``access:services!service=classroom`` lets everyone use the classroom
        service's pages (``add_classroom_service`` adds it). JupyterHub's
        default ``user`` role cannot carry this: the authenticator manages
        roles, so it is reset to its defaults at each login.""",
    ).tag(config=True)

    course_scopes = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        help="""Scopes per course role (instructor, ta, student), as templates.

        ``{students}``, ``{tas}`` and ``{instructors}`` are replaced by the
        course's group names, so ``access:servers!group={students}`` lets
        the holder open the servers of that course's students and nobody
        else's. Each non-empty list becomes a role
        ``course-<id>-<course role>``. TAs get nothing by default: they see
        collected work through the classroom service, not live servers.
        """,
    ).tag(config=True)

    @default("course_scopes")
    def _default_course_scopes(self):
        return {role: list(scopes) for role, scopes in DEFAULT_COURSE_SCOPES.items()}

    @validate("course_scopes")
    def _validate_course_scopes(self, proposal):
        unknown = set(proposal.value) - set(COURSE_ROLES)
        if unknown:
            raise ValueError(
                f"course_scopes: unknown course roles {sorted(unknown)}; roles are {COURSE_ROLES}"
            )
        return proposal.value

    service_tier_scopes = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        help="""Scopes per tier that services add on top of ``tier_scopes``
        (``add_classroom_service`` adds the classroom service's), so that
        configuring ``tier_scopes`` does not take them away.""",
    ).tag(config=True)

    service_course_scopes = Dict(
        key_trait=Unicode(),
        value_trait=List(Unicode()),
        help="""Scope templates per course role that services add on top of
        ``course_scopes`` (``add_classroom_service`` adds the classroom
        service's, e.g. ``custom:classroom:grade!group={students}``), so
        that configuring ``course_scopes`` does not take them away.""",
    ).tag(config=True)

    stop_removed_servers = Bool(
        True,
        help="""Stop the servers of people removed from (or blocked in) the roster.

        Their groups, roles, admin flag and API tokens are revoked and their
        browser sessions ended in any case.
        """,
    ).tag(config=True)

    # The roster decides groups and roles, so login must reset them rather
    # than only add: these two are what makes demotion revoke. The third
    # makes a start reset every role to the roster's members (JupyterHub
    # 6.1 cannot start a second time on the same database without it).
    @default("manage_groups")
    def _default_manage_groups(self):
        return True

    @default("manage_roles")
    def _default_manage_roles(self):
        return True

    @default("reset_managed_roles_on_startup")
    def _default_reset_managed_roles_on_startup(self):
        return True

    @validate("manage_groups", "manage_roles", "reset_managed_roles_on_startup")
    def _validate_managed(self, proposal):
        if not proposal.value:
            raise ValueError(
                f"{self.__class__.__name__}.{proposal.trait.name} must stay True: "
                "the roster owns groups and roles"
            )
        return True

    @validate("admin_users")
    def _validate_admin_users(self, proposal):
        # JupyterHub makes admin_users admins at every start: the roster's
        # root tier is the only way to admin
        if proposal.value:
            self.log.warning("%s ignores admin_users: the roster's root tier decides", self.__class__.__name__)
        return set()

    @validate("allow_all")
    def _validate_allow_all(self, proposal):
        # JupyterHub skips check_allowed when allow_all is True: never let
        # config (or a test harness) switch the roster off that way.
        if proposal.value:
            self.log.warning("%s ignores allow_all: the roster decides", self.__class__.__name__)
        return False

    @validate("blocked_users")
    def _validate_blocked_users(self, proposal):
        # JupyterHub compares blocked_users to normalized (lower-case) names
        return {name.lower() for name in proposal.value}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.roster_path:
            raise ValueError(f"{self.__class__.__name__}.roster_path must be set")
        self.policy = AccessPolicy(
            self.tier_scopes,
            self.course_scopes,
            self.everyone_scopes,
            self.service_tier_scopes,
            self.service_course_scopes,
        )
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
            if self._in_hub():
                # one line a sysadmin can act on, not a traceback
                raise SystemExit(f"classroomhub: {_first_problem(error)}") from None
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

    def _in_hub(self):
        from jupyterhub.app import JupyterHub

        return isinstance(self.parent, JupyterHub)

    @property
    def hub_app(self):
        """The running JupyterHub application (our traitlets parent)."""
        return self.parent

    # -- deciding -----------------------------------------------------------

    def extra_tier(self, login):
        """A tier granted outside the roster (GitHub teams); None here."""
        return None

    def grant_for(self, login, extra_tier=_REMEMBERED):
        """What the roster grants *login* (None: not admitted).

        *extra_tier* is a tier from outside the roster found at this login;
        by default the one remembered from the last login is used.
        """
        login = login.lower()
        if login in self.blocked_users:
            return None
        if extra_tier is _REMEMBERED:
            extra_tier = self.extra_tier(login)
        return self.policy.grant(self.roster, login, extra_tier)

    def _grant_for_model(self, auth_model):
        # a login that just checked GitHub teams must use that answer, even
        # "no team", rather than what was remembered from before
        if auth_model and "team_tier" in auth_model:
            return self.grant_for(auth_model["name"], auth_model["team_tier"])
        return self.grant_for(auth_model["name"])

    def _with_grant(self, auth_model):
        grant = self._grant_for_model(auth_model)
        if grant is not None:
            auth_model.update(grant.auth_fields())
        else:
            # keep the model valid for manage_groups; check_allowed refuses
            auth_model.update(admin=False, groups=[], roles=[])
        return auth_model

    async def authenticate(self, handler, data=None):
        model = await super().authenticate(handler, data)
        if model is None:
            return None
        if isinstance(model, str):
            model = {"name": model}
        model["name"] = self.normalize_username(model["name"])
        return self._with_grant(model)

    def check_blocked_users(self, username, authentication=None):
        return username.lower() not in self.blocked_users and username.lower() not in self.roster.blocked

    async def check_allowed(self, username, authentication=None):
        if self._grant_for_model({**(authentication or {}), "name": username}) is not None:
            return True
        raise web.HTTPError(
            403,
            f"{username} is not on this hub's roster. "
            "Ask your instructor or the hub's administrator to add your login.",
        )

    async def refresh_user(self, user, handler=None):
        result = await super().refresh_user(user, handler)
        if result is False:
            return False
        grant = self.grant_for(user.name)
        if grant is None:
            return False
        model = result if isinstance(result, dict) else {}
        model["name"] = user.name
        model.update(grant.auth_fields())
        return model

    def check_allow_config(self):
        super().check_allow_config()
        # oauthenticator's own allow settings (orgs, groups) would be silently
        # ignored too: the roster, plus team_tiers, is the one source of access.
        ignored = [
            name
            for name in (
                "allowed_users",
                "admin_users",
                "allow_all",
                "allow_existing_users",
                "allowed_organizations",
                "allowed_groups",
                "admin_groups",
            )
            if getattr(self, name, None)
        ]
        if ignored:
            self.log.warning(
                "%s: %s configured but the roster %s decides who gets in and who is admin",
                self.__class__.__name__,
                ", ".join(ignored),
                self.roster_path,
            )

    @default("any_allow_config")
    def _default_any_allow_config(self):
        return True

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

    def get_handlers(self, app):
        return [
            *super().get_handlers(app),
            (r"/api/classroom/roster", RosterAPIHandler),
            (r"/api/classroom/usage", UsageAPIHandler),
        ]

    # -- reloading ----------------------------------------------------------

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


class ClassroomPasswordAuthenticator(RosterAuthenticatorMixin, SharedPasswordAuthenticator):
    """Roster authenticator over one shared password.

    For demos and closed lab networks: anyone who knows the password can log
    in as any roster person, so use GitHub login for a real class.
    """

    @default("user_password")
    def _default_user_password(self):
        return os.environ.get("CLASSROOMHUB_PASSWORD") or None


class ClassroomGitHubAuthenticator(RosterAuthenticatorMixin, GitHubOAuthenticator):
    """GitHub OAuth whose allow list is the roster, with accounts pinned by
    GitHub's numeric id."""

    identity_file = Unicode(
        "classroomhub-identities.json",
        help="""File pinning each hub account to a GitHub account id.

        Written on first login (mode 0600). A later login under the same name
        from another GitHub account is refused. Relative paths are relative
        to the hub's working directory, like its database and cookie secret.
        """,
    ).tag(config=True)

    team_tiers = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        help="""Map GitHub ``org:team`` (or a whole ``org``) to a tier.

        Members are admitted with that tier even if the roster does not list
        them; if it does, the higher tier applies. Needs the ``read:org``
        OAuth scope, which is requested automatically when this is set.
        Checked at each login and remembered for roster syncs.
        """,
    ).tag(config=True)

    @validate("team_tiers")
    def _validate_team_tiers(self, proposal):
        mapping = {}
        for team, tier in proposal.value.items():
            if tier.lower() not in TIERS:
                raise ValueError(f"team_tiers[{team!r}]: unknown tier {tier!r}; tiers are {TIERS}")
            mapping[team.lower()] = tier.lower()
        return mapping

    @default("scope")
    def _default_scope(self):
        return ["read:org"] if self.team_tiers else []

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.identities = IdentityStore(self.identity_file)

    def extra_tier(self, login):
        return self.identities.get(login, "team_tier") if self.team_tiers else None

    def resolve_login(self, login, github_id):
        """The hub account a GitHub account logs in as; 403 if it is taken.

        A GitHub account renamed after its first login keeps its hub account
        (found by id) as long as the roster still lists that account.
        """
        roster = self.roster
        pinned = roster.login_for_github_id(github_id) or self.identities.login_for(github_id)
        if pinned and pinned != login and pinned in roster:
            self.log.warning(
                "GitHub account %s (id %s) is pinned to hub account %s: logging in as %s",
                login,
                github_id,
                pinned,
                pinned,
            )
            return pinned
        person = roster.people.get(login)
        expected = person.github_id if person and person.github_id else self.identities.github_id(login)
        if expected is not None and expected != github_id:
            self.log.warning(
                "Refusing GitHub account %s (id %s): hub account %s is pinned to GitHub id %s",
                login,
                github_id,
                login,
                expected,
            )
            raise web.HTTPError(
                403,
                f"The GitHub account {login} is not the one this hub knows as {login}. "
                "If the login was renamed or re-registered, ask the hub's administrator.",
            )
        return login

    async def update_auth_model(self, auth_model):
        auth_model = await super().update_auth_model(auth_model)
        github_user = auth_model["auth_state"][self.user_auth_state_key]
        github_id = int(github_user["id"])
        login = self.normalize_username(auth_model["name"])
        auth_model["name"] = self.resolve_login(login, github_id)
        auth_model["github_id"] = github_id
        if self.team_tiers:
            auth_model["team_tier"] = await self._team_tier(github_user["login"], auth_model)
        return auth_model

    async def _team_tier(self, github_login, auth_model):
        token = auth_model["auth_state"]["token_response"]
        headers = self.build_userdata_request_headers(token["access_token"], token["token_type"])
        best = None
        wanted_teams = {k: v for k, v in self.team_tiers.items() if ":" in k}
        if wanted_teams:
            teams = await self._paginated_fetch(
                f"{self.github_api}/user/teams?per_page=100",
                token["access_token"],
                token["token_type"],
            )
            for team in teams:
                key = f"{team['organization']['login']}:{team['slug']}".lower()
                best = higher_tier(best, wanted_teams.get(key))
        for org, tier in self.team_tiers.items():
            if ":" in org:
                continue
            resp = await self.httpfetch(
                f"{self.github_api}/orgs/{org}/members/{github_login}",
                parse_json=False,
                raise_error=False,
                method="GET",
                headers=headers,
                validate_cert=self.validate_server_cert,
            )
            if resp.code == 204:
                best = higher_tier(best, tier)
        return best

    async def run_post_auth_hook(self, handler, auth_model):
        # Only reached for admitted people: pin their GitHub account now.
        login = auth_model["name"]
        github_id = auth_model.get("github_id")
        if github_id is not None:
            previous = self.identities.login_for(github_id)
            if previous and previous != login:
                self.identities.update(previous, github_id=None)
            self.identities.update(login, github_id=github_id, team_tier=auth_model.get("team_tier"))
        return await super().run_post_auth_hook(handler, auth_model)


def _first_problem(error):
    """*error*'s first fatal problem (``file:line: problem``), on one line."""
    problems = [p for p in error.problems if p.fatal] or error.problems
    more = len(problems) - 1
    hint = f" (and {more} more: `classroomhub roster check {problems[0].path}` lists them)" if more else ""
    return f"{problems[0]}{hint}"
