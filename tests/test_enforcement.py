"""The enforcement backends and culling decisions below the hub.

cgroup v2 is not mounted on this machine, so its logic runs on a directory
tree shaped like cgroupfs with a small fake kernel: writes to cgroup.procs
move pids, cgroup.kill kills them (real processes), and enabling controllers
in a cgroup that still has processes fails with EBUSY, as on Linux. cgroup v1
and the psutil watchdog run against the real kernel here.
"""

import asyncio
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
import pytest

from classroomhub.spawner import cgroupfs, cgroups
from classroomhub.spawner.culling import IdleTracker, idlest_first, mem_available
from classroomhub.spawner.enforcement import (
    KEY_ENV,
    Enforcement,
    EnforcementUnavailable,
    Limits,
    group_key,
)
from classroomhub.spawner.detection import detect
from classroomhub.spawner.host import Host
from classroomhub.spawner.watchdog import PsutilWatchdog
from classroomhub.units import human_bytes

GiB = 1024**3
MiB = 1024**2
V2_CONTROLLERS = "cpuset cpu io memory pids"


# -- a cgroupfs-shaped tree with a fake kernel ----------------------------------------


class FakeKernel:
    """Interface files and the cgroup v2 rules the backend relies on."""

    def __init__(self, root, children):
        self.root = str(root)
        self.children = children  # pid -> Popen of real processes we may "kill"

    def mkdir(self, path, controllers=V2_CONTROLLERS, procs=()):
        """What the kernel does on mkdir in cgroupfs: add the interface files
        of the controllers the parent enables for its children."""
        os.mkdir(path)
        files = {
            "cgroup.controllers": controllers,
            "cgroup.subtree_control": "",
            "cgroup.procs": "".join(f"{p}\n" for p in procs),
            "cgroup.kill": "",
        }
        if "memory" in controllers.split():
            files.update({"memory.max": "max", "memory.high": "max", "memory.swap.max": "max", "memory.current": "0"})
        if "cpu" in controllers.split():
            files.update({"cpu.max": "max 100000", "cpu.stat": "usage_usec 0\n"})
        if "pids" in controllers.split():
            files.update({"pids.max": "max", "pids.current": "0"})
        for name, text in files.items():
            with open(os.path.join(path, name), "w") as f:
                f.write(text)

    def make_dirs(self, path):
        """mkdir -p, each level inheriting its parent's subtree_control."""
        if os.path.isdir(path):
            return
        parent = os.path.dirname(path)
        self.make_dirs(parent)
        enabled = read(os.path.join(parent, "cgroup.subtree_control")).replace("+", "")
        self.mkdir(path, controllers=enabled)

    def procs(self, folder):
        return cgroupfs.read_pids(os.path.join(folder, "cgroup.procs"))

    def write_text(self, path, value):
        folder, name = os.path.split(path)
        if name == "cgroup.procs":
            pid = int(value)
            for dirpath, _, filenames in os.walk(self.root):
                if "cgroup.procs" in filenames and pid in self.procs(dirpath):
                    self._set_procs(dirpath, [p for p in self.procs(dirpath) if p != pid])
            self._set_procs(folder, self.procs(folder) + [pid])
            return
        if name == "cgroup.subtree_control" and self.procs(folder):
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        if name == "cgroup.kill":
            for pid in self.procs(folder):
                self.children[pid].kill()
                self.children[pid].wait()
            self._set_procs(folder, [])
            return
        if not os.path.exists(path):  # a controller that is not enabled here
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        with open(path, "w") as f:
            f.write(str(value))

    def _set_procs(self, folder, pids):
        with open(os.path.join(folder, "cgroup.procs"), "w") as f:
            f.write("".join(f"{p}\n" for p in pids))


@pytest.fixture
def children():
    procs = {}
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def sleeper(children):
    proc = subprocess.Popen(["sleep", "600"])
    children[proc.pid] = proc
    return proc


@pytest.fixture
def v2(tmp_path, monkeypatch, children):
    """A CgroupV2 backend on a fake tree; the hub sits in /system.slice/hub.service."""
    root = tmp_path / "cgroup"
    kernel = FakeKernel(root, children)
    kernel.mkdir(str(root))
    kernel.mkdir(str(root / "system.slice"))
    own = root / "system.slice" / "hub.service"
    kernel.mkdir(str(own), procs=[os.getpid()])
    monkeypatch.setattr(cgroups, "write_text", kernel.write_text)
    backend = cgroups.CgroupV2(str(root), "/system.slice/hub.service", "classroomhub")
    backend.make_dir = kernel.make_dirs
    backend.remove_dir = shutil.rmtree  # a real rmdir removes the interface files too
    return SimpleNamespace(backend=backend, kernel=kernel, own=str(own), root=str(root))


def read(path):
    with open(path) as f:
        return f.read().strip()


# -- cgroup v2 ------------------------------------------------------------------------


def test_v2_writes_every_limit(v2):
    v2.backend.create("alice", Limits(mem_bytes=GiB, cpu=1.5, pids=512, mem_high_fraction=0.9))
    folder = os.path.join(v2.own, "classroomhub", "alice")
    assert read(f"{folder}/memory.max") == str(GiB)
    assert read(f"{folder}/memory.high") == str(int(GiB * 0.9))
    assert read(f"{folder}/memory.swap.max") == "0"
    assert read(f"{folder}/cpu.max") == "150000 100000"
    assert read(f"{folder}/pids.max") == "512"


def test_v2_unlimited_and_swap_allowed(v2):
    v2.backend.create("bob", Limits())
    folder = os.path.join(v2.own, "classroomhub", "bob")
    for name in ("memory.max", "memory.high", "memory.swap.max", "pids.max"):
        assert read(f"{folder}/{name}") == "max", name
    assert read(f"{folder}/cpu.max") == "max 100000"
    v2.backend.create("bob", Limits(mem_bytes=GiB, swap=True))
    assert read(f"{folder}/memory.swap.max") == "max"
    assert read(f"{folder}/memory.high") == "max"  # no fraction: no throttling below the limit


def test_v2_budget_on_the_folder_holding_the_servers_not_the_hub(v2):
    assert v2.backend.set_budget(8 * GiB, 0.95)
    parent = os.path.join(v2.own, "classroomhub")
    assert read(f"{parent}/memory.max") == str(8 * GiB)
    assert read(f"{parent}/memory.high") == str(int(8 * GiB * 0.95))
    assert "memory" in read(f"{parent}/cgroup.subtree_control")  # the servers' groups are charged to it
    assert read(f"{v2.own}/memory.max") == "max"  # the hub's own cgroup is left alone
    with open(f"{parent}/memory.current", "w") as f:
        f.write(str(3 * GiB))
    with open(f"{parent}/memory.stat", "w") as f:
        f.write(f"anon {2 * GiB}\ninactive_file {GiB}\n")
    assert v2.backend.budget_usage() == (2 * GiB, 8 * GiB)  # reclaimable cache is not pressure
    v2.backend.set_budget(0, 0.95)
    assert read(f"{parent}/memory.max") == "max" and read(f"{parent}/memory.high") == "max"
    assert v2.backend.budget_usage()[1] == 0


def test_v2_moves_the_hub_into_a_leaf_to_delegate_controllers(v2):
    """v2 refuses controllers below a cgroup with processes of its own."""
    v2.backend.create("alice", Limits(mem_bytes=GiB))
    assert v2.kernel.procs(v2.own) == []
    assert v2.kernel.procs(os.path.join(v2.own, "hub")) == [os.getpid()]
    assert read(f"{v2.own}/cgroup.subtree_control") == "+memory +cpu +pids"
    assert read(f"{v2.own}/classroomhub/cgroup.subtree_control") == "+memory +cpu +pids"
    assert read(f"{v2.own}/classroomhub/alice/memory.max") == str(GiB)


def test_v2_enables_only_controllers_that_exist(v2):
    with open(f"{v2.own}/cgroup.controllers", "w") as f:
        f.write("memory cpu")
    v2.backend.create("alice", Limits(mem_bytes=GiB, pids=100))
    assert read(f"{v2.own}/cgroup.subtree_control") == "+memory +cpu"
    folder = f"{v2.own}/classroomhub/alice"
    assert read(f"{folder}/memory.max") == str(GiB)
    assert not os.path.exists(f"{folder}/pids.max")  # skipped, not an error


def test_v2_attach_then_destroy_kills_everything_and_removes_the_group(v2, children):
    v2.backend.create("alice", Limits(mem_bytes=GiB))
    folder = os.path.join(v2.own, "classroomhub", "alice")
    procs = [sleeper(children) for _ in range(3)]
    for proc in procs:
        v2.kernel.write_text(f"{folder}/cgroup.procs", proc.pid)
    assert v2.backend.pids("alice") == sorted(p.pid for p in procs)
    assert v2.backend.keys() == ["alice"]
    asyncio.run(v2.backend.destroy("alice"))
    assert all(proc.poll() == -signal.SIGKILL for proc in procs)
    assert not os.path.exists(folder)
    assert v2.backend.keys() == []


def test_v2_attach_fn_writes_the_callers_pid(v2):
    v2.backend.create("alice", Limits())
    attach = v2.backend.attach_fn("alice")
    attach()  # in the spawner it runs in the forked child; here in the test process
    assert os.getpid() in v2.backend.pids("alice")


def test_destroy_retries_while_the_kernel_says_busy(v2):
    v2.backend.create("alice", Limits())
    attempts = []

    def busy_twice(path):
        attempts.append(path)
        if len(attempts) < 3:
            raise OSError(errno.EBUSY, "Device or resource busy")
        shutil.rmtree(path)

    v2.backend.remove_dir = busy_twice
    asyncio.run(v2.backend.destroy("alice"))
    assert len(attempts) == 3
    assert v2.backend.keys() == []


def test_v2_usage_reads_the_files(v2):
    v2.backend.create("alice", Limits())
    folder = os.path.join(v2.own, "classroomhub", "alice")
    assert v2.backend.usage("alice").to_dict() == {
        "mem_bytes": 0, "mem_peak_bytes": 0, "cpu_seconds": 0.0, "oom_kills": 0, "procs": 0
    }
    for name, text in {
        "memory.current": "104857600",
        "memory.peak": "209715200",
        "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        "memory.events": "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n",
        "pids.current": "7",
    }.items():
        with open(f"{folder}/{name}", "w") as f:
            f.write(text)
    usage = v2.backend.usage("alice")
    assert usage.to_dict() == {
        "mem_bytes": 100 * MiB,
        "mem_peak_bytes": 200 * MiB,
        "cpu_seconds": 2.5,
        "oom_kills": 2,
        "procs": 7,
    }
    # the files stay open between samples: a new value is read from the same fd
    with open(f"{folder}/memory.current", "w") as f:
        f.write("1048576")
    assert v2.backend.usage("alice").mem_bytes == MiB
    # Linux < 5.19 has no memory.peak: the current value stands in
    v2.backend.create("bob", Limits())
    with open(os.path.join(v2.own, "classroomhub", "bob", "memory.current"), "w") as f:
        f.write("4096")
    assert v2.backend.usage("bob").mem_peak_bytes == 4096
    # past its fd budget it reads without keeping files open
    v2.backend.files.forget(folder)
    v2.backend.files.limit = len(v2.backend.files._fds)
    with open(f"{folder}/pids.current", "w") as f:
        f.write("9")
    assert v2.backend.usage("alice").procs == 9
    assert not [p for p in v2.backend.files._fds if "/alice/" in p]
    v2.backend.files.limit = 4096
    # removing a group closes its files
    asyncio.run(v2.backend.destroy("alice"))
    assert not [p for p in v2.backend.files._fds if "/alice/" in p]


def test_v2_detection_from_mountinfo(tmp_path, monkeypatch):
    root = tmp_path / "unified"
    kernel = FakeKernel(root, {})
    kernel.mkdir(str(root))
    kernel.mkdir(str(root / "user.slice"))
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        f"30 1 0:26 / {root} rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    own = tmp_path / "cgroup"
    own.write_text("0::/user.slice\n")
    monkeypatch.setattr(cgroups, "mountinfo", lambda: cgroupfs.mountinfo(str(mountinfo)))
    monkeypatch.setattr(cgroups, "own_cgroups", lambda: cgroupfs.own_cgroups(str(own)))
    backend, skipped = detect("auto", "course-hub")
    assert backend.name == "cgroup-v2"
    assert skipped == []
    assert backend.describe() == f"cgroup v2 under {root}/user.slice/course-hub (memory.max, cpu.max, pids.max)"

    # the root has them, but they were not delegated down to the hub's cgroup
    (root / "user.slice" / "cgroup.controllers").write_text("cpuset io pids")
    with pytest.raises(EnforcementUnavailable, match="user.slice lacks the memory and cpu controller"):
        cgroups.CgroupV2.from_host()


def test_cgroup_parent_relative_or_absolute():
    assert cgroupfs.group_path("/sys/fs/cgroup", "/system.slice/jupyterhub.service", "classroomhub") == (
        "/sys/fs/cgroup/system.slice/jupyterhub.service/classroomhub"
    )
    assert cgroupfs.group_path("/sys/fs/cgroup", "/system.slice/jupyterhub.service", "/hubs/a") == "/sys/fs/cgroup/hubs/a"


# -- cgroup v1 ------------------------------------------------------------------------


def test_v1_on_a_tree_with_memsw_and_comounted_cpu(tmp_path):
    mem, cpu = tmp_path / "memory", tmp_path / "cpu,cpuacct"
    backend = cgroups.CgroupV1(
        {"memory": (str(mem), "/"), "cpu": (str(cpu), "/"), "cpuacct": (str(cpu), "/")}, "hub"
    )
    assert backend.group_dirs("alice") == [f"{cpu}/hub/alice", f"{mem}/hub/alice"]
    os.makedirs(mem / "hub" / "alice")
    (mem / "hub" / "alice" / "memory.memsw.limit_in_bytes").write_text("9223372036854771712")
    backend.create("alice", Limits(mem_bytes=GiB, cpu=0.5))
    assert read(mem / "hub/alice/memory.limit_in_bytes") == str(GiB)
    assert read(mem / "hub/alice/memory.memsw.limit_in_bytes") == str(GiB)  # no swap beyond the limit
    assert read(cpu / "hub/alice/cpu.cfs_quota_us") == "50000"
    assert read(cpu / "hub/alice/cpu.cfs_period_us") == "100000"
    backend.create("alice", Limits(mem_bytes=GiB, swap=True))
    assert read(mem / "hub/alice/memory.memsw.limit_in_bytes") == "-1"
    assert read(cpu / "hub/alice/cpu.cfs_quota_us") == "-1"

    (mem / "hub/alice/memory.usage_in_bytes").write_text("1048576\n")
    (mem / "hub/alice/memory.max_usage_in_bytes").write_text("2097152\n")
    (mem / "hub/alice/memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    (cpu / "hub/alice/cpuacct.usage").write_text("1500000000\n")
    usage = backend.usage("alice")
    assert (usage.mem_bytes, usage.mem_peak_bytes, usage.cpu_seconds, usage.oom_kills) == (MiB, 2 * MiB, 1.5, 3)


def _real_v1(parent):
    try:
        backend, _ = detect("cgroup-v1", cgroup_parent=parent)
    except EnforcementUnavailable as e:
        pytest.skip(f"needs writable cgroup v1 controllers (root): {e}")
    return backend


@pytest.mark.e2e  # real cgroups
def test_v1_real_group_holds_a_process_and_is_removed(children):
    parent = f"cht-{os.getpid()}"
    backend = _real_v1(parent)
    try:
        backend.create("alice", Limits(mem_bytes=64 * MiB, cpu=0.25, pids=16))
        assert read(f"{backend.bases['memory']}/alice/memory.limit_in_bytes") == str(64 * MiB)
        assert read(f"{backend.bases['cpu']}/alice/cpu.cfs_quota_us") == "25000"
        if "pids" in backend.bases:
            assert read(f"{backend.bases['pids']}/alice/pids.max") == "16"
        proc = subprocess.Popen(["sleep", "600"], preexec_fn=backend.attach_fn("alice"))
        children[proc.pid] = proc
        assert backend.pids("alice") == [proc.pid]
        usage = backend.usage("alice")
        assert usage.mem_bytes > 0
        assert usage.procs == (1 if "pids" in backend.bases else 0)
        assert backend.keys() == ["alice"]
        asyncio.run(backend.destroy("alice"))
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert backend.keys() == []
        assert not any(os.path.exists(d) for d in backend.group_dirs("alice"))
    finally:
        for key in backend.keys():
            asyncio.run(backend.destroy(key))
        for folder in set(backend.bases.values()):
            os.rmdir(folder)


@pytest.mark.e2e  # real cgroups
def test_v1_memory_limit_kills_only_inside_the_group(children):
    parent = f"cht-{os.getpid()}-oom"
    backend = _real_v1(parent)
    try:
        backend.create("hog", Limits(mem_bytes=32 * MiB))
        hog = subprocess.Popen(
            [sys.executable, "-c", "b = bytearray(128 * 1024 * 1024); import time; time.sleep(60)"],
            preexec_fn=backend.attach_fn("hog"),
        )
        children[hog.pid] = hog
        assert hog.wait(timeout=30) == -signal.SIGKILL
        assert backend.usage("hog").oom_kills >= 1
    finally:
        for key in backend.keys():
            asyncio.run(backend.destroy(key))
        for folder in set(backend.bases.values()):
            os.rmdir(folder)


# -- psutil watchdog ------------------------------------------------------------------

TREE = """
import os, subprocess, sys, time
size = int(sys.argv[1])
kids = [subprocess.Popen([sys.executable, "-c",
         f"b = bytearray({n} * 1024 * 1024); import time; time.sleep(600)"]) for n in (size, 8)]
if os.fork() == 0:          # a double-forked daemon: leaves the tree, keeps the env
    if os.fork() == 0:
        os.setsid(); time.sleep(600)
    os._exit(0)
print("ready", flush=True)
time.sleep(600)
"""


def start_tree(children, key, big_mib):
    env = dict(os.environ, **{KEY_ENV: key})
    proc = subprocess.Popen([sys.executable, "-c", TREE, str(big_mib)], env=env, stdout=subprocess.PIPE, text=True)
    children[proc.pid] = proc
    assert proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 10
    while len(psutil.Process(proc.pid).children(recursive=True)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # let the children allocate (a fixed pause is too short on a busy machine)
    while max(p.memory_info().rss for p in psutil.Process(proc.pid).children()) < big_mib * MiB:
        assert time.monotonic() < deadline, f"no child of the tree allocated {big_mib} MiB"
        time.sleep(0.05)
    time.sleep(0.3)
    return proc


def test_watchdog_kills_the_largest_process_but_not_the_server(children):
    watchdog = PsutilWatchdog()
    watchdog.create("carol", Limits(mem_bytes=100 * MiB))
    server = start_tree(children, "carol", big_mib=150)
    watchdog.adopt("carol", server.pid)
    kids = {p.pid: p.memory_info().rss for p in psutil.Process(server.pid).children()}
    largest = max(kids, key=kids.get)
    assert watchdog.usage("carol").mem_bytes > 150 * MiB
    killed = watchdog.enforce("carol", server.pid)
    assert killed == [largest]
    assert server.poll() is None
    assert watchdog.usage("carol").oom_kills == 1
    assert watchdog.enforce("carol", server.pid) == []  # under the limit now
    asyncio.run(watchdog.destroy("carol"))


def test_watchdog_destroy_finds_double_forked_daemons_by_environment(children):
    watchdog = PsutilWatchdog()
    watchdog.create("dave", Limits())
    server = start_tree(children, "dave", big_mib=1)
    watchdog.adopt("dave", server.pid)
    marked = [
        p.pid for p in psutil.process_iter() if _environ(p).get(KEY_ENV) == "dave"
    ]
    assert len(marked) == 4  # server, two children, the daemon outside the tree
    asyncio.run(watchdog.destroy("dave"))
    time.sleep(0.1)
    assert not [pid for pid in marked if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert watchdog.keys() == []


def _environ(proc):
    try:
        return proc.environ()
    except (psutil.Error, OSError):
        return {}


def test_watchdog_renices_other_processes_when_cpu_is_limited(children):
    watchdog = PsutilWatchdog()
    watchdog.create("erin", Limits(cpu=1))
    server = start_tree(children, "erin", big_mib=1)
    watchdog.adopt("erin", server.pid)
    watchdog.enforce("erin", server.pid)
    assert psutil.Process(server.pid).nice() == 0
    assert all(p.nice() >= 10 for p in psutil.Process(server.pid).children())
    asyncio.run(watchdog.destroy("erin"))


# -- detection and naming -------------------------------------------------------------


def test_detection_order_and_reasons():
    backend, _ = detect("none")
    assert type(backend) is Enforcement and not backend.enforcing
    assert backend.describe() == "no limits are enforced"
    assert detect("psutil")[0].name == "psutil"
    try:
        cgroups.CgroupV2.from_host()
    except EnforcementUnavailable as e:
        why = str(e)  # this host (v1 with a hugetlb-only cgroup2): v2 is skipped, with the reason
        with pytest.raises(EnforcementUnavailable):
            detect("cgroup-v2")
        backend, skipped = detect("auto", f"cht-{os.getpid()}-detect")
        assert skipped[0] == f"cgroup-v2: {why}"
        if backend.name == "cgroup-v1":
            for folder in set(backend.bases.values()):
                os.rmdir(folder)


def test_one_host_per_process_and_a_fresh_one_for_tests(monkeypatch):
    monkeypatch.setattr(Host, "_current", None)  # this process's Host comes back afterwards
    host = Host.current()
    assert Host.current() is host
    backend = host.backend("none", "cht-host")
    assert host.backend("none", "cht-host") is backend  # detected once per process
    fresh = Host.fresh()
    assert Host.current() is fresh and fresh is not host
    assert fresh.backends == {} and not fresh.running and fresh.swept == set()


def test_a_backend_the_host_lacks_is_a_stand_in_saying_why(caplog):
    host = Host()
    try:
        cgroups.CgroupV2.from_host()
    except EnforcementUnavailable as e:
        why = str(e)
    else:
        pytest.skip("this host offers cgroup v2; the stand-in needs a backend it lacks")
    backend = host.backend("cgroup-v2", "cht-host")
    assert not backend.enforcing and backend.unavailable == f"cgroup-v2: {why}"
    assert host.backend("cgroup-v2", "cht-host") is backend
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"ClassroomSpawner: enforcement 'cgroup-v2' unavailable: cgroup-v2: {why}"
    ]


def test_the_host_keeps_background_tasks_until_done():
    host = Host()

    async def run():
        done = asyncio.Event()
        task = host.in_background(asyncio.ensure_future(done.wait()))
        assert host.tasks == {task}
        done.set()
        await task
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
        assert host.tasks == set()

    asyncio.run(run())


@pytest.mark.parametrize(
    "user, server, key",
    [
        ("alice", "", "alice"),
        ("jane-doe_2", "", "jane-doe_2"),
        ("alice", "analysis", "alice--analysis"),
        ("alice", "Analysis", "alice--Analysis"),
        ("a--b", "", "a%2d%2db"),
        ("a", "-b", "a--%2db"),
        ("a-", "b", "a%2d--b"),
        ("x/../y", "", "x%2f..%2fy"),
        ("..", "", "%2e%2e"),
        ("bob", "My Server", "bob--My%20Server"),
        ("zoë", "", "zo%c3%ab"),
    ],
)
def test_group_keys_are_safe(user, server, key):
    assert group_key(user, server) == key


def test_group_keys_never_collide():
    names = ["a", "b", "a-", "-b", "a--b", "a-b", "a%2db", "a%2d", "a_2d", "-", "--", "%", "A"]
    pairs = [(u, s) for u in names for s in ["", *names]]
    keys = [group_key(u, s) for u, s in pairs]
    assert len(set(keys)) == len(keys)


def test_human_bytes():
    assert human_bytes(None) == human_bytes(0) == "unlimited"
    assert human_bytes(256 * MiB) == "256 MiB"
    assert human_bytes(GiB + GiB // 2) == "1.5 GiB"


# -- culling decisions ----------------------------------------------------------------


def feed(tracker, start, seconds, cores, step=10, cpu=0.0):
    """Samples every *step* s for *seconds*, using *cores* on average."""
    for t in range(0, seconds + 1, step):
        tracker.add(start + t, cpu + cores * t, busy_fraction=0.05, keep_seconds=120)
    return cpu + cores * seconds


def test_idle_needs_no_activity_and_low_cpu():
    tracker = IdleTracker(started=1000)
    feed(tracker, 1000, 100, cores=0.001)
    assert tracker.cull_reason(1100, None, idle_timeout=100, max_age=0, cpu_fraction_limit=0.05).startswith("idle for 100 s")
    # hub activity 30 s ago keeps it
    assert tracker.cull_reason(1100, 1070, idle_timeout=100, max_age=0, cpu_fraction_limit=0.05) is None
    assert tracker.cull_reason(1100, None, idle_timeout=0, max_age=0, cpu_fraction_limit=0.05) is None


def test_silent_computation_is_not_idle_until_max_age():
    tracker = IdleTracker(started=1000)
    feed(tracker, 1000, 200, cores=0.9)
    assert tracker.cpu_fraction(1200, 100) == pytest.approx(0.9)
    assert tracker.cull_reason(1200, None, idle_timeout=100, max_age=0, cpu_fraction_limit=0.05) is None
    assert tracker.idle_seconds(1200, None) == 0
    assert "maximum age of 150 s" in tracker.cull_reason(1200, None, 100, 150, 0.05)


def test_no_decision_before_the_window_is_covered():
    tracker = IdleTracker(started=1000)
    feed(tracker, 1050, 50, cores=0.0)  # first sample 50 s after the start (hub restart)
    assert tracker.cpu_fraction(1100, 100) is None
    assert tracker.cull_reason(1100, None, 100, 0, 0.05) is None


def test_a_burst_then_quiet_counts_from_the_burst():
    tracker = IdleTracker(started=0)
    cpu = feed(tracker, 0, 60, cores=0.0)
    cpu = feed(tracker, 60, 10, cores=1.0, cpu=cpu)  # busy from 60 to 70
    feed(tracker, 70, 100, cores=0.0, cpu=cpu)
    assert tracker.idle_seconds(170, None) == 100
    assert tracker.samples[0][0] >= 170 - 120 - 10  # old samples are dropped


def test_mem_available(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:    2048 kB\n")
    assert mem_available(str(meminfo)) == 2048 * 1024
    meminfo.write_text("MemTotal: 1 kB\n")
    with pytest.raises(ValueError, match="no MemAvailable"):
        mem_available(str(meminfo))


def test_idlest_first_respects_each_servers_protection():
    def server(name, idle, min_idle=300, active=True, pending=None):
        return SimpleNamespace(
            name=name, active=active, pending=pending, pressure_min_idle=min_idle, idle_seconds=lambda now: idle
        )

    servers = [
        server("recent", 100),
        server("old", 5000),
        server("protected", 4000, min_idle=7200),
        server("middle", 1000),
        server("stopping", 9000, pending="stop"),
        server("unsampled", None),
    ]
    assert [s.name for s in idlest_first(servers, now=0)] == ["old", "middle"]
    assert [s.name for s in idlest_first(servers, now=0, min_idle=0)] == ["old", "protected", "middle", "recent"]
