"""Roster-driven authenticators.

:class:`RosterAuthenticatorMixin` turns any JupyterHub authenticator into one
whose allow list, tiers and course memberships come from a roster file; the
two concrete classes pair it with GitHub OAuth (production) and a shared
password (demos, air-gapped labs). Configs and entry points import all three
from here.

One job per module:

* :mod:`.mixin`: the mixin's scope options and what the roster grants at a login;
* :mod:`.watch`: the roster in force: read at start (else the last good copy),
  re-read when its file changes, applied to the hub's database;
* :mod:`.github`: GitHub login, with accounts pinned by GitHub's numeric id;
* :mod:`.teams`: GitHub teams and organizations as tiers;
* :mod:`.password`: one shared password.
"""

from .github import ClassroomGitHubAuthenticator
from .mixin import RosterAuthenticatorMixin
from .password import ClassroomPasswordAuthenticator

__all__ = ["ClassroomGitHubAuthenticator", "ClassroomPasswordAuthenticator", "RosterAuthenticatorMixin"]
