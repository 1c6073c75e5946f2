"""Late joiners: deliver released content before a server starts.

The client side of the classroom service's ``/api/sync``, used by the spawner
and by any other spawner's ``pre_spawn_hook``; it needs nothing of the
service itself, so the spawner does not depend on the service's code.

ClassroomSpawner does this itself when ``classroom_service_url`` is set; any
other spawner can use :func:`sync_hook` as its ``pre_spawn_hook``::

    c.Spawner.pre_spawn_hook = sync_hook("http://127.0.0.1:10101/services/classroom/")

The hook asks the classroom service to deliver every current release of the
owner's courses that they have not had yet, with a token of the owner made
for this one call (service access only, no staff scopes, gone afterwards):
the server's own token cannot reach the service, so code running in a
server never acts there as its owner. A failure is logged, never fatal: a
student can still work without this week's notebook.
"""

from __future__ import annotations

import json

from jupyterhub import orm
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

#: The classroom service's name in ``c.JupyterHub.services``.
SERVICE_NAME = "classroom"


def access_scope(service_name=SERVICE_NAME):
    """The scope a token needs to reach the service at all."""
    return f"access:services!service={service_name}"


async def sync_before_start(spawner, service_url, timeout=60):
    url = service_url.rstrip("/") + "/api/sync"
    token = spawner.user.new_api_token(
        scopes=[access_scope()], expires_in=int(timeout) + 60, note="classroom sync before start"
    )
    request = HTTPRequest(
        url,
        method="POST",
        body=b"",
        headers={"Authorization": f"token {token}"},
        request_timeout=timeout,
    )
    try:
        return await _sync(spawner, url, request)
    finally:
        orm_token = orm.APIToken.find(spawner.user.db, token)
        if orm_token is not None:
            spawner.user.db.delete(orm_token)
            spawner.user.db.commit()


async def _sync(spawner, url, request):
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        body = e.response.body.decode(errors="replace") if e.response is not None else ""
        spawner.log.warning("Classroom sync for %s failed: %s %s", spawner.user.name, e, body[:500])
        return None
    except OSError as e:
        spawner.log.warning("Classroom sync for %s: service unreachable at %s: %s", spawner.user.name, url, e)
        return None
    delivered = json.loads(response.body)["delivered"]
    for item in delivered:
        spawner.log.info(
            "Classroom sync for %s: %s/%s v%s %s",
            spawner.user.name,
            item["course"],
            item["material"],
            item["version"],
            item["error"] or ", ".join(f"{n} {status}" for status, n in item["counts"].items() if n),
        )
    return delivered


def sync_hook(service_url, timeout=60):
    """A ``pre_spawn_hook`` for any spawner (the system user must exist already)."""

    async def hook(spawner):
        await sync_before_start(spawner, service_url, timeout)

    return hook
