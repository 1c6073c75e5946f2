"""The systemd unit that runs a classroomhub hub, and the environment file of its secrets."""

from __future__ import annotations

import os
import sys

from .config import proxy_command

UNIT = """\
# classroomhub: JupyterHub for a class, written by `classroomhub systemd-unit`.
# Install: this file as /etc/systemd/system/{name}.service, then
#   systemctl daemon-reload && systemctl enable --now {name}
[Unit]
Description=classroomhub (JupyterHub for a class)
After=network-online.target
Wants=network-online.target
# a configuration error fails every start: give up after 5 in 2 minutes
StartLimitIntervalSec=120
StartLimitBurst=5

[Service]
# root: it starts each person's server as their own system user, creates
# accounts and cgroups; docs/operations.md says what runs as root and why.
User=root
WorkingDirectory={state_dir}
# GitHub's OAuth secrets and the settings of the example config (mode 0600).
EnvironmentFile={env_file}
Environment=CLASSROOMHUB_STATE_DIR={state_dir}
Environment=CLASSROOMHUB_PROXY={proxy}
# absolute paths: systemd's PATH does not include the hub's environment
ExecStart={jupyterhub} -f {config}
Restart=on-failure
RestartSec=5s
# the servers' cgroups live below the hub's own (cgroup v2 delegation)
Delegate=yes
# a restart or upgrade of the hub stops the hub and the proxy only: people's
# servers keep running (the config's cleanup_servers = False) and the hub finds
# them again when it comes back
KillMode=process
TimeoutStopSec=30s

[Install]
WantedBy=multi-user.target
"""

ENVIRONMENT = """\
# Environment of the {name} unit: secrets, so mode 0600, owner root.
# Register a GitHub OAuth app (https://github.com/settings/developers) with the
# callback URL below, and put its id and secret here.
GITHUB_CLIENT_ID=
GITHUB_CLIENT_SECRET=
OAUTH_CALLBACK_URL=https://hub.example.edu/hub/oauth_callback
# Behind a TLS reverse proxy (docs/operations.md); or https://0.0.0.0:443 with
# CLASSROOMHUB_SSL_CERT and CLASSROOMHUB_SSL_KEY.
CLASSROOMHUB_BIND_URL=http://127.0.0.1:8000
CLASSROOMHUB_ROSTER=/etc/classroomhub/roster.yaml
CLASSROOMHUB_SERVICE_DIR=/srv/classroomhub
"""


def hub_command():
    """The absolute path of the ``jupyterhub`` of this environment."""
    path = os.path.join(os.path.dirname(sys.executable), "jupyterhub")
    if not os.access(path, os.X_OK):
        raise SystemExit(f"classroomhub: {path} not found: install jupyterhub into {sys.prefix}")
    return path


def render_unit(config, state_dir, env_file, name="classroomhub"):
    """The unit's text; every path in it absolute."""
    paths = {"config": config, "state_dir": state_dir, "env_file": env_file}
    for what, path in paths.items():
        if not os.path.isabs(path):
            raise SystemExit(f"classroomhub: --{what.replace('_', '-')} must be an absolute path, not {path!r}")
    return UNIT.format(name=name, jupyterhub=hub_command(), proxy=proxy_command(), **paths)


def render_environment(name="classroomhub"):
    return ENVIRONMENT.format(name=name)
