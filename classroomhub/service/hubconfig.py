"""One call in ``jupyterhub_config.py`` adds the classroom service to a hub.

    from classroomhub.service.hubconfig import add_classroom_service
    add_classroom_service(c, data_dir="/srv/classroomhub")

It registers the managed service, gives it the read-only scopes it needs to
read courses from the hub's groups, lets everyone on the roster reach it
(the roster authenticators' ``everyone_scopes``), and tells ClassroomSpawner
where to sync late joiners from.
"""

from __future__ import annotations

import sys

#: what the service asks of the hub: people's groups and course groups' members
SERVICE_SCOPES = ["list:users", "read:users:groups", "list:groups", "read:groups"]
SERVICE_NAME = "classroom"


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
        }
    )
    c.JupyterHub.services = services
    roles = list(c.JupyterHub.get("load_roles", []))
    roles.append({"name": "classroomhub-service", "services": [SERVICE_NAME], "scopes": SERVICE_SCOPES})
    c.JupyterHub.load_roles = roles
    # everyone on the roster may open the service's pages; what they may do
    # there comes from the roster too
    everyone = list(c.RosterAuthenticatorMixin.get("everyone_scopes", []))
    c.RosterAuthenticatorMixin.everyone_scopes = [*everyone, f"access:services!service={SERVICE_NAME}"]
    c.ClassroomSpawner.classroom_service_url = f"{url}{base_url.rstrip('/')}/services/{SERVICE_NAME}/"
