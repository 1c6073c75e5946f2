"""ClassroomSlurmSpawner: the classroom's tier policy for servers run as Slurm jobs.

Importing this package imports batchspawner (the ``slurm`` extra) and
replaces its port-report API handler (:mod:`.portreport`); nothing else in
classroomhub imports it.
"""

from . import portreport  # noqa: F401  (replaces batchspawner's API handler at import)
from .commands import SlurmCommandTimeout
from .request import slurm_cpus, slurm_memory, slurm_time
from .spawner import ClassroomSlurmSpawner

__all__ = ["ClassroomSlurmSpawner", "SlurmCommandTimeout", "slurm_cpus", "slurm_memory", "slurm_time"]
