"""Checks the example config makes at load time, so that a hub fails safe.

Each problem stops the hub with one line (:class:`SystemExit` with a
message: traitlets does not catch it, Python prints it and exits 1) instead
of a traceback, or worse, a hub that starts insecurely: a state folder other
local users can read, plain HTTP where HTTPS was asked for, a server command
that only the login shell's PATH finds.
"""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources

from ..databases import private_dir as make_private_dir
from ..databases import private_sqlite  # noqa: F401  (configurations import it from here)

EXAMPLE_CONFIG = "jupyterhub_config.example.py"


def example_config_text():
    """The example config shipped in the package (``classroomhub generate-config`` writes it)."""
    return resources.files("classroomhub.data").joinpath(EXAMPLE_CONFIG).read_text()


def private_dir(path):
    """Make *path* (and missing parents) with mode 0700; an existing folder
    that others can read or enter is tightened to 0700 too. Returns *path*."""
    try:
        make_private_dir(path)
    except OSError as e:
        raise SystemExit(f"classroomhub: state folder {path}: {e.strerror}") from None
    return path



def tls_files(bind_url, cert, key):
    """(cert, key) to serve *bind_url* with, or (None, None) for ``http://``.

    An ``https://`` bind URL whose certificate or key is missing or unreadable
    stops the hub: JupyterHub would otherwise serve plain HTTP on it."""
    if not bind_url.startswith("https://"):
        return None, None
    for what, path in (("certificate", cert), ("key", key)):
        if not path or not os.access(path, os.R_OK):
            raise SystemExit(
                f"classroomhub: bind URL {bind_url} is https but its TLS {what} {path or '(not set)'} is not readable: "
                "set CLASSROOMHUB_SSL_CERT and CLASSROOMHUB_SSL_KEY, or bind http:// behind a TLS reverse proxy"
            )
    return cert, key


def own_command(name, env=None):
    """The absolute path of *name* installed beside this Python (its
    environment's bin/), or $*env*: a hub under systemd has a minimal PATH."""
    path = os.environ.get(env) if env else None
    path = path or os.path.join(os.path.dirname(sys.executable), name)
    if not os.access(path, os.X_OK):
        raise SystemExit(
            f"classroomhub: {path} not found: install jupyterhub, jupyter_server and jupyterlab into the "
            f"hub's environment ({sys.prefix})" + (f", or set {env}" if env else "")
        )
    return path


def proxy_command():
    """configurable-http-proxy: $CLASSROOMHUB_PROXY, else the PATH's (an absolute path either way)."""
    path = os.environ.get("CLASSROOMHUB_PROXY") or shutil.which("configurable-http-proxy")
    if not path or not os.access(path, os.X_OK):
        raise SystemExit(
            "classroomhub: configurable-http-proxy not found: `npm install configurable-http-proxy` "
            "and set CLASSROOMHUB_PROXY to its absolute path (the systemd unit's EnvironmentFile can)"
        )
    return os.path.abspath(path)
