"""A person's settings as Slurm job options: ``--mem``, ``--cpus-per-task``,
``--time``, and the names that may go on sbatch's command line."""

from __future__ import annotations

import math
import re

MiB = 1024**2
#: what an account or partition name may be (empty: Slurm's default)
SLURM_NAME = re.compile(r"[\w.-]*")


def slurm_memory(mem_bytes):
    """``--mem`` for a limit in bytes: whole MiB, rounded up (Slurm's ``M``)."""
    return f"{math.ceil(mem_bytes / MiB)}M"


def slurm_cpus(cpu_limit):
    """``--cpus-per-task`` for a CPU limit: Slurm allocates whole CPUs, so 0.5 asks for 1."""
    return max(1, math.ceil(cpu_limit))


def slurm_time(seconds):
    """``--time`` for a number of seconds, as ``days-hours:minutes:seconds``."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{seconds:02d}"
