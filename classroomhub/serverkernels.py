"""The kernel manager of a single-user server that ClassroomSpawner starts
(``--ServerApp.kernel_manager_class``, see ``ManagedKernels.server_kernel_manager``).

Loaded into the jupyter server, not the hub: it imports jupyter_server.

- A kernel name the server does not know (another course's environment,
  which is not on this person's ``JUPYTER_PATH``) is answered by
  ``POST /api/kernels`` with 404 and a message; jupyter_server lets
  ``NoSuchKernel`` through as a 500 ("Unhandled error"). The sessions API
  keeps its own answer (501 with a message), as the error is still a
  ``NoSuchKernel``.
- A restart (by the person, or jupyter's after the kernel died) starts the
  kernelspec in force: jupyter_client keeps the one a kernel first started
  with, whose interpreter is a shared environment's version that may have
  been removed while no process used it (between a kernel's death and its
  restart). Running kernels keep their version until they restart.
"""

from __future__ import annotations

from jupyter_client.kernelspec import NoSuchKernel
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager, ServerKernelManager
from tornado import web
from traitlets import default


class UnknownKernel(web.HTTPError, NoSuchKernel):
    """A kernel name this server does not offer: 404 for the kernels API,
    still a NoSuchKernel for the code that handles one (the sessions API)."""

    def __init__(self, name):
        # formatted here: jupyter_server's error reply shows log_message as it is
        super().__init__(404, f"No kernel named {name!r} on this server: it offers the kernels you may use (GET /api/kernelspecs)")


class FreshSpecKernelManager(ServerKernelManager):
    """One kernel; its restart reads its kernelspec again (the version in force)."""

    async def restart_kernel(self, now=False, newports=False, **kw):
        cached = self._kernel_spec
        self._kernel_spec = None
        try:
            spec = self.kernel_spec
        except NoSuchKernel:  # no longer offered: restart what it ran
            self._kernel_spec = spec = cached
        if self.provisioner is not None:
            self.provisioner.kernel_spec = spec
        self.log.info("Restarting kernel %s with %s", self.kernel_id, spec.argv[0] if spec else "its kernelspec")
        return await super().restart_kernel(now=now, newports=newports, **kw)


class ClassroomKernelManager(AsyncMappingKernelManager):
    """jupyter_server's kernel manager, with the two changes above."""

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self):
        return f"{__name__}.FreshSpecKernelManager"

    async def start_kernel(self, *args, kernel_name=None, **kwargs):
        try:
            return await super().start_kernel(*args, kernel_name=kernel_name, **kwargs)
        except NoSuchKernel:
            self.log.warning("Kernel %r asked for, not offered here", kernel_name)
            raise UnknownKernel(kernel_name) from None
