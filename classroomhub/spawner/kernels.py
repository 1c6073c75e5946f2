"""The kernels a server offers: the shared environments its owner may use
(:mod:`classroomhub.environments`) on its ``JUPYTER_PATH``, their default
environment first on its ``PATH`` (and the ``classroomhub`` command after
it), their tier in ``CLASSROOMHUB_TIER`` (``classroomhub env`` inside the
server reads it), and the server's kernel manager
(:mod:`classroomhub.serverkernels`)."""

from __future__ import annotations

import os
import shutil
import sysconfig

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Unicode
from traitlets.config import LoggingConfigurable

from ..environments import TIER_ENV, EnvironmentManager, server_environment

#: the folder of the hub's own commands (``classroomhub``), put on a local server's PATH if missing
HUB_BIN = sysconfig.get_path("scripts")


class ManagedKernels(LoggingConfigurable):
    """Shared environments in a server's environment (a mixin of ClassroomSpawner)."""

    environments_data_dir = Unicode(
        "",
        help="""The hub's data folder whose ``environments`` folder holds the shared
        environments (``classroomhub env --data-dir``). A server gets the kernels
        of the environments its owner may use (by course and tier) on its
        ``JUPYTER_PATH``, and none of the others, and its owner's default
        environment first on its ``PATH``. Empty: no shared environments.""",
    ).tag(config=True)

    server_kernel_manager = Unicode(
        "classroomhub.serverkernels.ClassroomKernelManager",
        help="""The ``ServerApp.kernel_manager_class`` of servers that run on the
        hub's host, from its environment. classroomhub's answers a kernel name
        the server does not offer with 404 and a message (jupyter_server: 500),
        and restarts a kernel with the kernelspec in force. Empty:
        jupyter_server's own (for servers run from an environment without
        classroomhub). Servers elsewhere (Slurm, Kubernetes) keep theirs.""",
    ).tag(config=True)

    @property
    def _on_this_host(self):
        """Whether the server runs here, from the hub's environment."""
        return isinstance(self, LocalProcessSpawner)

    def get_args(self):
        args = list(super().get_args())
        option = "--ServerApp.kernel_manager_class"
        if self._on_this_host and self.server_kernel_manager and not any(a.split("=", 1)[0] == option for a in args):
            args.append(f"{option}={self.server_kernel_manager}")
        return args

    def get_env(self):
        env = super().get_env()
        if getattr(self, "tier", None):  # TierSettings' (every classroom spawner has it)
            env[TIER_ENV] = self.tier
        if self._on_this_host:
            env["PATH"] = self._with_hub_bin(env.get("PATH", os.defpath))
        if not self.environments_data_dir:
            return env
        before = env.get("PATH", os.defpath)
        groups = [g.name for g in self.user.groups]
        try:
            manager = EnvironmentManager(parent=self, data_dir=self.environments_data_dir)
            env.update(server_environment(manager, groups, env))
        except Exception:  # a broken environment costs its kernels, never the server
            self.log.exception("Shared environments for %s: not given", self.user.name)
            return env
        if env.get("PATH") != before and self.cmd and os.sep not in self.cmd[0]:
            # the server itself runs from the hub's environment, not from whatever
            # the default environment has on PATH under the same name
            found = shutil.which(self.cmd[0], path=before)
            if found:
                self.cmd = [found, *self.cmd[1:]]
        return env

    @staticmethod
    def _with_hub_bin(path):
        """*path* with the hub's command folder at its end if it is not on it
        (``classroomhub env`` inside a server; after the default environment)."""
        parts = [p for p in path.split(os.pathsep) if p]
        if any(os.path.realpath(p) == os.path.realpath(HUB_BIN) for p in parts):
            return path
        return os.pathsep.join([*parts, HUB_BIN])
