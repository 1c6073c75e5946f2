"""Environments benchmark: uv against ``python -m venv`` + ``pip install``.

a. Build time of a 10-package environment (small pure-Python packages from
   PyPI, pinned so both installers install the same files), with a cold
   cache (an empty cache folder: everything is downloaded) and a warm one:
   uv with the cache of a first build; pip with every wheel in a local
   folder (``--no-index --find-links``, pip's fastest form: no network at
   all), because pip's own HTTP cache stays empty on this network (it
   keeps no response from the index here, so pip's "warm" build would be
   a cold one). Both installers start from the
   interpreter the hub runs on, compile bytecode (pip while it installs;
   after uv, ``python -I -S -m compileall``, as the engine does) and install
   wheels only. Run as root, both build as the build account
   (``EnvironmentManager.build_user``, as the engine does) and each timed
   build ends with root taking the version (owner, read-only; uv's hard
   links from the cache become copies: :mod:`classroomhub.environments.handover`).
   ours: ``uv venv`` + ``uv pip install`` + compileall (the
   engine's commands, :mod:`classroomhub.environments.installers`);
   baseline, same run, interleaved: ``python -m venv`` + ``pip install``.
b. Disk: the space one environment takes and the space a second version
   (one package at another version) adds, counting each inode once. uv
   hard-links files from its cache, but a version taken from the build
   account gets copies of its own (so, as with pip, each version costs its
   full size; run without root, the links stay).
c. Kernel start: from "start kernel" to the first result (``1+1``) in a
   course environment built by the engine (the 10 packages + ipykernel;
   its kernelspec, read-only, as students get it) against the default
   kernel (``python3``: ipykernel of the environment the hub and its
   servers run from), through jupyter_client, interleaved.

Needs the network (PyPI). Creates everything in a temporary folder and
removes it. Run from the repository root::

    PATH=$PWD/.venv/bin:$PATH python benchmarks/environments.py
    ... python benchmarks/environments.py --quick     # one round (~1 min)

Prints medians and ratios; ends with one line per target (PASS/MISS).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from classroomhub.environments import EnvironmentManager, EnvironmentSpec
from classroomhub.environments.buildaccount import ensure_build_account
from classroomhub.environments.disk import disk_bytes
from classroomhub.environments.handover import take
from classroomhub.environments.installers import INSTALLERS, build_venv

#: ten small pure-Python packages (python-dateutil also brings six)
PACKAGES = [
    "attrs==26.1.0",
    "idna==3.20",
    "iniconfig==2.3.1",
    "more-itertools==11.2.1",
    "packaging==26.4",
    "pyparsing==3.3.3",
    "python-dateutil==4.0.0",
    "six==1.17.0",
    "tabulate==0.10.0",
    "toolz==1.2.0",
]
#: the second version: one package at another release
SECOND = [p if not p.startswith("tabulate") else "tabulate==0.9.0" for p in PACKAGES]
TARGET_BUILD_RATIO = 0.3  # the target: build <= 0.3x venv+pip, warm cache
TARGET_KERNEL_RATIO = 1.1  # and: kernel start in a course environment <= 1.1x the default

# isolated from this machine's pip/uv configuration (extra indexes, find-links, constraints)
ISOLATED = {"PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_CONSTRAINT": "", "UV_CONSTRAINT": ""}


def mib(n):
    return f"{n / 2**20:.1f} MiB"


def base_python():
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def write_requirements(folder, name, packages):
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write("\n".join(packages) + "\n")
    return path


def build_account():
    """The engine's build account when run as root (made if missing), else None: builds as oneself."""
    if os.geteuid() != 0:
        return None
    return ensure_build_account(EnvironmentManager().build_user, EnvironmentManager().log)


def given(path, account):
    """*path* made (if missing) and given to *account*, as the engine does with a version and its cache."""
    os.makedirs(path, exist_ok=True)
    if account is not None:
        os.chown(path, account.uid, account.gid)
    return path


async def timed_build(installer, python, target, requirements):
    account = installer.account
    with open(target + ".log", "w") as log:
        tic = time.perf_counter()
        given(target, account)
        frozen = await build_venv(installer, python, target, requirements, log)
        take(target, owner=(0, 0) if account else None)
        seconds = time.perf_counter() - tic
    return seconds, frozen


def make(kind, cache, wheelhouse=None, account=None):
    cls = INSTALLERS[kind]
    extra = dict(ISOLATED)
    if wheelhouse:
        extra.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=wheelhouse)
    return cls(given(cache, account), extra_env=extra, account=account)


async def fill_wheelhouse(folder, requirements):
    """Download the wheels of *requirements* into *folder* (not timed)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", "download", "--quiet", "--only-binary", ":all:", "-d", folder, "-r", requirements,
        env={**os.environ, **ISOLATED},
    )
    if await proc.wait() != 0:
        raise SystemExit("pip download failed")


async def bench(tmp, rounds):
    python = base_python()
    account = build_account()
    req1 = write_requirements(tmp, "v1.txt", PACKAGES)
    req2 = write_requirements(tmp, "v2.txt", SECOND)
    times = {(k, c): [] for k in ("uv", "pip") for c in ("cold", "warm")}
    disk = {}
    wheelhouse = os.path.join(tmp, "wheelhouse")
    await fill_wheelhouse(wheelhouse, req1)
    await fill_wheelhouse(wheelhouse, req2)
    builder = f"as {account.name}" if account else "as this user"
    print(f"a. build a {len(PACKAGES)}-package environment on {python} {builder} (median of {rounds}; cold = empty cache)")
    for r in range(rounds):
        for kind in ("pip", "uv"):  # interleaved, baseline first each round
            cache = os.path.join(tmp, f"cache-{kind}-{r}")
            cold_target = os.path.join(tmp, f"{kind}-{r}-cold")
            warm_target = os.path.join(tmp, f"{kind}-{r}-warm")
            installer = make(kind, cache, account=account)
            seconds, frozen = await timed_build(installer, python, cold_target, req1)
            times[kind, "cold"].append(seconds)
            if kind == "pip":
                installer = make(kind, cache, wheelhouse, account)
            seconds, _ = await timed_build(installer, python, warm_target, req1)
            times[kind, "warm"].append(seconds)
            if r == 0:
                missing = {p.lower() for p in PACKAGES} - {f.lower() for f in frozen}
                if missing:
                    raise SystemExit(f"{kind} did not install {sorted(missing)}: {frozen}")
                # disk: the cache and the first environment, then what a second version adds
                seen = set()
                cache_bytes = disk_bytes(cache, seen=seen)
                first = disk_bytes(cold_target, seen=seen)
                second_target = os.path.join(tmp, f"{kind}-second")
                await timed_build(installer, python, second_target, req2)
                added = disk_bytes(second_target, seen=seen)
                apparent = sum(
                    os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(cold_target) for f in fs
                )
                disk[kind] = (cache_bytes, first, added, apparent)
            for path in (cold_target, warm_target, cache):
                shutil.rmtree(path, ignore_errors=True)
    medians = {key: statistics.median(v) for key, v in times.items()}
    print(f"   {'':28} {'uv':>9} {'venv+pip':>9} {'ratio':>7}")
    for cache in ("cold", "warm"):
        uv, pip = medians["uv", cache], medians["pip", cache]
        print(f"   {cache + ' cache, seconds':28} {uv:9.2f} {pip:9.2f} {uv / pip:7.2f}")
    print("\nb. disk (each inode counted once: hard links from the cache take no more space)")
    print(f"   {'':34} {'uv':>10} {'venv+pip':>10}")
    rows = [
        ("cache after one build", 0),
        ("first environment (beyond cache)", 1),
        ("second version adds", 2),
        ("environment, apparent size", 3),
    ]
    for label, i in rows:
        print(f"   {label:34} {mib(disk['uv'][i]):>10} {mib(disk['pip'][i]):>10}")
    return medians, disk


def first_result_seconds(kernel_name, kernel_dirs, ipc_prefix):
    """Seconds from starting *kernel_name* to the reply of ``1+1``; the kernel is shut down after.
    Over ipc sockets, as ClassroomSpawner's servers run their kernels."""
    km = KernelManager(
        kernel_name=kernel_name, kernel_spec_manager=KernelSpecManager(kernel_dirs=kernel_dirs), transport="ipc", ip=ipc_prefix
    )
    tic = time.perf_counter()
    km.start_kernel(stderr=subprocess.DEVNULL)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        reply = kc.execute_interactive("1+1", timeout=60, output_hook=lambda msg: None)
        seconds = time.perf_counter() - tic
        if reply["content"]["status"] != "ok":
            raise SystemExit(f"{kernel_name}: {reply['content']}")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return seconds


async def bench_kernels(tmp, rounds):
    manager = EnvironmentManager(data_dir=tmp)
    tic = time.perf_counter()
    await manager.create(EnvironmentSpec("bench", PACKAGES, audience=["everyone"]))
    build = time.perf_counter() - tic
    own, total = manager.disk_bytes("bench")
    print(
        f"\nc. kernel start to first result (median of {rounds}); the course environment "
        f"(10 packages + ipykernel) built in {build:.1f} s, {mib(total)} ({mib(own)} beyond the cache)"
    )
    dirs = [os.path.join(manager.layout.kernels_dir("bench"), "kernels")]
    times = {"env-bench": [], "python3": []}
    for _ in range(rounds):
        for name in ("python3", "env-bench"):
            times[name].append(await asyncio.to_thread(first_result_seconds, name, dirs, os.path.join(tmp, "kernel")))
    course, default = statistics.median(times["env-bench"]), statistics.median(times["python3"])
    print(f"   {'':28} {'course':>9} {'default':>9} {'ratio':>7}")
    print(f"   {'seconds':28} {course:9.2f} {default:9.2f} {course / default:7.2f}")
    return course / default


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round instead of --rounds")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (each: cold + warm build with each installer)")
    parser.add_argument("--kernel-rounds", type=int, default=10, help="kernel starts of each kind")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else max(1, args.rounds)
    kernel_rounds = 3 if args.quick else max(1, args.kernel_rounds)
    tmp = tempfile.mkdtemp(prefix="bench-env-")
    os.chmod(tmp, 0o755)  # the build account reaches its targets and caches in it
    try:
        medians, disk = asyncio.run(bench(tmp, rounds))
        kernel_ratio = asyncio.run(bench_kernels(os.path.join(tmp, "data"), kernel_rounds))
    finally:
        for top, _, _ in os.walk(tmp):  # the engine's versions are read-only
            os.chmod(top, 0o755)
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = medians["uv", "warm"] / medians["pip", "warm"]
    print()
    print(
        f"{'PASS' if ratio <= TARGET_BUILD_RATIO else 'MISS'}  build, warm cache: uv {ratio:.2f}x venv+pip "
        f"(target <= {TARGET_BUILD_RATIO}x)"
    )
    print(
        f"{'PASS' if kernel_ratio <= TARGET_KERNEL_RATIO else 'MISS'}  kernel start in a course environment: "
        f"{kernel_ratio:.2f}x the default (target <= {TARGET_KERNEL_RATIO}x)"
    )
    cheaper = disk["uv"][2] < disk["pip"][2]
    print(
        f"{'PASS' if cheaper else 'MISS'}  an extra version: uv adds {mib(disk['uv'][2])}, "
        f"venv+pip {mib(disk['pip'][2])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
