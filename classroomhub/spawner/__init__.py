"""ClassroomSpawner: per-tier limits enforced by cgroups, no orphans, usage, culling."""

from .detection import detect
from .enforcement import Enforcement, EnforcementUnavailable, Limits, Usage, group_key
from .host import Host
from .spawner import ClassroomSpawner

__all__ = [
    "ClassroomSpawner",
    "Enforcement",
    "EnforcementUnavailable",
    "Host",
    "Limits",
    "Usage",
    "detect",
    "group_key",
]
