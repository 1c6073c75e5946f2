"""Where earlier configurations import ``sync_hook`` from.

The hook lives in :mod:`classroomhub.synchook`, below both the spawner and
the service.
"""

from ..synchook import sync_hook

__all__ = ["sync_hook"]
