"""The installers that build a virtual environment from a package list.

``uv`` is the default: on this kind of machine it builds a 10-package
environment many times faster than ``python -m venv`` + ``pip install``
and hard-links files from its cache instead of copying them, so an extra
version costs little disk (``benchmarks/environments.py`` measures both).
``pip`` is kept as the baseline of that benchmark and as a fallback.

Both are run as child processes with their output written to the build
log line by line (and to an optional progress callback), as the build
account when one is given (:mod:`.buildaccount`), in an environment of
their own: what the installer needs from the caller's (proxies,
certificates, ``UV_*``/``PIP_*`` settings), nothing else of root's.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import shutil
import signal
from collections import deque

try:  # the PyPI package ships its binary and this finder
    from uv import find_uv_bin
except ImportError:  # uv missing: the pip installer still works
    find_uv_bin = None


class BuildError(RuntimeError):
    """A build step failed; ``output`` holds the end of its output (the installer's error)."""

    def __init__(self, message, output=""):
        super().__init__(message)
        self.output = output

    def __str__(self):
        text = super().__str__()
        return f"{text}\n{self.output}" if self.output else text


def find_uv():
    """The ``uv`` executable of the ``uv`` package (a dependency), else the one on PATH."""
    found = None
    if find_uv_bin is not None:
        try:
            found = find_uv_bin()
        except FileNotFoundError:
            pass
    found = found or shutil.which("uv")
    if not found:
        raise BuildError("uv is not installed (pip install uv), or choose installer 'pip'")
    return found


#: what a build account's commands get of the caller's environment (names, and prefixes ending in _)
PASSED_ON = (
    "SSL_CERT_FILE", "SSL_CERT_DIR", "http_proxy", "https_proxy", "no_proxy",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "LANG", "UV_", "PIP_",
)


def _passed_on(name):
    return any(name.startswith(p) if p.endswith("_") else name == p for p in PASSED_ON)


async def run_logged(cmd, log, env=None, cwd=None, progress=None, tail=25, account=None):
    """Run *cmd* (as *account* if given), appending its output to the open file
    *log*; raise :class:`BuildError` with the output's last *tail* lines if it fails."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,  # its own process group: a stop kills what it started too
        **(account.popen_options() if account else {}),
    )
    last = deque(maxlen=tail)
    try:
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            log.write(line + "\n")
            last.append(line)
            if progress is not None:
                progress(line)
        status = await proc.wait()
    except BaseException:  # cancelled, timed out or interrupted: leave no installer behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the installer and its build processes
        await proc.wait()
        raise
    log.write(f"[exit status {status}]\n")
    log.flush()
    if status != 0:
        raise BuildError(f"{os.path.basename(cmd[0])} {cmd[1]} failed (exit status {status})", "\n".join(last))


class Installer:
    """What both installers share: the cache, whether builds from source are
    allowed, the account and the environment their commands run in."""

    def __init__(self, cache_dir, allow_builds=False, extra_env=None, account=None):
        self.cache_dir = cache_dir
        self.allow_builds = allow_builds
        self.extra_env = extra_env or {}
        self.account = account

    def settings(self):
        """The installer's own environment variables."""
        return {}

    def env(self):
        if self.account is None:
            env = dict(os.environ)
        else:  # root's variables are not the build account's business
            env = {k: v for k, v in os.environ.items() if _passed_on(k)}
            env.update(PATH="/usr/bin:/bin", HOME="/nonexistent")
        env.update(self.settings())
        env.pop("VIRTUAL_ENV", None)  # the hub's own environment is never a target
        env.update(self.extra_env)
        return env


class UvInstaller(Installer):
    """``uv venv`` + ``uv pip install`` (hard links from a shared cache)."""

    name = "uv"

    def settings(self):
        return dict(
            UV_CACHE_DIR=self.cache_dir,
            UV_PYTHON_DOWNLOADS="never",  # the base interpreter is given, never fetched
            UV_NO_PROGRESS="1",
            NO_COLOR="1",
        )

    def create_cmd(self, python, target):
        return [find_uv(), "venv", "--no-config", "--no-project", "--python", python, target]

    def install_cmd(self, target, requirements_file):
        cmd = [find_uv(), "pip", "install", "--no-config", "--python", os.path.join(target, "bin", "python")]
        cmd += ["--link-mode", "hardlink"]
        if not self.allow_builds:
            cmd.append("--no-build")  # wheels only: no package's build code runs
        return cmd + ["-r", requirements_file]

    def compile_cmd(self, python, target):
        # not uv's --compile-bytecode: it runs the new environment's interpreter, whose
        # start runs the installed packages' .pth files, as the builder
        return compile_cmd(python, target)


class PipInstaller(Installer):
    """``python -m venv`` + ``pip install`` (copies; pip's cache keeps wheels)."""

    name = "pip"

    def settings(self):
        return dict(PIP_CACHE_DIR=self.cache_dir, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")

    def create_cmd(self, python, target):
        return [python, "-m", "venv", target]

    def install_cmd(self, target, requirements_file):
        # pip runs in the new environment, but starts before anything is installed
        # into it, and compiles the bytecode in that same process
        cmd = [os.path.join(target, "bin", "python"), "-m", "pip", "install"]
        if not self.allow_builds:
            cmd += ["--only-binary", ":all:"]
        return cmd + ["-r", requirements_file]

    def compile_cmd(self, python, target):
        return None


INSTALLERS = {"uv": UvInstaller, "pip": PipInstaller}


def site_packages(target):
    """The site-packages folder of the virtual environment *target* (its own Python version's)."""
    found = glob.glob(os.path.join(glob.escape(target), "lib", "python3*", "site-packages"))
    if len(found) != 1:
        raise BuildError(f"{target}: expected one lib/python3.*/site-packages folder, found {len(found)}")
    return found[0]


def compile_cmd(python, target):
    """Compile *target*'s bytecode with the base *python* in isolated mode without
    ``site`` (``-I -S``): no installed package's code runs. A read-only
    environment could never cache it later: every kernel start would compile again."""
    return [python, "-I", "-S", "-m", "compileall", "-q", "-j", "0", site_packages(target)]


#: prints the installed distributions of the site-packages folder in argv[1]
# as JSON; run by the base interpreter with -I -S, so no package's code runs
LIST_INSTALLED = """\
import importlib.metadata, json, sys
dists = importlib.metadata.distributions(path=[sys.argv[1]])
print(json.dumps(sorted({f"{d.metadata['Name']}=={d.version}" for d in dists if d.metadata['Name']}, key=str.lower)))
"""


async def installed(python, target, account=None):
    """``name==version`` of every distribution in *target*, read from its metadata by
    the base *python* (as *account*: what the build left is read with its rights)."""
    proc = await asyncio.create_subprocess_exec(
        python, "-I", "-S", "-c", LIST_INSTALLED, site_packages(target),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd="/", **(account.popen_options() if account else {}),
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise BuildError("cannot list the installed packages", err.decode("utf-8", "replace"))
    return json.loads(out)


async def build_venv(installer, python, target, requirements_file, log, progress=None):
    """Create a virtual environment at *target* on *python*, install
    *requirements_file* into it and compile its bytecode; returns the
    installed distributions (``name==version``).

    Every command runs as ``installer.account`` when it has one (*target*
    must exist then, empty and the account's). Nothing the package list
    brings runs in the builder's process: no build from source (unless
    ``allow_builds``), and the new environment's interpreter never starts
    with its packages installed."""
    env = installer.env()
    run = dict(env=env, progress=progress, account=installer.account)
    await run_logged(installer.create_cmd(python, target), log, cwd=os.path.dirname(target), **run)
    await run_logged(installer.install_cmd(target, requirements_file), log, cwd=target, **run)
    compile = installer.compile_cmd(python, target)
    if compile:
        await run_logged(compile, log, cwd=target, **run)
    return await installed(python, target, installer.account)
