"""The roster authenticator mixin: what the roster grants at a login.

:class:`RosterAuthenticatorMixin` turns any JupyterHub authenticator into one
whose allow list, tiers and course memberships come from a roster file
(kept in force by :class:`~classroomhub.authenticator.watch.RosterWatchMixin`),
with the scopes each tier and course role gets.
"""

from __future__ import annotations

from tornado import web
from traitlets import Dict, List, Unicode, default, validate

from ..access import DEFAULT_COURSE_SCOPES, AccessPolicy
from ..handlers import RosterAPIHandler, UsageAPIHandler
from ..roster import COURSE_ROLES
from ..tiers import DEFAULT_TIER_SCOPES, TIERS, unknown_tier
from .watch import RosterWatchMixin


_REMEMBERED = object()


class RosterAuthenticatorMixin(RosterWatchMixin):
    """Admit exactly the people of a roster file, with their tier and courses.

    Mixed in before an Authenticator class. The roster is re-read when the
    file changes and applied to the running hub at once; a broken file is
    reported and the last good roster stays in force.
    """

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
        for tier in proposal.value:
            if tier not in TIERS:
                raise ValueError(f"tier_scopes: {unknown_tier(tier)}")
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
        self.policy = AccessPolicy(
            self.tier_scopes,
            self.course_scopes,
            self.everyone_scopes,
            self.service_tier_scopes,
            self.service_course_scopes,
        )

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

    def get_handlers(self, app):
        return [
            *super().get_handlers(app),
            (r"/api/classroom/roster", RosterAPIHandler),
            (r"/api/classroom/usage", UsageAPIHandler),
        ]
