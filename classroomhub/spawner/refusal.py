"""A start refused by policy, with the reason shown to the user."""

from __future__ import annotations

from tornado import web


class SpawnRefused(web.HTTPError):
    """A start refused by policy; JupyterHub shows the message to the user."""

    def __init__(self, status, message):
        super().__init__(status, message)
        self.jupyterhub_message = message
