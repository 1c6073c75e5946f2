"""A person's own environments, in their home (``classroomhub env`` inside
their server, as them): the same layout, package lists and installer as the
shared ones, kept in ``~/.local/share/classroomhub/environments``, each
version's kernelspec installed into Jupyter's user data folder as
``ipykernel install --user`` does, where their server finds it.

Which tiers may: the spawner puts the owner's tier into the server's
environment (:data:`TIER_ENV`); below :data:`OWN_ENVIRONMENTS_TIER` the
command refuses. It is a signpost, not a wall: anyone with a shell can
still ``python -m venv``; what bounds them is their disk quota.
"""

from __future__ import annotations

import json
import os
import shutil

from ..tiers import TIERS, tier_rank
from .kernelspec import kernelspec_dir
from .layout import write_json_atomic

#: set by the spawner in each server's environment: its owner's tier
TIER_ENV = "CLASSROOMHUB_TIER"
#: the least privileged tier that builds its own environments
OWN_ENVIRONMENTS_TIER = "power"


def personal_data_dir(environ=os.environ):
    """``$XDG_DATA_HOME/classroomhub`` (``~/.local/share/classroomhub``)."""
    base = environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "classroomhub")


def refusal(environ=os.environ):
    """Why the person whose server this is may not build environments, or None."""
    tier = environ.get(TIER_ENV)
    if tier in TIERS and tier_rank(tier) < tier_rank(OWN_ENVIRONMENTS_TIER):
        return (
            f"your tier ({tier}) uses the environments it is given: their kernels are in your "
            f"Launcher. Own environments are for the {OWN_ENVIRONMENTS_TIER} tier and above"
        )
    return None


def user_kernels_dir():
    """Jupyter's user kernel folder (``jupyter --data-dir``/kernels), as ``ipykernel install --user`` uses."""
    from jupyter_core.paths import jupyter_data_dir  # only where Jupyter is installed (the servers)

    return os.path.join(jupyter_data_dir(), "kernels")


def install_kernelspec(version_dir, kernel_name, kernels_dir):
    """Install *version_dir*'s kernelspec as *kernels_dir*/*kernel_name* (replacing an older one)."""
    with open(os.path.join(kernelspec_dir(version_dir, kernel_name), "kernel.json")) as f:
        data = json.load(f)
    folder = os.path.join(kernels_dir, kernel_name)
    os.makedirs(folder, mode=0o755, exist_ok=True)
    write_json_atomic(os.path.join(folder, "kernel.json"), data)
    return folder


def remove_kernelspec(kernel_name, kernels_dir):
    shutil.rmtree(os.path.join(kernels_dir, kernel_name), ignore_errors=True)
