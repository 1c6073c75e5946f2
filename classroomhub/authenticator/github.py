"""GitHub OAuth whose allow list is the roster, with accounts pinned by GitHub's numeric id.

GitHub logins can be renamed and then registered by someone else; the
numeric id cannot. The first login of a roster person pins their id to the
hub account (:class:`~classroomhub.identity.IdentityStore`, or the roster's
``github_id``); a later login under that name from another GitHub account is
refused, and a renamed account keeps its hub account.
"""

from __future__ import annotations

from oauthenticator.github import GitHubOAuthenticator
from tornado import web
from traitlets import Dict, Unicode, default, validate

from ..identity import IdentityStore
from .mixin import RosterAuthenticatorMixin
from .teams import normalize_team_tiers, team_tier


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
        return normalize_team_tiers(proposal.value)

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
            token = auth_model["auth_state"]["token_response"]
            auth_model["team_tier"] = await team_tier(self, github_user["login"], token)
        return auth_model

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
