"""The server in a job reports its port: batchspawner's API handler, safe.

Importing this module replaces batchspawner's handler of
``POST /hub/api/batchspawner`` in the hub's API handlers with
:class:`PortReportHandler`.
"""

from __future__ import annotations

import json

import batchspawner  # noqa: F401  (its import adds the handler replaced below)
from jupyterhub.apihandlers import APIHandler, default_handlers
from tornado import web

BATCHSPAWNER_ROUTE = r"/api/batchspawner"


class PortReportHandler(APIHandler):
    """``POST /hub/api/batchspawner``: the server in a job reports its port.

    It replaces batchspawner's own handler, which sets *any* attribute the
    request names on the spawner. The request carries the server's token,
    which its owner can read in the job's environment: with batchspawner's
    handler a student could set ``exec_prefix`` or ``batch_query_cmd``, shell
    commands the hub then runs as root. Only ``{"port": N}`` is accepted here.
    """

    @web.authenticated
    def post(self):
        token = self.get_auth_token()
        spawner = next((s for s in self.current_user.spawners.values() if s.api_token == token), None)
        if spawner is None:
            raise web.HTTPError(403, "Only a server's own token may report its port")
        data = self.get_json_body()
        port = data.get("port") if isinstance(data, dict) else None
        if set(data or ()) != {"port"} or type(port) is not int or not 0 < port < 65536:
            raise web.HTTPError(400, 'Expected {"port": <1-65535>} and nothing else')
        spawner.port = port
        self.set_status(201)
        self.finish(json.dumps({"message": "port recorded"}))


# importing batchspawner appended its handler to the hub's API handlers: use ours instead
default_handlers[:] = [
    (route, PortReportHandler) if route == BATCHSPAWNER_ROUTE else (route, *rest) for route, *rest in default_handlers
]
