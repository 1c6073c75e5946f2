"""ClassroomSpawner for real: a real hub and proxy, real jupyter servers as
real system users, real cgroup v1 limits (this machine), real kernels."""

import asyncio
import json
import os
import pwd
import secrets
import signal
import subprocess
import time

import psutil
import pytest
import requests
from jupyterhub import orm
from jupyterhub.tests.utils import api_request, public_url

from classroomhub import cli
from classroomhub.spawner import Host, Limits
from classroomhub.spawner import cgroups
from classroomhub.spawner.enforcement import EnforcementUnavailable
from classroomhub.spawner.notices import oom_notice

from conftest import login
from fixtures.servers import (
    admin_token,
    cgroup_v1_unavailable,
    classroom_spawner_config,
    group_dirs,
    group_pids,
    kernel_client,
    kernel_pids_of,
    kill_a_kernel_for_memory,
    remove_spawned,
    server_api,
    start,
    start_kernel,
    stop,
)

TAG = "cs" + secrets.token_hex(2)
STUDENT, STUDENT2, POWER, OTHER = f"{TAG}-stu", f"{TAG}-stu2", f"{TAG}-pow", f"{TAG}-oth"
NEWCOMER = f"{TAG}-new"
# issue #11's tests (hub restarts, notices, slow sync)
H2 = "h2" + secrets.token_hex(2)
RESTARTED, NOTICED, SLOW_SYNC = f"{H2}-rst", f"{H2}-oom", f"{H2}-sync"
PEOPLE = [STUDENT, STUDENT2, POWER, OTHER, NEWCOMER, RESTARTED, NOTICED, SLOW_SYNC]
CGROUP_PARENT = f"cst-{TAG}"
MEM_LIMIT = 256 * 1024**2

ROSTER = f"""\
users:
  admin: {{tier: root}}
  {POWER}: {{tier: power}}
  {OTHER}: {{}}
  {NEWCOMER}: {{}}
  {RESTARTED}: {{}}
  {NOTICED}: {{}}
  {SLOW_SYNC}: {{}}
courses:
  c1:
    instructors: [{POWER}]
    students: [{STUDENT}, {STUDENT2}]
"""


_skip = cgroup_v1_unavailable(CGROUP_PARENT)
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")


def HUB_CONFIG(c):
    classroom_spawner_config(c, CGROUP_PARENT)
    c.JupyterHub.allow_named_servers = True
    # the late-joiner sync asks the classroom service with a token for it alone
    c.ClassroomPasswordAuthenticator.everyone_scopes = ["access:services!service=classroom"]
    c.ClassroomSpawner.monitor_interval = 0.5
    c.ClassroomSpawner.tier_settings = {
        "student": {"mem_limit": MEM_LIMIT, "cpu_limit": 0.5, "idle_timeout": 0, "max_age": 0},
        "power": {"idle_timeout": 0, "max_age": 0},
    }


@pytest.fixture(scope="module", autouse=True)
def remove_test_users_and_cgroups():
    yield
    remove_spawned(PEOPLE, CGROUP_PARENT)


@pytest.fixture
def settings(app):
    """Per-test ClassroomSpawner overrides, reset afterwards."""

    def set_user(login_name, **values):
        # read by spawners created from now on (each test gets new ones)
        current = dict(app.config.ClassroomSpawner.get("user_settings", {}))
        current[login_name] = values
        app.config.ClassroomSpawner.user_settings = current

    yield set_user
    app.config.ClassroomSpawner.user_settings = {}


async def test_limits_are_in_the_cgroup_before_exec(app, synced):
    spawner = await start(app, STUDENT)
    try:
        assert spawner.backend.name == "cgroup-v1"
        folders = {d.split("/")[4]: d for d in group_dirs(spawner)}
        read = lambda controller, f: open(os.path.join(folders[controller], f)).read().strip()
        assert int(read("memory", "memory.limit_in_bytes")) == MEM_LIMIT
        if os.path.exists(os.path.join(folders["memory"], "memory.memsw.limit_in_bytes")):
            assert int(read("memory", "memory.memsw.limit_in_bytes")) == MEM_LIMIT
        assert read("cpu", "cpu.cfs_quota_us") == "50000"
        assert read("cpu", "cpu.cfs_period_us") == "100000"
        assert read("pids", "pids.max") == "4096"
        # the server itself is in every hierarchy's group: it joined before exec
        for folder in folders.values():
            assert str(spawner.pid) in open(os.path.join(folder, "cgroup.procs")).read().split()
        # the server's environment, as its kernels inherit it (a forked
        # server's /proc/PID/environ is the spawn template's, not its own)
        (kernel_pid,) = kernel_pids_of(spawner, await start_kernel(app, STUDENT))
        env = dict(
            item.split("=", 1) for item in open(f"/proc/{kernel_pid}/environ").read().split("\0") if "=" in item
        )
        assert env["MEM_LIMIT"] == str(MEM_LIMIT) and env["CPU_LIMIT"] == "0.5"
        assert env["CLASSROOMHUB_SERVER_KEY"] == spawner.group_key
        # a created user's home is private
        assert os.stat(pwd.getpwnam(STUDENT).pw_dir).st_mode & 0o777 == 0o700
        await spawner.check()
        assert spawner.usage["mem_bytes"] > 20 * 1024**2
        assert spawner.usage["procs"] >= 1
    finally:
        await stop(app, STUDENT)
    assert not any(os.path.exists(d) for d in folders.values())


async def test_usage_api_is_scoped(app, synced):
    await start(app, STUDENT)
    await start(app, OTHER)
    try:
        for spawner in (app.users[STUDENT].spawner, app.users[OTHER].spawner):
            await spawner.check()
        r = await api_request(app, "classroom/usage")
        assert r.status_code == 200, r.text
        seen = {s["user"]: s for s in r.json()["servers"]}
        assert {STUDENT, OTHER} <= set(seen)
        assert seen[STUDENT]["mem_limit"] == MEM_LIMIT and seen[STUDENT]["enforcement"] == "cgroup-v1"
        assert seen[STUDENT]["mem_bytes"] > 0 and seen[STUDENT]["tier"] == "student"
        # the instructor of c1 sees their student, not the student of no course
        token = app.users[POWER].new_api_token(note="t")
        r = await api_request(app, "classroom/usage", headers={"Authorization": f"token {token}"})
        assert {s["user"] for s in r.json()["servers"]} == {STUDENT}
        # a student sees only their own server
        token = app.users[OTHER].new_api_token(note="t")
        r = await api_request(app, "classroom/usage", headers={"Authorization": f"token {token}"})
        assert {s["user"] for s in r.json()["servers"]} == {OTHER}
        r = await api_request(app, "classroom/usage", headers={"Authorization": "token nonsense"})
        assert r.status_code == 403
        # Prometheus, on the hub's own /hub/metrics
        metrics = await asyncio.to_thread(
            requests.get, public_url(app) + "hub/metrics", headers={"Authorization": f"token {admin_token(app)}"}
        )
        samples = dict(line.rsplit(" ", 1) for line in metrics.text.splitlines() if not line.startswith("#"))
        labels = f'{{server="",user="{STUDENT}"}}'
        assert float(samples["classroomhub_server_memory_bytes" + labels]) > 0
        assert float(samples["classroomhub_server_memory_limit_bytes" + labels]) == MEM_LIMIT
    finally:
        await stop(app, STUDENT)
        await stop(app, OTHER)


async def test_usage_command_prints_a_table(app, synced, capsys):
    await start(app, STUDENT)
    try:
        await app.users[STUDENT].spawner.check()
        hub_url = public_url(app).rstrip("/")
        rc = await asyncio.to_thread(cli.main, ["usage", "--hub-url", hub_url, "--token", admin_token(app)])
        out = capsys.readouterr().out.splitlines()
        assert rc == 0
        assert out[0].split()[:4] == ["USER", "SERVER", "TIER", "MEM"]
        row = next(line for line in out if line.startswith(STUDENT))
        assert row.split()[1:3] == ["-", "student"] and "256 MiB" in row
        rc = await asyncio.to_thread(cli.main, ["usage", "--hub-url", hub_url, "--token", "wrong"])
        assert rc == 1 and "read:servers" in capsys.readouterr().err
    finally:
        await stop(app, STUDENT)


async def test_oom_kills_the_kernel_and_the_user_is_told(app, synced):
    spawner = await start(app, STUDENT)
    try:
        await kill_a_kernel_for_memory(app, STUDENT, spawner, 2 * MEM_LIMIT)
        await spawner.check()
        assert spawner.oom_kills >= 1
        # the server survived and answers
        r = await server_api(app, STUDENT, "status")
        assert r.status_code == 200, r.text
        assert psutil.pid_exists(spawner.pid)
        notice = oom_notice(app.users[STUDENT])
        assert "memory limit of 256 MiB" in notice
        assert oom_notice(app.users[OTHER]) == ""
        # and on the hub's home page, for them
        session, _ = await login(app, STUDENT)
        r = await session.get(public_url(app) + "hub/home")
        assert "memory limit of 256 MiB" in r.text
        # the count survives in the spawner state
        assert app.users[STUDENT].spawner.orm_spawner.state["run"]["oom_kills"] >= 1
    finally:
        await stop(app, STUDENT)


async def test_cpu_limit_holds(app, synced):
    spawner = await start(app, STUDENT)
    try:
        client = await kernel_client(STUDENT, await start_kernel(app, STUDENT))
        client.execute("import time\nt = time.time()\nwhile time.time() - t < 8: pass")
        await asyncio.sleep(1.5)
        before, t0 = spawner.backend.usage(spawner.group_key).cpu_seconds, time.monotonic()
        await asyncio.sleep(4)
        used = (spawner.backend.usage(spawner.group_key).cpu_seconds - before) / (time.monotonic() - t0)
        client.stop_channels()
        assert 0.45 <= used <= 0.55, f"{used:.3f} cores used under a 0.5 limit"
    finally:
        await stop(app, STUDENT)


DAEMON = """
import os, subprocess, time
subprocess.Popen(["nohup", "sleep", "1000"], start_new_session=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(1000)
    os._exit(0)
os.wait()
"""


async def test_stop_leaves_no_process_and_no_cgroup(app, synced):
    spawner = await start(app, STUDENT)
    client = await kernel_client(STUDENT, await start_kernel(app, STUDENT))
    client.execute(DAEMON)
    await asyncio.sleep(1.5)
    client.stop_channels()
    pids = group_pids(spawner)
    # reparented out of the server's tree: to init, or to the spawn template
    # (a subreaper) for a forked server
    escaped = [
        p for p in pids - {spawner.pid} if psutil.Process(p).ppid() not in pids or psutil.Process(p).name() == "sleep"
    ]
    assert len(escaped) >= 2, "the daemons did not start"
    folders = group_dirs(spawner)
    await stop(app, STUDENT)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not any(os.path.exists(d) for d in folders)


async def test_stop_is_clean_even_if_the_hub_ignores_sigint(app, synced, caplog):
    """A hub started from a script with & passes SIGINT on as ignored; the
    stock first signal then does nothing for `interrupt_timeout` seconds."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        spawner = await start(app, STUDENT)
    finally:
        signal.signal(signal.SIGINT, previous)
    await start_kernel(app, STUDENT)
    proc = psutil.Process(spawner.pid)
    t0 = time.monotonic()
    await stop(app, STUDENT)
    took = time.monotonic() - t0
    assert took < spawner.interrupt_timeout, f"stop took {took:.1f} s"
    assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    # a clean shutdown: the server logged its own stop (SIGKILL gives no such line)
    assert not any("Killing" in r.getMessage() for r in caplog.records)


async def test_exited_server_is_cleaned_up_by_poll(app, synced):
    """A server that died while the hub was down leaves kernels behind: the
    first poll after the restart removes them and the cgroup."""
    spawner = await start(app, STUDENT)
    await start_kernel(app, STUDENT)
    await asyncio.sleep(1)
    pids = group_pids(spawner)
    folders = group_dirs(spawner)
    assert len(pids) >= 2
    os.kill(spawner.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while await spawner.poll() is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not any(os.path.exists(d) for d in folders)


async def test_stale_groups_are_swept_at_first_start(app, synced):
    host = Host.fresh()  # as in a fresh hub process: nothing swept yet
    backend = host.backend("auto", CGROUP_PARENT)
    backend.create("ghost", Limits(mem_bytes=MEM_LIMIT))
    ghost = subprocess.Popen(["sleep", "1000"], preexec_fn=backend.attach_fn("ghost"))
    try:
        await start(app, STUDENT)
        assert ghost.wait(timeout=10) == -signal.SIGKILL
        assert "ghost" not in backend.keys()
    finally:
        if ghost.poll() is None:
            ghost.kill()
        await stop(app, STUDENT)


async def test_state_round_trip_after_hub_restart(app, synced):
    """A fresh spawner loaded from the stored state finds the running server,
    reports it running, and stops all of it."""
    spawner = await start(app, STUDENT)
    await start_kernel(app, STUDENT)
    state = spawner.get_state()
    assert state["pid"] == spawner.pid and state["tier"] == "student"
    user = app.users[STUDENT]
    revived = user._new_spawner("", orm_spawner=spawner.orm_spawner)
    revived.load_state(state)
    assert revived.tier == "student"
    assert await revived.poll() is None
    pids, folders = group_pids(spawner), group_dirs(spawner)
    await revived.stop()
    assert await revived.poll() == 0
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not any(os.path.exists(d) for d in folders)
    await spawner.poll()  # the original handle notices too
    await stop(app, STUDENT) if spawner.active else None


async def test_kernels_of_two_users_never_share_ports(app, synced):
    """jupyter_client picks TCP ports for a kernel before the kernel binds
    them, and only avoids the ports it picked itself: two users' kernels could
    take the same one. With the ipc transport the channels are sockets in the
    user's private runtime folder: started in pairs at once, every kernel
    answers, and the only TCP ports left are ones the OS assigned at bind."""
    spawners = [await start(app, STUDENT), await start(app, OTHER)]
    try:
        for _ in range(4):
            ids = await asyncio.gather(*(start_kernel(app, name) for name in (STUDENT, OTHER)))
            for name, kernel_id in zip((STUDENT, OTHER), ids):
                client = await kernel_client(name, kernel_id)
                with open(client.connection_file) as f:
                    info = json.load(f)
                assert info["transport"] == "ipc"
                for channel in ("shell", "iopub", "stdin", "control", "hb"):
                    path = f"{info['ip']}-{info[channel + '_port']}"
                    assert path.startswith(pwd.getpwnam(name).pw_dir + "/")
                    assert os.path.exists(path), path
                reply = await asyncio.to_thread(client.execute_interactive, "1 + 1", timeout=30)
                assert reply["content"]["status"] == "ok"
                client.stop_channels()
        ports = []
        for spawner in spawners:
            for pid in group_pids(spawner) - {spawner.pid}:
                ports += [c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.status == "LISTEN"]
        assert len(ports) == len(set(ports))
    finally:
        await stop(app, STUDENT)
        await stop(app, OTHER)


async def test_named_servers_follow_the_tier(app, synced):
    r = await api_request(app, f"users/{STUDENT}/servers/extra", method="post")
    assert r.status_code >= 400
    assert "allows 0 named server" in r.text
    spawner = await start(app, POWER, "analysis")
    assert spawner.tier == "power"
    await stop(app, POWER, "analysis")


async def test_idle_server_is_culled(app, synced, settings):
    settings(STUDENT, idle_timeout=3)
    spawner = await start(app, STUDENT)
    t0 = time.monotonic()
    while spawner.active:
        assert time.monotonic() - t0 < 3 + 0.5 + 4, "idle server not culled"
        await asyncio.sleep(0.2)
    assert time.monotonic() - t0 >= 2.5


async def test_busy_silent_computation_is_not_culled(app, synced, settings):
    settings(STUDENT, idle_timeout=3)
    spawner = await start(app, STUDENT)
    try:
        client = await kernel_client(STUDENT, await start_kernel(app, STUDENT))
        client.execute("import time\nt = time.time()\nwhile time.time() - t < 30: pass")
        client.stop_channels()  # the tab is closed: no hub activity from here on
        await asyncio.sleep(8)
        assert spawner.active and spawner.ready, "a busy server was culled"
    finally:
        await stop(app, STUDENT)


async def test_max_age_stops_even_busy_servers(app, synced, settings):
    settings(STUDENT, idle_timeout=0, max_age=4)
    spawner = await start(app, STUDENT)
    t0 = time.monotonic()
    while spawner.active:
        assert time.monotonic() - t0 < 4 + 4
        await asyncio.sleep(0.2)


async def test_idle_kernel_is_culled_inside_a_live_server(app, synced, settings):
    settings(STUDENT, kernel_cull_timeout=2, kernel_cull_interval=1)
    spawner = await start(app, STUDENT)
    try:
        kernel_id = await start_kernel(app, STUDENT)
        t0 = time.monotonic()
        while any(k["id"] == kernel_id for k in (await server_api(app, STUDENT, "kernels")).json()):
            assert time.monotonic() - t0 < 15, "idle kernel not culled"
            await asyncio.sleep(0.5)
        assert spawner.active and (await server_api(app, STUDENT, "status")).status_code == 200
    finally:
        await stop(app, STUDENT)


async def test_memory_pressure_culls_idlest_first_then_refuses(app, synced, settings, tmp_path):
    meminfo = tmp_path / "meminfo"
    plenty, scarce = "MemAvailable: 8000000 kB\n", "MemAvailable: 100000 kB\n"
    meminfo.write_text(plenty)
    pressure = dict(meminfo_path=str(meminfo), memory_reserve=1024**3, pressure_min_idle=1)
    for name in (STUDENT, STUDENT2, OTHER):
        settings(name, **pressure)
    idlest = await start(app, STUDENT)
    await asyncio.sleep(1.5)
    second = await start(app, STUDENT2)
    await asyncio.sleep(1.5)
    try:
        # pressure: the idlest server goes first, and stopping it frees enough
        idlest.post_stop_hook = lambda spawner: meminfo.write_text(plenty)
        meminfo.write_text(scarce)
        third = await start(app, OTHER)
        assert not idlest.active and second.active and third.active
        # pressure again, nobody idle long enough to go: the spawn is refused
        idlest.post_stop_hook = None
        second.pressure_min_idle = third.pressure_min_idle = 3600
        meminfo.write_text(scarce)
        r = await api_request(app, f"users/{STUDENT}/server", method="post")
        assert r.status_code >= 400
        assert "short of memory" in r.text
        assert second.active and third.active
    finally:
        for name in (STUDENT2, OTHER):
            if app.users[name].spawner.active:
                await stop(app, name)


async def test_a_server_that_culls_itself_under_pressure_stops_monitoring(app, synced, settings, tmp_path):
    """The only running server is the idlest: its own monitor stops it. That
    monitor must end with it, or it goes on culling the next servers with
    this server's settings."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemAvailable: 8000000 kB\n")
    settings(STUDENT, meminfo_path=str(meminfo), memory_reserve=1024**3, pressure_min_idle=0, pressure_warning_seconds=0)
    spawner = await start(app, STUDENT)
    monitor = spawner._monitor_task
    meminfo.write_text("MemAvailable: 100000 kB\n")
    deadline = time.monotonic() + 20
    while spawner.active or spawner.pending:
        assert time.monotonic() < deadline, "not culled under pressure"
        await asyncio.sleep(0.1)
    await asyncio.wait([monitor], timeout=5)
    assert monitor.done(), "the culled server's monitor is still running"


async def test_a_start_under_pressure_waits_for_a_stop_in_flight(app, synced, settings, tmp_path):
    """A cull has just begun (the monitor saw the pressure first): the start
    waits for that memory instead of stopping a second server."""
    from classroomhub.servers import stop_server

    meminfo = tmp_path / "meminfo"
    plenty, scarce = "MemAvailable: 8000000 kB\n", "MemAvailable: 100000 kB\n"
    meminfo.write_text(plenty)
    for name in (STUDENT, STUDENT2, OTHER):
        # the monitor's own pressure round stays out of it: this test's stop is the cull
        settings(name, meminfo_path=str(meminfo), memory_reserve=1024**3, pressure_min_idle=0, monitor_interval=3600)
    culled = await start(app, STUDENT)
    other = await start(app, STUDENT2)
    try:
        culled.post_stop_hook = lambda spawner: meminfo.write_text(plenty)
        meminfo.write_text(scarce)
        cull = asyncio.ensure_future(stop_server(app.users[STUDENT], "", app.log, "test: memory pressure"))
        deadline = time.monotonic() + 30
        while culled.pending != "stop":
            assert not cull.done() and time.monotonic() < deadline, "the cull never was in flight"
            await asyncio.sleep(0.01)
        third = await start(app, OTHER)
        await cull
        assert not culled.active and other.active and third.active
    finally:
        culled.post_stop_hook = None
        for name in (STUDENT2, OTHER):
            if app.users[name].spawner.active:
                await stop(app, name)


@pytest.mark.parametrize(
    "backend, logged",
    [("cgroup-v1", "cgroup v1 under"), ("psutil", "psutil watchdog"), ("none", "no limits are enforced")],
)
async def test_backend_is_logged_at_each_start(app, synced, settings, caplog, backend, logged):
    settings(STUDENT, enforcement=backend)
    spawner = await start(app, STUDENT)
    try:
        assert spawner.backend.name == backend
        assert any(logged in r.getMessage() and STUDENT in r.getMessage() for r in caplog.records)
        await spawner.check()
        assert spawner.usage["mem_bytes"] > 0 or backend == "none"
    finally:
        await stop(app, STUDENT)


async def test_require_enforcement_refuses_an_unlimited_server(app, synced, settings):
    settings(STUDENT, enforcement="psutil", require_enforcement=True)
    r = await api_request(app, f"users/{STUDENT}/server", method="post")
    assert r.status_code == 503, r.text
    assert "requires enforced limits" in r.json()["message"]
    assert not app.users[STUDENT].spawner.active


async def test_an_unavailable_backend_that_was_asked_for_refuses_to_start(app, synced, settings):
    try:
        cgroups.CgroupV2.from_host(CGROUP_PARENT)
        pytest.skip("this host offers cgroup v2; the refusal needs a backend it lacks")
    except EnforcementUnavailable:
        pass
    settings(STUDENT, enforcement="cgroup-v2")
    r = await api_request(app, f"users/{STUDENT}/server", method="post")
    assert r.status_code == 503, r.text
    assert "limit servers with cgroup-v2, which this host does not offer" in r.json()["message"]
    assert not app.users[STUDENT].spawner.active


async def test_psutil_watchdog_kills_the_largest_kernel(app, synced, settings):
    """Without a writable cgroup the watchdog stands in: the kernel over the
    limit dies, the server does not, and the kill is counted."""
    # the watchdog sums resident sizes, shared pages too: the limit leaves room
    # for the server (JupyterLab and its extensions) and a starting kernel
    limit = 512 * 1024**2
    settings(STUDENT, enforcement="psutil", watchdog_interval=0.3, monitor_interval=5, mem_limit=limit)
    spawner = await start(app, STUDENT)
    try:
        client = await kernel_client(STUDENT, await start_kernel(app, STUDENT))
        assert spawner.oom_kills == 0, "the watchdog killed a process before the kernel allocated anything"
        kernel_pids = set(spawner.backend.pids(spawner.group_key)) - {spawner.pid}
        client.execute(f"b = bytearray({2 * limit})\nfor i in range(0, len(b), 4096): b[i] = 1")
        deadline = time.monotonic() + 20
        while spawner.oom_kills == 0:
            assert time.monotonic() < deadline, "watchdog did not act"
            await asyncio.sleep(0.2)
        client.stop_channels()
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in kernel_pids)
        assert psutil.pid_exists(spawner.pid)
        assert (await server_api(app, STUDENT, "status")).status_code == 200
    finally:
        await stop(app, STUDENT)


async def test_created_user_gets_private_home_skeleton_and_shared_data(app, synced, settings, tmp_path):
    skel = tmp_path / "skel"
    skel.mkdir()
    (skel / "WELCOME.md").write_text("Welcome to the class hub\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.csv").write_text("a,b\n1,2\n")
    settings(NEWCOMER, skeleton_dir=str(skel), shared_data_dir=str(data))
    with pytest.raises(KeyError):
        pwd.getpwnam(NEWCOMER)
    await start(app, NEWCOMER)
    try:
        entry = pwd.getpwnam(NEWCOMER)
        home = entry.pw_dir
        assert os.stat(home).st_mode & 0o777 == 0o700
        welcome = os.path.join(home, "WELCOME.md")
        assert open(welcome).read() == "Welcome to the class hub\n"
        assert os.stat(welcome).st_uid == entry.pw_uid
        link = os.path.join(home, "data")
        assert os.readlink(link) == str(data)
        assert os.lstat(link).st_uid == entry.pw_uid
        assert os.path.exists(os.path.join(link, "dataset.csv"))
    finally:
        await stop(app, NEWCOMER)


async def test_start_syncs_classroom_content_before_the_server_runs(app, synced, settings):
    """classroom_service_url: the start asks the service to deliver the
    owner's missing releases, with the new server's own token, first."""
    from tornado import web
    from jupyterhub.utils import random_port

    calls = []

    class Sync(web.RequestHandler):
        def post(self):
            uid = pwd.getpwnam(STUDENT).pw_uid  # the system user exists already
            running = [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid]
            token = orm.APIToken.find(app.db, self.request.headers.get("Authorization", "").split()[-1])
            calls.append((token and token.user.name, token and sorted(token.scopes), running))
            self.finish({"delivered": [{"course": "c1", "material": "w1", "version": 1, "error": "", "counts": {"added": 2}}]})

    port = random_port()
    server = web.Application([("/services/classroom/api/sync", Sync)]).listen(port, "127.0.0.1")
    try:
        settings(STUDENT, classroom_service_url=f"http://127.0.0.1:{port}/services/classroom/")
        spawner = await start(app, STUDENT)
        try:
            assert len(calls) == 1
            owner, scopes, running = calls[0]
            # a token of the owner for this call alone, not the server's
            assert (owner, scopes) == (STUDENT, ["access:services!service=classroom"])
            assert running == []  # nothing of the server ran yet
        finally:
            await stop(app, STUDENT)
    finally:
        server.stop()


# -- across stops and hub restarts (issue #11) -----------------------------------


async def restart_hub_spawners(app, names):
    """What a hub restart does to these users' spawners: the objects and the
    process's host state (enforcement backends, running servers) are gone; the
    hub rebuilds the spawners of running servers from its database
    (load_state) and checks them (JupyterHub's own init_spawners)."""
    for name in names:
        user = app.users[name]
        for server_name, old in list(user.spawners.items()):
            old.stop_polling()
            old._stop_monitor()
            user.spawners.pop(server_name)
    Host.fresh()
    app.db.expire_all()  # read everything back from the database
    await app.init_spawners()


async def test_a_server_that_outlives_a_hub_restart_keeps_its_settings(app, synced, settings):
    settings(RESTARTED, idle_timeout=1234, max_age=5678, pressure_min_idle=77)
    before = await start(app, RESTARTED)
    started = before._tracker.started
    try:
        await kill_a_kernel_for_memory(app, RESTARTED, before, 2 * MEM_LIMIT)
        await before.check()
        assert before.oom_kills == 1
        await restart_hub_spawners(app, [RESTARTED])
        after = app.users[RESTARTED].spawner
        assert after is not before and after.active and after.pid == before.pid
        # settings come back from the owner's groups and the config, as at a start
        deadline = time.monotonic() + 10
        while after.mem_limit != MEM_LIMIT:
            assert time.monotonic() < deadline, f"limits not restored: mem_limit {after.mem_limit}"
            await asyncio.sleep(0.05)
        assert (after.tier, after.cpu_limit, after.idle_timeout, after.max_age) == ("student", 0.5, 1234, 5678)
        assert after.pressure_min_idle == 77
        assert after.group_key == before.group_key and group_pids(after) == group_pids(before)
        # the run's start and OOM count, and a kill while the hub was down
        assert abs(after._tracker.started - started) < 1
        await kill_a_kernel_for_memory(app, RESTARTED, after, 2 * MEM_LIMIT)
        await after.check()
        assert (after.oom_kills, after.oom_kills_total) == (2, 2)
        assert after.idle_seconds() is not None and after in Host.current().running
        # limits in the usage API and the metrics
        r = await api_request(app, "classroom/usage")
        seen = {s["user"]: s for s in r.json()["servers"]}[RESTARTED]
        assert (seen["mem_limit"], seen["cpu_limit"], seen["oom_kills"]) == (MEM_LIMIT, 0.5, 2)
        metrics = await asyncio.to_thread(
            requests.get, public_url(app) + "hub/metrics", headers={"Authorization": f"token {admin_token(app)}"}
        )
        samples = dict(line.rsplit(" ", 1) for line in metrics.text.splitlines() if not line.startswith("#"))
        assert float(samples[f'classroomhub_server_memory_limit_bytes{{server="",user="{RESTARTED}"}}']) == MEM_LIMIT
        # the stop after the restart removes everything, as before it
        folders = group_dirs(after)
        await stop(app, RESTARTED)
        assert not any(os.path.exists(d) for d in folders)
    finally:
        if app.users[RESTARTED].spawner.active:
            await stop(app, RESTARTED)


async def pages_say(app, session, name, text):
    """Whether the home, spawn and "not running" pages all show *text*."""
    base = public_url(app)
    pages = {
        "home": await session.get(base + "hub/home"),
        "spawn": await session.get(base + "hub/spawn"),
        "not running": await session.get(base + f"user/{name}/"),
    }
    assert "options-form" in pages["spawn"].text or "spawn_form" in pages["spawn"].text, "not the spawn form"
    assert pages["not running"].status_code == 424, pages["not running"].status_code
    return {page: text in r.text for page, r in pages.items()}


async def test_an_oom_kill_just_before_a_stop_is_told_after_stop_and_restart(app, synced, settings, monkeypatch):
    """No check runs between the kill and the stop (monitor every hour): the
    stop counts it. The notice is on every page after the stop and after a
    hub restart, beside the admin's announcements; the next run starts at 0."""
    monkeypatch.setitem(app.tornado_settings["template_vars"], "announcement", "Hub news for all")
    monkeypatch.setitem(app.tornado_settings["template_vars"], "announcement_home", "Home news")
    monkeypatch.setitem(app.tornado_settings["template_vars"], "announcement_spawn", "Spawn news")
    # a form, so /hub/spawn shows the spawn page instead of starting the server
    monkeypatch.setitem(app.config.ClassroomSpawner, "options_form", "<input name='note'>")
    settings(NOTICED, monitor_interval=3600)
    spawner = await start(app, NOTICED)
    try:
        await kill_a_kernel_for_memory(app, NOTICED, spawner, 2 * MEM_LIMIT)
        assert spawner.oom_kills == 0  # not checked yet
    finally:
        await stop(app, NOTICED)
    state = app.users[NOTICED].orm_user.orm_spawners[""].state
    assert state["oom_kills_total"] == 1 and "run" not in state
    assert [e[1:] for e in state["oom_events"]] == [[1, MEM_LIMIT]]
    notice = "memory limit of 256 MiB"
    session, _ = await login(app, NOTICED)
    assert await pages_say(app, session, NOTICED, notice) == {"home": True, "spawn": True, "not running": True}
    # the admin's own announcements are still there
    assert "Home news" in (await session.get(public_url(app) + "hub/home")).text
    assert "Spawn news" in (await session.get(public_url(app) + "hub/spawn")).text
    assert "Hub news for all" in (await session.get(public_url(app) + f"user/{NOTICED}/")).text
    # a restarted hub: no spawner objects, its template variables as configured
    for key, value in (("announcement", "Hub news for all"), ("announcement_home", "Home news"), ("announcement_spawn", "Spawn news")):
        app.tornado_settings["template_vars"][key] = value
    await restart_hub_spawners(app, [NOTICED])
    assert await pages_say(app, session, NOTICED, notice) == {"home": True, "spawn": True, "not running": True}
    assert "Home news" in (await session.get(public_url(app) + "hub/home")).text
    # others are not told; an hour later nobody is
    assert oom_notice(app.users[OTHER]) == ""
    assert oom_notice(app.users[NOTICED], now=time.time() + 3601) == ""
    # the next run counts its own kills; the lifetime total stays
    monkeypatch.delitem(app.config.ClassroomSpawner, "options_form")
    again = await start(app, NOTICED)
    try:
        await again.check()
        assert (again.oom_kills, again.oom_kills_total) == (0, 1)
        r = await api_request(app, "classroom/usage")
        seen = {s["user"]: s for s in r.json()["servers"]}[NOTICED]
        assert (seen["oom_kills"], seen["oom_kills_total"]) == (0, 1)
    finally:
        await stop(app, NOTICED)


async def test_a_slow_classroom_sync_does_not_fail_the_start(app, synced, settings, caplog):
    """The service hangs: the sync gets half of start_timeout, then the server
    starts anyway, with a warning."""
    from jupyterhub.utils import random_port
    from tornado import web

    class HangingSync(web.RequestHandler):
        async def post(self):
            await asyncio.sleep(60)
            self.finish({"delivered": []})

    port = random_port()
    server = web.Application([("/services/classroom/api/sync", HangingSync)]).listen(port, "127.0.0.1")
    try:
        settings(SLOW_SYNC, classroom_service_url=f"http://127.0.0.1:{port}/services/classroom/", start_timeout=20)
        t0 = time.time()
        spawner = await start(app, SLOW_SYNC)
        try:
            assert spawner.ready
            # the start gave up on the sync after half of start_timeout (not the
            # 60 s of classroom_sync_timeout); launching the server took the rest,
            # however long that is on a loaded machine
            gave_up = [
                r.created - t0
                for r in caplog.records
                if r.levelname == "WARNING" and r.getMessage().startswith(f"Classroom sync for {SLOW_SYNC} did not finish")
            ]
            assert len(gave_up) == 1 and 9 <= gave_up[0] < 15, gave_up
        finally:
            await stop(app, SLOW_SYNC)
    finally:
        server.stop()


async def test_an_oom_kill_just_before_the_server_crashes_is_counted(app, synced, settings):
    """The server dies between two checks, right after a kernel was killed
    for memory: the poll that finds it gone counts the kill before it removes
    the group."""
    settings(NOTICED, monitor_interval=3600)
    spawner = await start(app, NOTICED)
    assert oom_notice(app.users[NOTICED]) == ""
    try:
        await kill_a_kernel_for_memory(app, NOTICED, spawner, 2 * MEM_LIMIT)
        assert spawner.oom_kills == 0  # not checked yet
        folders = group_dirs(spawner)
        os.kill(spawner.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while await spawner.poll() is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert "memory limit of 256 MiB" in oom_notice(app.users[NOTICED])
        assert spawner.orm_spawner.state["oom_kills_total"] == 1
        assert not any(os.path.exists(d) for d in folders)
    finally:
        if app.users[NOTICED].spawner.active:
            await stop(app, NOTICED)
