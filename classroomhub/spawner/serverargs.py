"""What the jupyter server is told on its command line: how its kernels talk
to it, when it culls idle kernels, how long it trusts the hub's answers,
what JupyterLab's resource indicator shows."""

from __future__ import annotations

from traitlets import Bool, Enum, Integer
from traitlets.config import LoggingConfigurable

# jupyter-resource-usage shows CPU only when asked, and its CPU warning
# compares percent with CPU_LIMIT's cores: it would be on at 1 % of a core
# (docs/jupyterlab.md)
RESOURCE_DISPLAY = {
    "--ResourceUseDisplay.track_cpu_percent": "True",
    "--ResourceUseDisplay.cpu_warning_threshold": "0",
}


class ServerArguments(LoggingConfigurable):
    """jupyter_server options ClassroomSpawner sets (a mixin of it)."""

    kernel_cull_timeout = Integer(
        0,
        help="jupyter_server's MappingKernelManager.cull_idle_timeout: idle kernels are shut down after this many seconds; 0 never.",
    ).tag(config=True)

    kernel_cull_interval = Integer(
        0,
        help="MappingKernelManager.cull_interval; 0 picks a sixth of `kernel_cull_timeout` (at least 10 s).",
    ).tag(config=True)

    kernel_cull_connected = Bool(
        False,
        help="MappingKernelManager.cull_connected: also cull idle kernels an open tab is connected to.",
    ).tag(config=True)

    kernel_transport = Enum(
        ["ipc", "tcp"],
        "ipc",
        help="""ZeroMQ transport between the server and its kernels. ``ipc`` uses
        sockets in the user's private runtime folder: kernels of different
        users cannot collide on TCP ports (jupyter_client only avoids ports it
        picked itself).""",
    ).tag(config=True)

    hub_auth_cache_max_age = Integer(
        5,
        help="""Seconds the server trusts the hub's answer about a visitor's
        token (``HubOAuth.cache_max_age``; JupyterHub's default is 300). When
        the roster takes someone's staff role, their access to others'
        servers ends within the roster's poll interval plus this.""",
    ).tag(config=True)

    def get_args(self):
        args = list(super().get_args())
        args.append(f"--KernelManager.transport={self.kernel_transport}")
        args.append(f"--HubOAuth.cache_max_age={self.hub_auth_cache_max_age}")
        if self.kernel_cull_timeout:
            interval = self.kernel_cull_interval or max(10, self.kernel_cull_timeout // 6)
            args += [
                f"--MappingKernelManager.cull_idle_timeout={self.kernel_cull_timeout}",
                f"--MappingKernelManager.cull_interval={interval}",
                f"--MappingKernelManager.cull_connected={self.kernel_cull_connected}",
            ]
        # not over the hub's own Spawner.args: given twice, an option makes the extension fail to load
        given = {arg.split("=", 1)[0] for arg in args}
        args += [f"{name}={value}" for name, value in RESOURCE_DISPLAY.items() if name not in given]
        return args
