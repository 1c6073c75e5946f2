"""The kernelspec an environment version publishes.

It lives inside the version (``<version>/jupyter/kernels/env-<name>/``) and
names that version's interpreter, so: a server's ``JUPYTER_PATH`` lists
``<name>/current/jupyter`` and finds the kernelspec of the version in force;
a kernel started from it runs ``<name>/<version>/bin/python`` and keeps that
version after a switch until it restarts: the servers' kernel manager
(:mod:`classroomhub.serverkernels`) reads the kernelspec again at a restart,
so a restart gets the version in force.
"""

from __future__ import annotations

import json
import os

from .layout import KERNELS


def kernelspec_dir(version_dir, kernel_name):
    return os.path.join(version_dir, KERNELS, "kernels", kernel_name)


def write_kernelspec(version_dir, spec, version):
    """Write the kernel.json of *spec*'s *version* built in *version_dir*."""
    folder = kernelspec_dir(version_dir, spec.kernel_name)
    # a new folder, never one the build left (it could be a link to anywhere)
    os.mkdir(os.path.join(version_dir, KERNELS), 0o755)
    os.makedirs(folder, mode=0o755)
    data = {
        "argv": [os.path.join(version_dir, "bin", "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": spec.display_name,
        "language": "python",
        "metadata": {"classroomhub": {"environment": spec.name, "version": version}, "debugger": True},
    }
    with open(os.path.join(folder, "kernel.json"), "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    return folder
