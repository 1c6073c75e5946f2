"""Stopping a user's server from inside the hub, the way the REST API does."""

from __future__ import annotations


async def stop_server(user, name, log, reason):
    """Remove *user*'s server *name* from the proxy and stop it.

    Returns False (and does nothing) if the server is not running or is
    already starting or stopping.
    """
    spawner = user.spawners.get(name)
    if spawner is None or spawner.pending or not spawner.active:
        return False
    log.info("Stopping server %r of %s: %s", name, user.name, reason)
    spawner._stop_pending = True
    try:
        await user.settings["proxy"].delete_user(user, name)
        await user.stop(name)
    finally:
        spawner._stop_pending = False
    return True
