"""The kernels a server offers: the shared environments its owner may use
(:mod:`classroomhub.environments`) on its ``JUPYTER_PATH``, and their
default environment first on its ``PATH``."""

from __future__ import annotations

import os
import shutil

from traitlets import Unicode
from traitlets.config import LoggingConfigurable

from ..environments import EnvironmentManager, server_environment


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

    def get_env(self):
        env = super().get_env()
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
