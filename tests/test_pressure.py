"""What the class day needs of the spawner, on real servers in real cgroup v1
groups: under memory pressure an idle kernel goes before anything else, and
never a kernel running a cell; the OOM killer is pointed at idle servers'
kernels first; a server that keeps a core busy gets a low CPU weight until it
pauses, and one that is starting a high one (interactive first)."""

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import pytest
from jupyterhub.tests.utils import api_request, public_url
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from classroomhub.spawner import ClassroomSpawner, detect, monitor, pressure
from classroomhub.spawner.culling import IdleTracker
from classroomhub.spawner.enforcement import group_key
from classroomhub.spawner.monitor import cpu_demand_seconds
from classroomhub.spawner.notices import kernel_shutdown_notice
from classroomhub.spawner.pressure import kernel_idle_needed

from conftest import login

from fixtures.servers import (
    cgroup_v1_unavailable,
    classroom_spawner_config,
    group_dirs,
    kernel_client,
    kernel_pids_of,
    remove_spawned,
    server_api,
    start,
    start_kernel,
    stop,
)

MiB = 1024**2
TAG = "cdp" + secrets.token_hex(2)
WORKER, BUSY, EXITING = f"{TAG}-w", f"{TAG}-b", f"{TAG}-x"
CGROUP_PARENT = f"cdt-{TAG}"
BUDGET = 2048 * MiB

ROSTER = f"""\
users:
  admin: {{tier: root}}
  {WORKER}: {{}}
  {BUSY}: {{}}
  {EXITING}: {{}}
"""

pytestmark = pytest.mark.skipif(bool(cgroup_v1_unavailable(CGROUP_PARENT)), reason=str(cgroup_v1_unavailable(CGROUP_PARENT)))


def HUB_CONFIG(c):
    classroom_spawner_config(c, CGROUP_PARENT)
    c.ClassroomSpawner.enforcement = "cgroup-v1"
    c.ClassroomSpawner.servers_memory_budget = BUDGET
    c.ClassroomSpawner.monitor_interval = 0.5
    c.ClassroomSpawner.kernel_memory_reserve = 0
    c.ClassroomSpawner.tier_settings = {
        "student": {"idle_timeout": 0, "max_age": 0, "kernel_cull_timeout": 0, "cpu_busy_seconds": 2}
    }


@pytest.fixture(scope="module", autouse=True)
def clean_up():
    yield
    remove_spawned((WORKER, BUSY, EXITING), CGROUP_PARENT)


def read(path):
    with open(path) as f:
        return f.read().strip()


async def kernel_ids(app, name):
    return {k["id"] for k in (await server_api(app, name, "kernels")).json()}


async def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def test_under_pressure_the_idle_kernel_goes_never_the_one_running_a_cell(app, synced, caplog):
    spawner = await start(app, WORKER)
    try:
        idle_id = await start_kernel(app, WORKER)
        working_id = await start_kernel(app, WORKER)
        idle_pids = kernel_pids_of(spawner, idle_id)
        working = await kernel_client(WORKER, working_id)
        working.execute("import time\nt = time.time()\nwhile time.time() - t < 30: time.sleep(0.05)")
        await asyncio.sleep(1)  # the idle kernel has run nothing for a second, the other is busy
        # once idle servers count as such, their kernels are the OOM killer's first choice
        spawner.pressure_min_idle = 0
        await wait_for(
            lambda: asyncio.sleep(0, all(read(f"/proc/{p}/oom_score_adj") == "800" for p in idle_pids)),
            10,
            "the idle server's kernels were not given idle_kernel_oom_score_adj",
        )
        # pressure from the budget alone: less than a reserve as large as the budget is free
        spawner.pressure_kernel_min_idle = 1
        spawner.kernel_memory_reserve = BUDGET

        async def idle_gone():
            return idle_id not in await kernel_ids(app, WORKER)

        await wait_for(idle_gone, 20, "the idle kernel was not shut down under pressure")
        spawner.kernel_memory_reserve = 0
        assert working_id in await kernel_ids(app, WORKER), "the kernel running a cell was shut down"
        assert spawner.active, "the server was stopped, not just its idle kernel"
        said = [r.getMessage() for r in caplog.records if "shutting down kernel" in r.getMessage()]
        assert said and idle_id in said[0] and working_id not in " ".join(said), said
        working.stop_channels()
    finally:
        await stop(app, WORKER)


def hostile_app(kernels_answer, delete=None, seen=None):
    """A student's server answering GET /api/kernels with *kernels_answer*
    (bytes, or an url to redirect to) and DELETE with *delete* (an url to
    redirect to; else it hangs). With *seen*: the place redirects lead to,
    recording every request that arrives."""

    class Kernels(web.RequestHandler):
        def get(self, _=None):
            if isinstance(kernels_answer, str):
                self.redirect(kernels_answer, status=307)
            else:
                self.write(kernels_answer)

        async def delete(self, _=None):
            if delete:
                self.redirect(delete, status=307)
            else:
                await asyncio.sleep(3600)

    class Target(web.RequestHandler):
        def prepare(self):
            seen.append((self.request.method, self.request.headers.get("Authorization")))
            self.finish("{}")

    routes = [(r"/api/kernels/?(.*)", Kernels)] if seen is None else [(r"/.*", Target)]
    server = HTTPServer(web.Application(routes))
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    return server, f"http://127.0.0.1:{sockets[0].getsockname()[1]}"


def test_the_shorter_memory_the_sooner_an_idle_kernel_goes():
    spawner = SimpleNamespace(pressure_kernel_min_idle=180, pressure_kernel_min_idle_full=45)
    assert kernel_idle_needed(spawner, 1.0) == 180  # the reserve only just short
    assert kernel_idle_needed(spawner, 0.5) == 112.5
    assert kernel_idle_needed(spawner, 0.0) == 45  # nothing free
    spawner.pressure_kernel_min_idle_full = 600  # never later than pressure_kernel_min_idle
    assert kernel_idle_needed(spawner, 0.0) == kernel_idle_needed(spawner, 1.0) == 180


async def test_a_kernel_idle_for_seconds_goes_only_when_memory_is_nearly_gone_and_its_owner_is_told(app, synced):
    spawner = await start(app, WORKER)
    try:
        idle_id = await start_kernel(app, WORKER)
        spawner.pressure_kernel_min_idle = 3600
        spawner.pressure_kernel_min_idle_full = 1
        # short, but most of the reserve free: a kernel idle for seconds stays
        # (the needed idle time is about an hour times the free share)
        spawner.kernel_memory_reserve = 2 * BUDGET
        await asyncio.sleep(3)  # six monitor rounds
        assert idle_id in await kernel_ids(app, WORKER), "a kernel idle for seconds went while memory was only a bit short"
        assert spawner.kernel_shutdowns == []

        # nearly nothing of a huge reserve free: the needed idle time is about a second
        spawner.kernel_memory_reserve = 100_000 * BUDGET

        async def idle_gone():
            return idle_id not in await kernel_ids(app, WORKER)

        await wait_for(idle_gone, 20, "the kernel idle for seconds was not shut down with memory nearly gone")
        spawner.kernel_memory_reserve = 0
        assert spawner.active, "the server was stopped, not just its idle kernel"
        assert [count for _, count in spawner.kernel_shutdowns] == [1]
        # told on the hub's pages, from the hub's database
        assert "1 idle kernel(s) of your server were shut down" in kernel_shutdown_notice(app.users[WORKER])
        session, _ = await login(app, WORKER)
        r = await session.get(public_url(app) + "hub/home")
        assert "idle kernel(s) of your server were shut down" in r.text
    finally:
        spawner.kernel_memory_reserve = 0
        await stop(app, WORKER)
    # the notice outlives the server (a student who comes back after a stop)
    assert "were shut down" in kernel_shutdown_notice(app.users[WORKER])


class StandIn(SimpleNamespace):
    """What the pressure code reads of a running spawner, for a server a
    student controls (its answers are the point, not its process)."""

    __hash__ = object.__hash__


def stand_in(url, log):
    return StandIn(
        active=True, pending=None, server=SimpleNamespace(url=url + "/"), mem_limit=0, usage={},
        pressure_kernel_min_idle=1, pressure_kernel_min_idle_full=1, pressure_min_idle=300,
        record_kernel_shutdown=lambda now: None, pressure_warning=[], api_token="the-students-token",
        log=log, _log_name=f"stand-in at {url}", idle_seconds=lambda now: None,
    )


async def test_servers_answering_garbage_hanging_or_redirecting_never_hold_up_relief(app, synced, monkeypatch):
    """Every other student's server answers the kernel list wrongly, slowly
    or with redirects: the real idle kernel on the worker's server still goes
    within the step's deadline, no redirect is followed (the token stays),
    and the server step after it still runs."""
    spawner = await start(app, WORKER)
    servers, seen = [], []
    hanging = socket.socket()  # listens, never accepts: a SIGSTOPped server
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(8)
    try:
        idle_id = await start_kernel(app, WORKER)  # "starting" until a client connects: idle
        target, target_url = hostile_app(b"", seen=seen)
        many = json.dumps([
            {"id": str(uuid.uuid4()), "execution_state": "idle", "last_activity": "2000-01-01T00:00:00Z"}
            for _ in range(1000)
        ]).encode()
        answers = [
            hostile_app(b"not json {"),
            hostile_app(b'{"kernels": []}'),
            hostile_app(b'[{"id": "x", "execution_state": "idle", "last_activity": "yesterday"}]'),
            hostile_app(many),  # 1000 idle kernels whose DELETE hangs
            hostile_app(many, delete=target_url + "/elsewhere"),
            hostile_app(target_url + "/api/kernels"),
        ]
        servers = [target] + [server for server, _ in answers]
        stand_ins = [stand_in(url, spawner.log) for _, url in answers]
        stand_ins.append(stand_in(f"http://127.0.0.1:{hanging.getsockname()[1]}", spawner.log))
        spawner.host.running.update(stand_ins)
        reached_server_step = []
        monkeypatch.setattr(pressure, "stop_order", lambda *a: reached_server_step.append(a) or [])
        spawner.pressure_kernel_min_idle = 0  # (the stand-ins' kernels claim years)
        spawner.pressure_kernel_timeout = 8
        spawner.kernel_memory_reserve = spawner.memory_reserve = BUDGET  # both steps under pressure
        began = time.monotonic()
        await spawner._relieve_pressure(time.time(), spawning=False)
        took = time.monotonic() - began
        assert idle_id not in await kernel_ids(app, WORKER), "the real idle kernel was not shut down"
        assert took < 8 + 2, f"the kernel step took {took:.1f} s"
        assert seen == [], f"a redirect was followed: {seen}"
        assert reached_server_step, "the server step did not run after the kernel step"
    finally:
        spawner.kernel_memory_reserve = 0
        spawner.memory_reserve = 512 * MiB
        spawner.host.running.difference_update([s for s in list(spawner.host.running) if isinstance(s, StandIn)])
        for server in servers:
            server.stop()
        hanging.close()
        await stop(app, WORKER)


async def test_a_server_busy_for_a_while_gets_a_low_cpu_weight_until_it_pauses(app, synced):
    backend, _ = detect("cgroup-v1", cgroup_parent=CGROUP_PARENT)
    start_shares = os.path.join(backend.bases["cpu"], group_key(BUSY), "cpu.shares")
    seen = set()
    starting = asyncio.ensure_future(start(app, BUSY))
    while not starting.done():  # the weight while the server starts
        try:
            seen.add(read(start_shares))
        except OSError:
            pass  # not made yet
        await asyncio.sleep(0.02)
    spawner = await starting
    try:
        assert str(4 * 1024) in seen, f"no precedence while starting: {seen}"
        shares = next(os.path.join(d, "cpu.shares") for d in group_dirs(spawner) if os.path.exists(os.path.join(d, "cpu.shares")))

        async def shares_are(value):
            return read(shares) == value

        await wait_for(lambda: shares_are("1024"), 5, "the start's weight stayed after the server was ready")
        kernel_id = await start_kernel(app, BUSY)
        client = await kernel_client(BUSY, kernel_id)
        await asyncio.sleep(3)  # neither the server's start (seconds of CPU) nor the kernel's is a busy server
        assert read(shares) == "1024"
        client.execute("import time\nt = time.time()\nwhile time.time() - t < 8: pass")
        await wait_for(lambda: shares_are(str(10 * 1024 // 100)), 8, "a busy server kept its full CPU weight")
        assert spawner.usage_report()["cpu_weight"] == 10
        await wait_for(lambda: shares_are("1024"), 15, "the weight did not come back after the loop ended")
        client.stop_channels()
    finally:
        await stop(app, BUSY)


def test_cpu_demand_counts_the_time_a_loop_waits_for_a_core():
    """Two loops sharing one core each run half the time; both ask for all of
    it, and that is what makes a server busy (not the share it got)."""
    loop = "import os; os.sched_setaffinity(0, {0})\nwhile True: pass"
    procs = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(2)]
    try:
        time.sleep(0.5)  # both pinned and looping
        pids = [p.pid for p in procs]
        ran0, demand0, t0 = sum(ran_seconds(p) for p in pids), cpu_demand_seconds(pids), time.monotonic()
        time.sleep(3)
        wall = time.monotonic() - t0
        ran = sum(ran_seconds(p) for p in pids) - ran0
        demand = cpu_demand_seconds(pids) - demand0
        assert ran <= 1.1 * wall, (ran, wall)  # one core between them
        assert demand >= 1.8 * wall, (demand, wall)  # each wanted a whole core
    finally:
        for p in procs:
            p.kill()
            p.wait()


def ran_seconds(pid):
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def test_a_loop_is_busy_a_student_between_cells_is_not():
    """Interactive first judges each interval between checks: a loop asks
    for a core in every one, a student running 3 s cells with pauses in
    between does not, even when the average over the window is high; a loop
    that pauses for one interval per window is still busy (it was not, when
    the least interval decided)."""
    loop, student, pausing = IdleTracker(0), IdleTracker(0), IdleTracker(0)
    demand_loop = demand_student = demand_pausing = 0.0
    for tracker in (loop, student, pausing):
        tracker.add(0, 0.0, float("inf"), 90)
    for t in range(10, 70, 10):
        demand_loop += 10.0
        demand_student += 9.5 if t not in (30, 60) else 4.0  # cells stretched by waiting; a pause in three
        demand_pausing += 10.0 if t != 40 else 0.0  # one interval of six paused
        for tracker, demand in ((loop, demand_loop), (student, demand_student), (pausing, demand_pausing)):
            tracker.add(t, demand, float("inf"), 90)
    assert loop.busy_share(60, 60, 0.8) == 1.0
    assert student.busy_share(60, 60, 0.8) == pytest.approx(4 / 6)
    assert pausing.busy_share(60, 60, 0.8) == pytest.approx(5 / 6)
    assert IdleTracker(0).busy_share(40, 30, 0.8) is None  # not watched for the window yet
    default = ClassroomSpawner().cpu_busy_share
    assert 4 / 6 < default <= 5 / 6  # the student is not busy, the pausing loop is


@pytest.fixture
def weighed(monkeypatch):
    """A ClassroomSpawner with no server, and the CPU weights its checks set."""
    writes = []
    monkeypatch.setattr(monitor, "set_cpu_weight", lambda backend, key, weight: writes.append(weight) or True)

    class Probe(ClassroomSpawner):
        group_key = "probe"
        backend = None

    return Probe(), writes


def test_a_loop_that_pauses_once_a_window_is_still_busy(weighed):
    """Pausing for one check in every `cpu_busy_seconds` (about 80% of a
    core) kept the usual weight while the least interval decided."""
    server, writes = weighed
    server.cpu_busy_seconds, server.monitor_interval = 60, 10
    server._tracker, server._demand, server.cpu_weight = IdleTracker(0), IdleTracker(0), 100
    demand = 0.0
    for t in range(0, 200, 10):
        demand += 0.0 if t % 60 == 30 else 10.0
        server._demand.add(t, demand, float("inf"), 80)
        server._prioritize(t)
    assert server.cpu_weight == 10, writes


def test_a_start_stretched_by_a_login_wave_is_not_a_busy_server(weighed):
    """A server asks for a whole core while it starts, for as long as a loaded
    wave makes that take: it gets the start's weight then, and the usual
    weight once ready, not the busy one."""
    server, writes = weighed
    server.cpu_busy_seconds, server.monitor_interval = 20, 10
    server._demand, server.cpu_weight = IdleTracker(0), 100
    demand = 0.0

    def check(t, used):
        nonlocal demand
        demand += used
        server._demand.add(t, demand, float("inf"), 40)
        server._prioritize(t)

    server._tracker = IdleTracker(0)
    server.cpu_start_weight_seconds = 60
    server._spawn_pending = True
    for t in range(0, 60, 10):  # a minute of start-up at a whole core
        check(t, 10.0)
    assert writes == [400]
    server._spawn_pending = False
    check(60, 10.0)  # the kernel starts; then the student thinks
    check(70, 1.0)
    check(80, 1.0)
    assert server.cpu_weight == 100 and writes == [400, 100], writes


def test_a_start_that_never_gets_ready_loses_its_precedence(weighed):
    """A student who keeps their own server from getting ready while it hogs
    a core keeps the start's weight for `cpu_start_weight_seconds` only, and
    is then judged busy like any other server."""
    server, writes = weighed
    server.cpu_busy_seconds, server.monitor_interval, server.cpu_start_weight_seconds = 20, 10, 30
    server._tracker, server._demand, server.cpu_weight = IdleTracker(0), IdleTracker(0), 100
    server._spawn_pending = True
    demand = 0.0
    for t in range(0, 100, 10):  # never ready, a whole core all along
        demand += 10.0
        server._demand.add(t, demand, float("inf"), 40)
        server._prioritize(t)
        if t == 20:
            assert writes == [400]
    assert writes == [400, 100, 10], writes


async def test_a_server_that_exits_after_the_port_wait_fails_the_start_at_once(app, synced):
    """Seen in the class day: a server starved of CPU found its port taken
    and exited after `start` had stopped watching it (`port_wait_timeout`);
    the hub then waited its whole `http_timeout` for a server that was gone.
    Now the exit ends the hub's wait, with the server's exit status."""
    spawner = app.users[EXITING].spawner
    spawner.cmd = ["/bin/sh", "-c", "sleep 4; exit 3"]
    spawner.port_wait_timeout, spawner.http_timeout = 1, 60
    try:
        began = time.monotonic()
        r = await api_request(app, f"users/{EXITING}/server", method="post")
        assert app.users[EXITING].spawner is spawner
        while r.status_code == 202 and (spawner.pending or spawner._spawn_future and not spawner._spawn_future.done()):
            assert time.monotonic() - began < 30, "the hub kept waiting for a server that had exited"
            await asyncio.sleep(0.1)
        took = time.monotonic() - began
        assert r.status_code != 201 and not spawner.active, r.text
        failure = spawner._spawn_future.exception() if spawner._spawn_future else None
        assert "exited with status 3" in str(failure), failure
        assert 4 <= took < 30, took
    finally:
        if app.users[EXITING].spawner.active:
            await stop(app, EXITING)


async def test_a_server_slower_than_the_port_wait_still_starts(app, synced):
    """`start` returns before the server listens (here at once): the hub's
    own wait, watched for the process's exit, still finds it at its port."""
    spawner = app.users[WORKER].spawner
    spawner.port_wait_timeout = 0
    try:
        assert await start(app, WORKER) is spawner
        assert (await server_api(app, WORKER, "status")).status_code == 200
    finally:
        spawner.port_wait_timeout = 10
        await stop(app, WORKER)
