"""One memory budget for all servers, and whom memory pressure stops first.

The choice order, the setting and the notice are plain logic (fast tier);
the budget itself is tested on this machine's real cgroup v1 hierarchy, with
a real hub, proxy, servers and kernels.
"""

import asyncio
import logging
import os
import secrets
import sys
import time
from types import SimpleNamespace

import psutil
import pytest
from jupyterhub.tests.utils import public_url
from traitlets import TraitError

from classroomhub.spawner import ClassroomSpawner, detect
from classroomhub.spawner.enforcement import EnforcementUnavailable
from classroomhub.spawner.host import Host
from classroomhub.spawner.notices import oom_notice, pressure_notice
from classroomhub.spawner.pressure import stop_order
from classroomhub.spawner.watchdog import PsutilWatchdog

from conftest import login
from fixtures.servers import (
    group_pids,
    kill_a_kernel_for_memory,
    remove_spawned,
    server_api,
    start,
    stop,
)

MiB = 1024**2
GiB = 1024**3
TAG = "mb" + secrets.token_hex(2)
HOG, IDLER = f"{TAG}-hog", f"{TAG}-idl"
CGROUP_PARENT = f"mbt-{TAG}"
BUDGET = 320 * MiB
MEM_LIMIT = 768 * MiB  # each server's own limit is above the whole budget

ROSTER = f"""\
users:
  admin: {{tier: root}}
  {HOG}: {{}}
  {IDLER}: {{}}
"""


def HUB_CONFIG(c):
    c.JupyterHub.spawner_class = ClassroomSpawner
    c.Spawner.cmd = [os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")]
    c.Spawner.start_timeout = 60
    c.Spawner.http_timeout = 60
    c.ClassroomSpawner.cgroup_parent = CGROUP_PARENT
    c.ClassroomSpawner.enforcement = "cgroup-v1"
    c.ClassroomSpawner.servers_memory_budget = BUDGET
    c.ClassroomPasswordAuthenticator.everyone_scopes = ["access:services!service=classroom"]
    c.ClassroomSpawner.create_system_users = True
    c.ClassroomSpawner.monitor_interval = 0.5
    c.ClassroomSpawner.memory_reserve = 0
    c.ClassroomSpawner.tier_settings = {"student": {"mem_limit": MEM_LIMIT, "idle_timeout": 0, "max_age": 0}}


# -- the order under pressure (no root) -------------------------------------------------


def server(name, idle, mem_mib, limit_mib=1024, active=True, pending=None, min_idle=300):
    return SimpleNamespace(
        name=name,
        active=active,
        pending=pending,
        pressure_min_idle=min_idle,
        idle_seconds=lambda now: idle,
        mem_limit=limit_mib * MiB,
        usage={"mem_bytes": mem_mib * MiB},
    )


def test_idle_servers_over_their_share_go_first_then_the_idlest():
    # 4 GiB among four 1 GiB servers: a share of 1 GiB each
    servers = [
        server("idle-small", 5000, 200),
        server("idle-big", 600, 1500),
        server("idle-bigger", 400, 1900),
        server("busy-hog", 0, 3000),  # in use: never chosen, however much it uses
    ]
    order = stop_order(servers, now=0, capacity=4 * GiB)
    assert [s.name for s in order] == ["idle-bigger", "idle-big", "idle-small"]


def test_shares_follow_the_tiers_limits():
    # 3 GiB: the 2 GiB-limit server's share is 2 GiB, the 1 GiB one's 1 GiB
    servers = [server("power", 900, 1500, limit_mib=2048), server("student", 400, 1200)]
    assert [s.name for s in stop_order(servers, now=0, capacity=3 * GiB)] == ["student", "power"]


def test_without_a_capacity_the_idlest_go_first():
    servers = [server("a", 400, 3000), server("b", 900, 10), server("recent", 10, 10)]
    assert [s.name for s in stop_order(servers, now=0, capacity=0)] == ["b", "a"]


def test_a_server_in_use_is_never_chosen():
    servers = [server("active", 10, 5000), server("starting", 9000, 5000, pending="spawn")]
    assert stop_order(servers, now=0, capacity=GiB) == []


# -- the setting (no root) --------------------------------------------------------------


def test_the_budget_takes_units_and_refuses_nonsense():
    spawner = ClassroomSpawner()
    assert spawner.servers_memory_budget == 0
    spawner.servers_memory_budget = "8G"
    assert spawner.servers_memory_budget == 8 * GiB
    with pytest.raises(TraitError, match=">= 0"):
        spawner.servers_memory_budget = -1
    with pytest.raises(TraitError, match="between 0 and 1"):
        spawner.servers_memory_high_fraction = 1.5
    with pytest.raises(TraitError, match=">= 0"):
        spawner.pressure_warning_seconds = -5


def test_the_watchdog_cannot_hold_a_budget_and_says_so_once(caplog):
    host = Host()
    watchdog = PsutilWatchdog()
    log = logging.getLogger("test_budget")
    with caplog.at_level(logging.WARNING, logger="test_budget"):
        host.apply_budget(watchdog, 8 * GiB, 0.95, log)
        host.apply_budget(watchdog, 8 * GiB, 0.95, log)
    said = [r.getMessage() for r in caplog.records if "common memory budget" in r.getMessage()]
    assert len(said) == 1 and "psutil" in said[0] and "8.0 GiB" in said[0]


def test_the_warning_names_the_server_and_the_time():
    when = 1_700_000_000  # 22:13 UTC
    spawners = {
        "": SimpleNamespace(name="", state={"pressure_warning": [when - 120, when]}, server=object()),
        "gone": SimpleNamespace(name="gone", state={"pressure_warning": [when - 120, when]}, server=None),
        "fine": SimpleNamespace(name="fine", state={}, server=object()),
    }
    notice = pressure_notice(SimpleNamespace(orm_user=SimpleNamespace(orm_spawners=spawners)))
    assert "your server has been idle and will be stopped at 22:13 UTC" in notice
    assert "gone" not in notice and "fine" not in notice  # stopped already / not warned


# -- the budget on real cgroups (root) --------------------------------------------------


def _real_v1(parent):
    try:
        backend, _ = detect("cgroup-v1", cgroup_parent=parent)
    except EnforcementUnavailable as e:
        pytest.skip(f"needs writable cgroup v1 controllers (root): {e}")
    return backend


def read(path):
    with open(path) as f:
        return f.read().strip()


@pytest.mark.root("writes cgroup limits")
def test_the_budget_is_set_once_changed_with_the_config_and_again_after_a_restart(monkeypatch):
    backend = _real_v1(f"mbt-{TAG}-host")
    limit = os.path.join(backend.bases["memory"], "memory.limit_in_bytes")
    log = logging.getLogger("test_budget")
    writes = []
    real_set = backend.set_budget
    monkeypatch.setattr(backend, "set_budget", lambda *a: writes.append(a) or real_set(*a))
    try:
        host = Host()
        host.apply_budget(backend, 256 * MiB, 0.95, log)
        assert read(limit) == str(256 * MiB)
        assert read(os.path.join(backend.bases["memory"], "memory.use_hierarchy")) == "1"
        host.apply_budget(backend, 256 * MiB, 0.95, log)  # every check asks: one write
        assert len(writes) == 1
        host.apply_budget(backend, 512 * MiB, 0.95, log)  # the config changed
        assert read(limit) == str(512 * MiB)
        # someone (an old hub) changed it; a restarted hub sets its own again
        real_set(64 * MiB)
        Host().apply_budget(backend, 512 * MiB, 0.95, log)
        assert read(limit) == str(512 * MiB)
        Host().apply_budget(backend, 0, 0.95, log)  # 0: no common limit
        assert int(read(limit)) >= 1 << 62
        assert backend.budget_usage()[1] == 0
    finally:
        backend.remove_parent()


@pytest.fixture(scope="module")
def remove_test_users_and_cgroups():
    yield
    remove_spawned((HOG, IDLER), CGROUP_PARENT)


def _cgroup_procs_below(folder):
    pids = set()
    for dirpath, _, filenames in os.walk(folder):
        if "cgroup.procs" in filenames:
            pids.update(int(p) for p in read(os.path.join(dirpath, "cgroup.procs")).split())
    return pids


@pytest.mark.root("creates system users and cgroups")
async def test_a_kernel_past_the_budget_is_killed_not_the_hub(app, synced, remove_test_users_and_cgroups):
    spawner = await start(app, HOG)
    try:
        parent = spawner.backend.bases["memory"]
        assert read(os.path.join(parent, "memory.limit_in_bytes")) == str(BUDGET)
        assert read(os.path.join(parent, "memory.use_hierarchy")) == "1"
        assert read(os.path.join(parent, spawner.group_key, "memory.limit_in_bytes")) == str(MEM_LIMIT)
        # the hub (this process), the proxy and their children stay outside
        inside = _cgroup_procs_below(parent)
        assert spawner.pid in inside
        proxy = app.proxy.proxy_process.pid
        for pid in (os.getpid(), proxy, *(c.pid for c in psutil.Process().children(recursive=True))):
            if pid not in group_pids(spawner) and psutil.Process(pid).ppid() != spawner.pid:
                assert pid not in inside, f"pid {pid} ({psutil.Process(pid).name()}) is inside the budget"
        # a kernel allowed 768 MiB by its own group touches 448 MiB: the budget stops it
        await kill_a_kernel_for_memory(app, HOG, spawner, 448 * MiB)
        await spawner.check()
        assert spawner.oom_kills >= 1
        # told that the class's budget, not their own limit, was reached
        notice = oom_notice(app.users[HOG])
        assert "reached the memory budget of 320 MiB" in notice and "own limit is 768 MiB" in notice
        # the server survived and answers through the hub and the proxy
        r = await server_api(app, HOG, "status")
        assert r.status_code == 200, r.text
        assert app.proxy.proxy_process.poll() is None
    finally:
        await stop(app, HOG)


@pytest.mark.root("creates system users and cgroups")
async def test_an_idle_server_is_warned_then_stopped_under_budget_pressure(
    app, synced, remove_test_users_and_cgroups, tmp_path
):
    spawner = await start(app, IDLER)
    try:
        # a reserve larger than what is left of the budget: pressure from the budget alone
        spawner.memory_reserve = BUDGET
        spawner.pressure_min_idle = 0
        spawner.pressure_warning_seconds = 3
        deadline = time.monotonic() + 20
        while not spawner.pressure_warning:
            assert time.monotonic() < deadline, "never warned"
            await asyncio.sleep(0.1)
        assert spawner.active  # warned, not stopped yet
        warned_at = time.monotonic()
        session, _ = await login(app, IDLER)
        r = await session.get(public_url(app) + "hub/home")
        assert "will be stopped at" in r.text
        while spawner.active:
            assert time.monotonic() < deadline, "not stopped after the warning"
            await asyncio.sleep(0.1)
        assert time.monotonic() - warned_at >= 2, "stopped before the grace period"
    finally:
        if spawner.active:
            await stop(app, IDLER)
