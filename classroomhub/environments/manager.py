"""Build, switch, list and remove shared environments.

Every build makes a new version beside the old ones, built with the
configured installer on the interpreter the hub runs on, as the build
account when run by root (:mod:`.buildaccount`), then taken by root and made
read-only (:mod:`.handover`); only a complete build becomes ``current`` (a symlink renamed
over the old one, so a server never sees half a switch). A failed build
removes its folder, keeps its log and leaves the version in force alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import json
import os
import shutil
import stat
import sys
from dataclasses import dataclass

from jupyterhub.traitlets import ByteSpecification
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from traitlets import Bool, Float, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ..units import human_bytes
from .buildaccount import build_slot, ensure_build_account, kill_all
from .disk import disk_bytes
from .handover import give, take
from .inuse import processes_using
from .installers import INSTALLERS, BuildError, build_venv
from .kernelspec import write_kernelspec
from .layout import Layout, write_json_atomic
from .personal import install_kernelspec, remove_kernelspec, user_kernels_dir
from .spec import EnvironmentSpec, SpecError

#: the package every environment gets, so that it can run a Jupyter kernel
KERNEL_PACKAGE = "ipykernel"


class EnvError(RuntimeError):
    """An operation on an environment cannot be done; the message says why."""


class EnvironmentBusy(EnvError):
    """Another build or removal of the environment is running."""


@dataclass
class VersionInfo:
    version: int
    current: bool
    manifest: dict
    pids: tuple = ()


@dataclass
class EnvironmentInfo:
    spec: EnvironmentSpec
    current: int | None
    versions: list  # VersionInfo, oldest first
    path: str


def _world_usable(path):
    """Whether every user can run *path*: the file and each folder above it (DESIGN §8: not pyenv under /root)."""
    path = os.path.realpath(path)
    mode = os.stat(path).st_mode
    if not (mode & stat.S_IXOTH and mode & stat.S_IROTH):
        return False
    folder = os.path.dirname(path)
    while folder != "/":
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return False
        folder = os.path.dirname(folder)
    return True


def _writable_again(top):
    """Give folders back their owner's write bit so a non-root owner can delete them."""
    for folder, dirs, files in os.walk(top):
        with contextlib.suppress(OSError):
            os.chmod(folder, 0o755)


class EnvironmentManager(LoggingConfigurable):
    """Shared environments under ``<data_dir>/environments``."""

    data_dir = Unicode(
        help="Folder of the hub's data; environments are built in its ``environments`` folder. "
        "It must not be inside the hub's own environment (sys.prefix)."
    ).tag(config=True)

    @validate("data_dir")
    def _valid_data_dir(self, proposal):
        path = os.path.realpath(proposal["value"] or ".")
        prefix = os.path.realpath(sys.prefix)
        if path == prefix or path.startswith(prefix + os.sep):
            raise SpecError(f"{path} is inside the hub's own environment ({prefix}); choose a data folder outside it")
        return path

    installer = Unicode(
        "uv", help="The installer that builds environments: 'uv' (fast, hard links from its cache) or 'pip'."
    ).tag(config=True)

    @validate("installer")
    def _valid_installer(self, proposal):
        if proposal["value"] not in INSTALLERS:
            raise SpecError(f"unknown installer {proposal['value']!r} (expected one of {', '.join(INSTALLERS)})")
        return proposal["value"]

    base_python = Unicode(
        help="The interpreter environments are built on. Default: the one the hub runs on (its base "
        "interpreter when the hub runs in a virtual environment). Every user must be able to run it."
    ).tag(config=True)

    @default("base_python")
    def _default_base_python(self):
        return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)

    @validate("base_python")
    def _valid_base_python(self, proposal):
        path = proposal["value"]
        if not os.path.isfile(path) or not _world_usable(path):
            raise SpecError(f"{path}: not an interpreter every user may run (check it and the folders above it)")
        return path

    cache_dir = Unicode(
        help="The installer's cache. Keep it on the same file system as data_dir: uv then hard-links "
        "the installed files instead of copying them. Default: <data_dir>/environments/.cache/<installer>."
    ).tag(config=True)

    @default("cache_dir")
    def _default_cache_dir(self):
        return os.path.join(self.layout.root, ".cache", self.installer)

    allow_builds = Bool(
        False,
        help="Allow packages without a wheel to be built from source. A build runs the package's own "
        "code as the build account (`build_user`), which can then change the installer's cache and so "
        "what later builds install: keep it off unless every package list comes from someone you trust.",
    ).tag(config=True)

    build_user = Unicode(
        "classroomhub-build",
        help="The system account that builds environments when the manager runs as root (builds never "
        "run as root): created at first use as a system user without login shell or home. It may write "
        "only the version being built and the installer's cache; root takes each built version.",
    ).tag(config=True)

    build_timeout = Float(
        30 * 60,
        help="Seconds a build may take (the installer, the bytecode compiler; not the wait for "
        "another build). Past it the build is stopped: the installer's processes and every process "
        "of the build account are killed, the build fails with a message and the version in force "
        "stays. 0: no limit.",
    ).tag(config=True)

    build_reserve = ByteSpecification(
        "2G",
        help="Free space the environments' file system must keep: a build is refused, with a "
        "message, when less than this is free there before it starts (K, M, G, T suffixes). 0: no check.",
    ).tag(config=True)

    server_cgroup = Unicode(
        "classroomhub",
        help="ClassroomSpawner.cgroup_parent of the hub whose servers use these environments. A server "
        "whose PATH holds a version's bin keeps that version while it runs; a PATH counts only for a "
        "process in a root-owned cgroup below this folder (any user can name a version in their own "
        "PATH). Empty: no PATH counts, only the executable, working folder and files of a process.",
    ).tag(config=True)

    personal = Bool(
        False,
        help="One person's own environments (``classroomhub env`` inside their server, as them): each "
        "switch installs the kernelspec into their Jupyter data folder, as ``ipykernel install --user`` "
        "does, and a removal takes it out; other users' processes (which cannot reach a private home) "
        "are not looked at when removing versions.",
    ).tag(config=True)

    @property
    def layout(self):
        if not self.data_dir:
            raise EnvError("EnvironmentManager.data_dir is not set")
        return Layout(os.path.join(self.data_dir, "environments"))

    # -- reading -----------------------------------------------------------------------

    def names(self):
        return self.layout.names()

    def spec(self, name):
        try:
            with open(self.layout.declaration(name)) as f:
                return EnvironmentSpec.from_dict(json.load(f))
        except FileNotFoundError:
            raise EnvError(f"no environment named {name!r}") from None

    def manifest(self, name, version):
        with open(self.layout.manifest(name, version)) as f:
            return json.load(f)

    def info(self, name, with_processes=False):
        """An :class:`EnvironmentInfo` of *name*; with the pids using each version if asked."""
        layout = self.layout
        spec = self.spec(name)
        current = layout.current(name)
        versions = layout.versions(name)
        usage = processes_using([layout.version_dir(name, v) for v in versions], self.server_cgroup) if with_processes else None
        infos = []
        for v in versions:
            pids = tuple(sorted(usage.pids[layout.version_dir(name, v)])) if usage else ()
            infos.append(VersionInfo(v, v == current, self.manifest(name, v), pids))
        return EnvironmentInfo(spec, current, infos, layout.env_dir(name))

    def build_log(self, name, version=None):
        """The build log of *version* (default: the latest build, failed or not)."""
        if version is None:
            version = self.layout.next_version(name) - 1
        try:
            with open(self.layout.log_file(name, version), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            raise EnvError(f"no build log of {name} version {version}") from None

    def disk_bytes(self, name):
        """``(own, total)``: the bytes *name*'s folder adds beyond the installer's cache
        (what its hard links share), and all its files' bytes."""
        seen = set()
        disk_bytes(self.cache_dir, seen=seen)
        own = disk_bytes(self.layout.env_dir(name), seen=seen)
        return own, disk_bytes(self.layout.env_dir(name))

    def check_space(self):
        """:class:`EnvError` when the environments' file system has less than ``build_reserve`` free."""
        if not self.build_reserve:
            return
        folder = self.layout.root
        while not os.path.isdir(folder):  # not made yet: the file system it will be on
            folder = os.path.dirname(folder)
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
        if free < self.build_reserve:
            raise EnvError(
                f"only {human_bytes(free)} free in {folder}, less than the {human_bytes(self.build_reserve)} "
                "kept free for builds (EnvironmentManager.build_reserve): not built"
            )

    # -- changing ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, name):
        os.makedirs(self.layout.env_dir(name), mode=0o755, exist_ok=True)
        fd = os.open(self.layout.lock_file(name), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EnvironmentBusy(f"environment {name}: another build or removal is running") from None
            yield
        finally:
            os.close(fd)

    def _build_account(self):
        """The account builds run as: the build account as root, else whoever runs this."""
        return ensure_build_account(self.build_user, self.log) if os.geteuid() == 0 else None

    def _prepare_root(self, account=None):
        os.makedirs(self.layout.root, mode=0o755, exist_ok=True)
        os.makedirs(os.path.dirname(self.cache_dir), mode=0o755, exist_ok=True)
        os.makedirs(self.cache_dir, mode=0o700, exist_ok=True)
        if account is not None and os.lstat(self.cache_dir).st_uid != account.uid:
            self.log.info("Environments: giving the installer's cache %s to %s", self.cache_dir, account.name)
            give(self.cache_dir, account.uid, account.gid)

    def _write_spec(self, spec):
        write_json_atomic(self.layout.declaration(spec.name), spec.to_dict())

    async def create(self, spec, progress=None):
        """Declare *spec* and build its first version; returns the version.
        A failed first build leaves nothing declared (but its log)."""
        account = self._build_account()
        self._prepare_root(account)
        with self._locked(spec.name):
            if os.path.exists(self.layout.declaration(spec.name)):
                raise EnvError(f"environment {spec.name} exists already (update it instead)")
            version = await self._build(spec, progress, account)
            self._write_spec(spec)
            return version

    async def update(self, name, packages=None, audience=None, display_name=None, default=None, rebuild=None, progress=None):
        """Change *name*'s declaration; build and switch to a new version when
        *packages* are given (or *rebuild*). Returns the new version, or None
        when only the declaration changed. A failed build changes nothing."""
        old = self.spec(name)
        data = old.to_dict()
        for key, value in (("packages", packages), ("audience", audience), ("display_name", display_name), ("default", default)):
            if value is not None:
                data[key] = value
        spec = EnvironmentSpec.from_dict(data)
        if rebuild is None:
            rebuild = packages is not None or spec.display_name != old.display_name
        account = self._build_account() if rebuild else None
        self._prepare_root(account)
        with self._locked(name):
            version = await self._build(spec, progress, account) if rebuild else None
            self._write_spec(spec)
            return version

    async def _build(self, spec, progress, account):
        self.check_space()
        layout = self.layout
        name = spec.name
        version = layout.next_version(name)
        target = layout.version_dir(name, version)
        os.makedirs(os.path.dirname(layout.log_file(name, version)), mode=0o755, exist_ok=True)
        packages = list(spec.packages)
        if not any(canonicalize_name(Requirement(p).name) == KERNEL_PACKAGE for p in packages):
            packages.append(KERNEL_PACKAGE)
        text = "\n".join(packages) + "\n"
        if len(text.splitlines()) != len(packages):  # as pip reads it: one line per package, no option lines
            raise EnvError(f"environment {name}: the package list must be one line per package; not built")
        requirements = layout.requirements_file(name, version)
        with open(requirements, "w") as f:
            f.write(text)
        installer = INSTALLERS[self.installer](self.cache_dir, allow_builds=self.allow_builds, account=account)
        builder = account.name if account else "its owner"
        self.log.info("Environment %s: building version %d with %s as %s", name, version, self.installer, builder)
        with open(layout.log_file(name, version), "w") as log:
            log.write(f"# environment {name}, version {version}, {self.installer} on {self.base_python} as {builder}\n")
            try:
                installed = await self._build_as(account, installer, target, requirements, log, progress)
                os.chmod(target, 0o755)  # for what the builder adds (root's or the owner's now)
                write_kernelspec(target, spec, version)
                manifest = {
                    "environment": name,
                    "version": version,
                    "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "installer": self.installer,
                    "python": self.base_python,
                    "requested": packages,
                    "installed": installed,
                    "kernel_name": spec.kernel_name,
                    "display_name": spec.display_name,
                }
                write_json_atomic(layout.manifest(name, version), manifest)  # last: the version is complete
                take(target)
            except BaseException as e:
                log.write(f"# build failed: {e}\n")
                self._remove_tree(target)
                current = layout.current(name)
                kept = f"version {current} stays in force" if current else "nothing was created"
                self.log.warning("Environment %s: version %d failed to build; %s", name, version, kept)
                if isinstance(e, BuildError):
                    raise BuildError(f"environment {name}: version {version} failed to build; {kept}", e.output) from None
                raise
            layout.switch(name, version)
            if self.personal:
                install_kernelspec(target, spec.kernel_name, user_kernels_dir())
            log.write(f"# switched {name} to version {version}\n")
        self.log.info("Environment %s: version %d in force", name, version)
        return version

    async def _build_as(self, account, installer, target, requirements, log, progress):
        """Build *target* (as *account*, one build at a time per account) and take it:
        owned by root when built by the build account, read-only but for its top folder."""
        if account is None:
            os.mkdir(target, 0o755)
            try:
                return await self._build_venv(installer, target, requirements, log, progress)
            finally:
                take(target)
        async with build_slot(account, progress):
            os.mkdir(target, 0o755)
            os.chown(target, account.uid, account.gid, follow_symlinks=False)
            try:
                return await self._build_venv(installer, target, requirements, log, progress)
            finally:
                await kill_all(account, self.base_python)  # nothing of the build may change it once taken
                take(target, owner=(0, 0))

    async def _build_venv(self, installer, target, requirements, log, progress):
        """:func:`.installers.build_venv` for at most ``build_timeout`` s; past it, its
        installer's processes are killed (:func:`.installers.run_logged`) and the build fails."""
        build = build_venv(installer, self.base_python, target, requirements, log, progress)
        try:
            return await asyncio.wait_for(build, self.build_timeout or None)
        except asyncio.TimeoutError:
            raise BuildError(
                "stopped: the build took longer than EnvironmentManager.build_timeout",
                f"stopped after {self.build_timeout:g} s (EnvironmentManager.build_timeout)",
            ) from None

    def _remove_tree(self, path):
        if os.path.lexists(path):
            _writable_again(path)
            shutil.rmtree(path, ignore_errors=True)

    def prune(self, name):
        """Remove the versions of *name* that are not current and that no process
        uses; returns ``(removed, kept)`` where kept maps a version to its pids."""
        layout = self.layout
        self.spec(name)  # exists
        with self._locked(name):
            current = layout.current(name)
            old = [v for v in layout.versions(name) if v != current]
            usage = processes_using([layout.version_dir(name, v) for v in old], self.server_cgroup)
            if usage.blind and old and not self.personal:
                raise EnvError(
                    f"{usage.blind} processes could not be inspected (run as root): no version of {name} removed"
                )
            removed, kept = [], {}
            for v in old:
                pids = usage.pids[layout.version_dir(name, v)]
                if pids:
                    kept[v] = sorted(pids)
                    continue
                # gone from listings first (no manifest), then deleted
                os.chmod(layout.version_dir(name, v), 0o755)
                os.unlink(layout.manifest(name, v))
                self._remove_tree(layout.version_dir(name, v))
                removed.append(v)
            if removed:
                self.log.info("Environment %s: removed versions %s", name, ", ".join(map(str, removed)))
            return removed, kept

    def remove(self, name, force=False):
        """Remove *name* entirely, unless a process uses one of its versions (or *force*)."""
        layout = self.layout
        kernel_name = self.spec(name).kernel_name  # exists
        with self._locked(name):
            folders = [layout.version_dir(name, v) for v in layout.versions(name)]
            usage = processes_using(folders, self.server_cgroup)
            busy = {f: p for f, p in usage.pids.items() if p}
            if not force and (busy or (usage.blind and not self.personal)):
                detail = "; ".join(f"{os.path.basename(f)}: pids {sorted(p)}" for f, p in busy.items())
                raise EnvError(
                    f"environment {name} is in use ({detail or f'{usage.blind} processes not inspectable'}); "
                    "stop those kernels or use force"
                )
            # unlisted at once (the rename), then deleted
            graveyard = os.path.join(layout.root, f".removed-{name}-{os.getpid()}")
            os.rename(layout.env_dir(name), graveyard)
        self._remove_tree(graveyard)
        if self.personal:
            remove_kernelspec(kernel_name, user_kernels_dir())
        self.log.info("Environment %s removed", name)
