# classroomhub: a complete JupyterHub configuration for one server.
#
# `classroomhub generate-config -o /etc/classroomhub/jupyterhub_config.py`
# writes this file (it ships inside the package), `classroomhub systemd-unit`
# a service that runs it (docs/operations.md). Adjust the few values below, or
# set the environment variables they read (the unit's EnvironmentFile; the
# test-suite runs this file unchanged that way).
#
# It fails safe: a problem that would make the hub insecure or unreachable
# (an https:// address without a readable certificate, a missing
# jupyterhub-singleuser or proxy) stops it with one line saying what to fix.
import os

from classroomhub.ops.config import own_command, private_dir, private_sqlite, proxy_command, tls_files

c = get_config()  # noqa: F821  (provided by JupyterHub when it loads this file)

# -- Where the hub's state lives ------------------------------------------------
# The database, cookie secret and GitHub identity pins are kept together; back
# this folder up (`classroomhub backup`). It is created, or tightened, to mode
# 0700 and the SQLite database to 0600: only the hub's user reads them.
# PostgreSQL works too: "postgresql://jupyterhub:...@localhost/jupyterhub".
state_dir = private_dir(os.environ.get("CLASSROOMHUB_STATE_DIR", "/srv/jupyterhub"))
c.JupyterHub.db_url = private_sqlite(
    os.environ.get("CLASSROOMHUB_DB_URL", "sqlite:///" + os.path.join(state_dir, "jupyterhub.sqlite"))
)
c.JupyterHub.cookie_secret_file = os.path.join(state_dir, "jupyterhub_cookie_secret")

# -- Network and TLS -------------------------------------------------------------
# Serve HTTPS directly with a certificate (e.g. from certbot): an https:// bind
# URL whose certificate or key is not readable stops the hub. Behind a
# TLS-terminating reverse proxy (nginx, Caddy: docs/operations.md), bind
# http://127.0.0.1:8000 instead.
c.JupyterHub.bind_url = os.environ.get("CLASSROOMHUB_BIND_URL", "https://0.0.0.0:443")
ssl_cert, ssl_key = tls_files(
    c.JupyterHub.bind_url,
    os.environ.get("CLASSROOMHUB_SSL_CERT", "/etc/letsencrypt/live/hub.example.edu/fullchain.pem"),
    os.environ.get("CLASSROOMHUB_SSL_KEY", "/etc/letsencrypt/live/hub.example.edu/privkey.pem"),
)
if ssl_cert:
    c.JupyterHub.ssl_cert = ssl_cert
    c.JupyterHub.ssl_key = ssl_key
# The hub's internal API and the proxy's API stay on the loopback interface.
c.JupyterHub.hub_ip = "127.0.0.1"
if "CLASSROOMHUB_HUB_PORT" in os.environ:
    c.JupyterHub.hub_port = int(os.environ["CLASSROOMHUB_HUB_PORT"])
if "CLASSROOMHUB_PROXY_API_URL" in os.environ:
    c.ConfigurableHTTPProxy.api_url = os.environ["CLASSROOMHUB_PROXY_API_URL"]
c.ConfigurableHTTPProxy.pid_file = os.path.join(state_dir, "proxy.pid")
# An absolute path: systemd's PATH does not include npm's folders.
c.ConfigurableHTTPProxy.command = [proxy_command()]

# -- Login: GitHub, allowed by the roster -------------------------------------------
# Register an OAuth app at https://github.com/settings/developers with the
# callback URL https://<your hub>/hub/oauth_callback, then export
# GITHUB_CLIENT_ID, GITHUB_CLIENT_SECRET and OAUTH_CALLBACK_URL (oauthenticator
# reads them itself). GITHUB_URL points at GitHub Enterprise if you use it.
c.JupyterHub.authenticator_class = "classroom-github"
c.ClassroomGitHubAuthenticator.roster_path = os.environ.get(
    "CLASSROOMHUB_ROSTER", os.path.join(state_dir, "roster.yaml")
)
c.ClassroomGitHubAuthenticator.identity_file = os.path.join(state_dir, "classroomhub-identities.json")
# Optional: admit whole GitHub teams with a tier (asks GitHub for read:org).
# c.ClassroomGitHubAuthenticator.team_tiers = {"my-university:teaching-staff": "admin"}
# Optional: let TAs open their course's students' servers too.
# c.ClassroomGitHubAuthenticator.course_scopes = {
#     "ta": ["access:servers!group={students}", "read:users!group={students}"],
# }

# -- Servers -------------------------------------------------------------------
# One Jupyter server per person, running as their own system user, with the
# memory and CPU limits of their tier (docs/spawner.md has the table). Limits
# are enforced by a cgroup (v2, else v1), else by a psutil watchdog; the hub
# logs which one at every server start.
c.JupyterHub.spawner_class = "classroom"
# jupyterhub-singleuser of the hub's own environment, by absolute path (a hub
# under systemd has a minimal PATH); $CLASSROOMHUB_SINGLEUSER names another.
# Its environment must be readable by every user (not under /root).
c.Spawner.cmd = [own_command("jupyterhub-singleuser", "CLASSROOMHUB_SINGLEUSER")]
c.Spawner.default_url = "/lab"
c.Spawner.http_timeout = 60
# Change the limits of a tier; only the keys you give change. Setting
# c.Spawner.mem_limit directly has no effect: the tier's value wins.
# c.ClassroomSpawner.tier_settings = {
#     "student": {"mem_limit": "2G", "cpu_limit": 1, "idle_timeout": 2 * 3600},
#     "power": {"max_age": 14 * 24 * 3600},
# }
# More for one person, whatever their tier:
# c.ClassroomSpawner.user_settings = {"carol": {"mem_limit": "16G", "cpu_limit": 4}}
# Refuse to start a server that no cgroup can limit (instead of running it
# under the watchdog or unlimited):
# c.ClassroomSpawner.require_enforcement = True
# Create missing system accounts at first start, with a private (0700) home
# and a ~/data link to a shared read-only folder:
# c.ClassroomSpawner.create_system_users = True
# c.ClassroomSpawner.shared_data_dir = "/srv/data"
# Stop a server when the hub stops? No: keep people's work running across hub
# restarts and upgrades.
c.JupyterHub.cleanup_servers = False

# -- The classroom service --------------------------------------------------------
# Course content release runs as a JupyterHub-managed service at
# /services/classroom/ (web pages, REST API, `classroomhub release`). This adds
# the service (listening on 127.0.0.1:10101), the read-only hub scopes it needs
# to read courses from the roster's groups, access to it for every user, and
# the late-joiner sync of ClassroomSpawner. Its database and the store of
# released files live in data_dir; see docs/service.md.
from classroomhub.service.hubconfig import add_classroom_service  # noqa: E402

add_classroom_service(
    c,
    data_dir=os.environ.get("CLASSROOMHUB_SERVICE_DIR", "/srv/classroomhub"),
    port=int(os.environ.get("CLASSROOMHUB_SERVICE_PORT", "10101")),
)
