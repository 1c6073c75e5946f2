"""ClassroomKubeSpawner: a person's tier settings as a Kubernetes pod.

jupyterhub-kubespawner's ``KubeSpawner`` creates, watches and deletes the
pod; this module only decides what the pod asks for. The owner's settings
are resolved as for ClassroomSpawner (tier, then JupyterHub's
``group_overrides``, then ``user_settings``: :mod:`.spawner.settings`), and
then:

- ``mem_limit`` is the container's memory limit *and* its request, so the
  node has reserved what the server may use: the pod is not evicted when the
  node runs short, and a kernel past the limit meets the container's OOM
  killer instead;
- ``cpu_limit`` is the CPU limit, and ``cpu_guarantee_fraction`` of it the
  request (what the scheduler reserves);
- ``max_age`` is the pod's ``activeDeadlineSeconds``, ``idle_timeout``
  jupyter_server's own ``shutdown_no_activity_timeout`` (kernels that compute
  count as activity, and idle ones are culled after ``kernel_cull_timeout``);
- the shared environments (:class:`.spawner.kernels.ManagedKernels`) come
  from one volume mounted read-only at the path they were built at, and the
  shared data folder from another, read-only at ``~/data``.

Importing this module imports kubespawner (the ``kubernetes`` extra);
nothing else in the package does.
"""

from __future__ import annotations

import copy
import os

from kubernetes_asyncio.client.models import V1Volume, V1VolumeMount
from kubespawner import KubeSpawner
from kubespawner.utils import get_k8s_model
from traitlets import Dict, Float, Integer, TraitError, Unicode, default, validate

from .spawner.kernels import ManagedKernels
from .spawner.serverargs import ServerArguments
from .spawner.settings import TierSettings
from .units import human_bytes

#: the PATH of Jupyter's docker-stacks images (Zero to JupyterHub's default image is one)
IMAGE_PATH = "/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImagePath(KubeSpawner):
    """The server's ``PATH`` is the image's (``image_path``), not the hub's:
    KubeSpawner passes on no ``PATH``, and ManagedKernels puts the default
    environment in front of whatever it is given."""

    image_path = Unicode(
        IMAGE_PATH,
        help="""The ``PATH`` of the server's image. When the owner has a default
        shared environment, the pod's ``PATH`` is that environment's ``bin``
        followed by this (a pod's ``PATH`` replaces the image's, so it must be
        complete); otherwise the image's own applies. The default is that of
        Jupyter's docker-stacks images.""",
    ).tag(config=True)

    def get_env(self):
        env = super().get_env()
        env.setdefault("PATH", self.image_path)
        return env


class ClassroomKubeSpawner(TierSettings, ServerArguments, ManagedKernels, ImagePath):
    """KubeSpawner with the classroom's tier policy.

    Each start resolves the owner's settings (tier, group overrides, person)
    into the pod's resources, culling and volumes; the server sees the same
    ``MEM_LIMIT``/``CPU_LIMIT`` as under ClassroomSpawner, and runs as a
    non-root user that cannot gain privileges.
    """

    idle_timeout = Integer(
        0,
        help="""Seconds without activity after which the server stops itself
        (jupyter_server's ``ServerApp.shutdown_no_activity_timeout``; a kernel
        that computes is activity, a tab left open on an idle kernel is not once
        ``kernel_cull_timeout`` has culled the kernel). 0: never.""",
    ).tag(config=True)

    max_age = Integer(
        0,
        help="""Seconds a server may run: the pod's ``activeDeadlineSeconds``,
        after which Kubernetes ends it. 0: no limit.""",
    ).tag(config=True)

    cpu_guarantee_fraction = Float(
        0.25,
        help="""The CPU request as a fraction of ``cpu_limit`` (what the
        scheduler reserves on the node; the limit is what the server may use
        when the node has CPU to spare). 1 reserves the whole limit.
        The memory request is always the memory limit.""",
    ).tag(config=True)

    @validate("cpu_guarantee_fraction")
    def _validate_fraction(self, proposal):
        if not 0 < proposal.value <= 1:
            raise TraitError(f"cpu_guarantee_fraction must be in (0, 1], not {proposal.value}")
        return proposal.value

    environments_volume = Dict(
        help="""A Kubernetes volume source holding the shared environments,
        e.g. ``{"persistentVolumeClaim": {"claimName": "classroom-environments"}}``.
        Mounted read-only in every server at ``<environments_data_dir>/environments``,
        where the hub (which lists them) also mounts it and where they were
        built: a virtual environment only works at the path it was built at.""",
    ).tag(config=True)

    shared_data_volume = Dict(
        help="""A Kubernetes volume source with data for everyone (the
        ``shared_data_dir`` of one machine), e.g. ``{"nfs": {"server": ..., "path": "/srv/data"}}``.
        Mounted read-only at `shared_data_mount_path`. Empty: none.""",
    ).tag(config=True)

    shared_data_mount_path = Unicode(
        "/home/jovyan/data",
        help="Where the shared data volume appears in the server: ``~/data`` of the image's user.",
    ).tag(config=True)

    @default("cmd")
    def _default_cmd(self):
        # KubeSpawner's default (the image's CMD) drops the server's arguments:
        # the kernel culling and the hub's token cache are arguments
        return ["jupyterhub-singleuser"]

    @default("uid")
    def _default_uid(self):
        return 1000  # jovyan in Jupyter's images

    @default("fs_gid")
    def _default_fs_gid(self):
        return 100  # users: the home volume is writable by the server

    @validate("uid")
    def _validate_uid(self, proposal):
        if proposal.value == 0:
            raise TraitError("uid 0: a server never runs as root")
        return proposal.value

    @default("container_security_context")
    def _default_container_security_context(self):
        return {"runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # what each setting is before any tier, group or person changes it: a start
        # begins from here, so a setting only the old tier had (a power user's node
        # pool) does not outlive a demotion on this reused spawner
        self._configured = {name: copy.deepcopy(getattr(self, name)) for name in self._overridable()}

    def _overridable(self):
        names = set()
        for values in (*self.tier_settings.values(), *self.user_settings.values()):
            names.update(values)
        if isinstance(self.group_overrides, dict):
            for override in self.group_overrides.values():
                names.update(override.get("spawner_override", {}))
        return sorted(name for name in names if self.has_trait(name))

    async def apply_group_overrides(self):
        for name, value in self._configured.items():
            setattr(self, name, copy.deepcopy(value))
        await super().apply_group_overrides()
        # memory request = limit: the node keeps the memory the server may use
        self.mem_guarantee = self.mem_limit or None
        self.cpu_guarantee = self.cpu_limit * self.cpu_guarantee_fraction if self.cpu_limit else None
        self.log.info(
            "ClassroomKubeSpawner: %s (%s tier): memory %s, CPU %s (request %s), image %s",
            self.user.name,
            self.tier,
            human_bytes(self.mem_limit or None),
            self.cpu_limit or "unlimited",
            self.cpu_guarantee or "none",
            self.image,
        )
        self.check_named_server_limit()  # before the pod exists: refused with the tier's reason

    def get_args(self):
        args = super().get_args()
        if self.idle_timeout:
            args.append(f"--ServerApp.shutdown_no_activity_timeout={self.idle_timeout}")
        return args

    def get_env(self):
        # ManagedKernels may resolve the command on the hub's file system; the
        # server's command is looked up in its image, never on the hub
        cmd = self.cmd
        try:
            env = super().get_env()
        finally:
            self.cmd = cmd
        if env.get("PATH") == self.image_path and "PATH" not in self.environment:
            del env["PATH"]  # no environment in front of it: the image's own PATH applies
        return env

    def classroom_volumes(self):
        """The read-only volumes of the classroom: ``[(volume, mount)]`` as dicts."""
        found = []
        if self.environments_data_dir and self.environments_volume:
            path = os.path.join(self.environments_data_dir, "environments")
            found.append(({"name": "classroom-environments", **self.environments_volume}, {"name": "classroom-environments", "mountPath": path, "readOnly": True}))
        if self.shared_data_volume:
            found.append(({"name": "classroom-data", **self.shared_data_volume}, {"name": "classroom-data", "mountPath": self.shared_data_mount_path, "readOnly": True}))
        return found

    async def get_pod_manifest(self):
        pod = await super().get_pod_manifest()
        for volume, mount in self.classroom_volumes():
            pod.spec.volumes = [*(pod.spec.volumes or []), get_k8s_model(V1Volume, volume)]
            container = pod.spec.containers[0]
            container.volume_mounts = [*(container.volume_mounts or []), get_k8s_model(V1VolumeMount, mount)]
        if self.max_age:
            pod.spec.active_deadline_seconds = self.max_age
        return pod
