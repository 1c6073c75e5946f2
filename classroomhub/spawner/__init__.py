"""ClassroomSpawner.

For now this is exactly JupyterHub's LocalProcessSpawner, registered under
the ``classroom`` entry point so configurations can name it today. Per-tier
limits, cgroup enforcement, usage and CPU-aware culling are tracked in the
spawner issue and are *not* provided yet.
"""

from jupyterhub.spawner import LocalProcessSpawner


class ClassroomSpawner(LocalProcessSpawner):
    """LocalProcessSpawner under the ``classroom`` name (no limits yet)."""


__all__ = ["ClassroomSpawner"]
