"""Managed environments: shared virtual environments built per course, tier
or for everyone, each published as a Jupyter kernel (docs/environments.md).

Layering: below the spawner and the service; it uses only the tiers and the
course group names.
"""

from .installers import BuildError
from .manager import EnvError, EnvironmentBusy, EnvironmentManager
from .personal import TIER_ENV, personal_data_dir, refusal
from .spec import EnvironmentSpec, SpecError, parse_packages, read_packages
from .visibility import kernel_dirs, may_use, server_environment, usable_environments

__all__ = [
    "BuildError",
    "EnvError",
    "EnvironmentBusy",
    "EnvironmentManager",
    "EnvironmentSpec",
    "SpecError",
    "TIER_ENV",
    "kernel_dirs",
    "may_use",
    "parse_packages",
    "personal_data_dir",
    "read_packages",
    "refusal",
    "server_environment",
    "usable_environments",
]
