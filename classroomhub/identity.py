"""GitHub identities pinned to hub accounts, and the private JSON files that keep state.

GitHub logins can be renamed and then registered again by someone else; the
numeric account id cannot. The first successful login of a roster user pins
their id to the hub account; later logins must present the same id.

The pins are a small JSON file (0600, ``ClassroomGitHubAuthenticator.identity_file``,
by default in the hub's working directory), rewritten atomically by
:func:`write_private_json`, so they survive restarts and an operator can
read them or, with the hub stopped, edit them.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading


class IdentityStore:
    """The pins of the file *path*: per lower-case login, its ``github_id``
    and the ``team_tier`` its last login found."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        self._lock = threading.Lock()
        self._by_login = {}
        self._load()

    def _load(self):
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            data = {}
        # {"pins": {login: {"github_id": int, ...}}}
        self._by_login = {k.lower(): dict(v) for k, v in data.get("pins", {}).items()}

    def _save(self):
        write_private_json(self.path, {"pins": self._by_login})

    def github_id(self, login):
        entry = self._by_login.get(login.lower())
        return entry.get("github_id") if entry else None

    def login_for(self, github_id):
        if github_id is None:
            return None
        for login, entry in self._by_login.items():
            if entry.get("github_id") == github_id:
                return login
        return None

    def get(self, login, key, default=None):
        return self._by_login.get(login.lower(), {}).get(key, default)

    def update(self, login, **fields):
        """Record *fields* for *login*; writes only if something changed."""
        login = login.lower()
        with self._lock:
            entry = self._by_login.setdefault(login, {})
            if all(entry.get(k) == v for k, v in fields.items()):
                return
            entry.update(fields)
            self._save()

    def items(self):
        return dict(self._by_login).items()


def write_private_json(path, data):
    """Replace the file *path* with *data* as JSON, mode 0600, atomically
    (a crash leaves the old file or the new one, never half of one)."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + "-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
