"""One call in ``jupyterhub_config.py`` adds the classroom service to a hub.

    from classroomhub.service.hubconfig import add_classroom_service
    add_classroom_service(c, data_dir="/srv/classroomhub")

It registers the managed service, gives it the read-only scopes it needs to
read courses from the hub's groups, declares its custom scopes
(``scopes.py``) and has the roster grant them per course role and tier, lets
everyone on the roster reach it (the roster authenticators'
``everyone_scopes``), and tells ClassroomSpawner where to sync late joiners
from.
"""

from __future__ import annotations

import os
import sys

from .web.scopes import COURSE_SCOPES, CUSTOM_SCOPES, SERVICE_NAME, TIER_SCOPES, access_scope

#: what the service asks of the hub: people's groups and course groups' members
SERVICE_SCOPES = ["list:users", "read:users:groups", "list:groups", "read:groups"]
#: the hub's environment variables the service's environment builds need to
#: reach the package index (the hub gives a managed service only PATH, LANG, ...):
#: proxies, certificate authorities, and the installers' own settings (UV_*, PIP_*)
INSTALLER_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR")
INSTALLER_PREFIXES = ("UV_", "PIP_")


def installer_environment(environ=os.environ):
    """The variables of *environ* that environment builds need (see INSTALLER_VARIABLES)."""
    return {
        key: value
        for key, value in environ.items()
        if key.upper() in INSTALLER_VARIABLES or key.startswith(INSTALLER_PREFIXES)
    }


def _add_per_key(section, trait, additions):
    """Append *additions* ({key: [scope, ...]}) to the dict-of-lists *trait* of *section*."""
    current = {key: list(scopes) for key, scopes in section.get(trait, {}).items()}
    for key, scopes in additions.items():
        current[key] = [*current.get(key, []), *(s for s in scopes if s not in current.get(key, []))]
    setattr(section, trait, current)


def add_classroom_service(c, data_dir="/srv/classroomhub", port=10101, args=(), base_url="/"):
    """Add the service to the traitlets config *c* of a hub.

    *data_dir* holds the service's database and release store; *port* is
    where it listens on 127.0.0.1; *args* are extra command-line options
    (e.g. ``["--db-url", "postgresql://…"]``); *base_url* is the hub's
    ``JupyterHub.base_url``.
    """
    url = f"http://127.0.0.1:{port}"
    services = list(c.JupyterHub.get("services", []))
    services.append(
        {
            "name": SERVICE_NAME,
            "url": url,
            # the hub's own interpreter: the service ships in the same environment
            "command": [sys.executable, "-m", "classroomhub.service", "--data-dir", data_dir, *args],
            "oauth_no_confirm": True,
            # the browser's login to the service's pages carries the staff
            # scopes the person holds (the hub keeps only those they have)
            "oauth_client_allowed_scopes": sorted(CUSTOM_SCOPES),
            "environment": installer_environment(),
        }
    )
    c.JupyterHub.services = services
    c.JupyterHub.custom_scopes = {**c.JupyterHub.get("custom_scopes", {}), **CUSTOM_SCOPES}
    roles = list(c.JupyterHub.get("load_roles", []))
    roles.append({"name": "classroomhub-service", "services": [SERVICE_NAME], "scopes": SERVICE_SCOPES})
    c.JupyterHub.load_roles = roles
    # everyone on the roster may open the service's pages; what they may do
    # there comes from the roster too
    everyone = list(c.RosterAuthenticatorMixin.get("everyone_scopes", []))
    c.RosterAuthenticatorMixin.everyone_scopes = [*everyone, access_scope()]
    # staff powers in the service, per course (filtered to the course's
    # students' group) and for the admin and root tiers
    _add_per_key(c.RosterAuthenticatorMixin, "service_course_scopes", COURSE_SCOPES)
    _add_per_key(c.RosterAuthenticatorMixin, "service_tier_scopes", TIER_SCOPES)
    c.ClassroomSpawner.classroom_service_url = f"{url}{base_url.rstrip('/')}/services/{SERVICE_NAME}/"
