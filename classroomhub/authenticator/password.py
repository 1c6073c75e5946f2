"""The roster authenticator over one shared password."""

from __future__ import annotations

import os

from jupyterhub.authenticators.shared import SharedPasswordAuthenticator
from traitlets import default

from .mixin import RosterAuthenticatorMixin


class ClassroomPasswordAuthenticator(RosterAuthenticatorMixin, SharedPasswordAuthenticator):
    """Roster authenticator over one shared password.

    For demos and closed lab networks: anyone who knows the password can log
    in as any roster person, so use GitHub login for a real class.
    """

    @default("user_password")
    def _default_user_password(self):
        return os.environ.get("CLASSROOMHUB_PASSWORD") or None
