"""ClassroomSlurmSpawner on a real Slurm cluster (tests/fixtures/slurm.py: a
slurmctld and two slurmd nodes on this machine, Slurm's cgroup limits), with
a real hub and proxy, real system users and the real single-user server.

A person's tier becomes the job's ``--mem``, ``--cpus-per-task``, ``--time``,
partition and account (read back with ``scontrol show job``); the job's
processes are the student's and sit in Slurm's cgroup with that memory
limit; a kernel that allocates past it is killed by that cgroup while the
server lives; stopping cancels the job and leaves nothing on the node; two
students run on the two nodes at once, the one in a course on the course's
account (JupyterHub's group_overrides); a demotion in the roster changes
the next job. The job's usage (sstat) reaches the usage API, the CLI's
table and Prometheus; an idle job is cancelled, a busy one kept; a job that
Slurm ends (time limit, an operator's scancel) is told to its owner on the
hub's pages; the hub's queries cannot be stalled by the student; shared
environments and the named-server limit apply as on one machine. (Late
joiners with the real classroom service: test_slurm_service.py.)
"""

import asyncio
import json
import os
import pwd
import signal
import threading
import time
import uuid

import pytest
import requests
from batchspawner import SlurmSpawner
from jupyterhub.tests.utils import api_request, public_url
from prometheus_client import generate_latest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from classroomhub.cli.usage import format_usage
from classroomhub.environments.layout import Layout, write_json_atomic
from classroomhub.slurm import ClassroomSlurmSpawner, SlurmCommandTimeout, slurm_time
from classroomhub.slurm.commands import parse_job_id
from classroomhub.spawner.notices import ended_notice

from conftest import write_roster
from fixtures.slurm import slurm_hub_config, start_server, stop_server

pytestmark = pytest.mark.root("starts a Slurm cluster and servers as system users")
E2E_FIXTURES = {"slurm_cluster"}

STUDENT, CLASSMATE, RESEARCHER = "slstu", "slsam", "slpia"
PEOPLE = [STUDENT, CLASSMATE, RESEARCHER]
MiB = 1024**2

ROSTER = f"""\
users:
  admin: {{tier: root}}
  {STUDENT}: {{}}
  {CLASSMATE}: {{}}
  {RESEARCHER}: {{tier: power}}
courses:
  data101:
    students: [{CLASSMATE}]
"""
DEMOTED = ROSTER.replace(f"{RESEARCHER}: {{tier: power}}", f"{RESEARCHER}: {{}}")

# what each tier's job must ask for (the nodes have 2 CPUs and 2048 MB each)
STUDENT_JOB = {"mem": "512M", "cpu": "1", "time": "01:00:00", "partition": "classroom", "account": "teaching"}
POWER_JOB = {"mem": "1G", "cpu": "2", "time": "02:00:00", "partition": "research", "account": "research"}


def HUB_CONFIG(c):
    slurm_hub_config(c)
    c.Spawner.poll_interval = 5  # the hub notices a job Slurm ended within seconds
    c.JupyterHub.allow_named_servers = True
    c.ClassroomSlurmSpawner.monitor_interval = 2  # a usage sample (sstat) every 2 s
    # a course's students bill their jobs to the course's account
    c.ClassroomSlurmSpawner.group_overrides = {
        "data101": {"groups": ["course-data101-students"], "spawner_override": {"req_account": "data101"}},
    }
    c.ClassroomSlurmSpawner.tier_settings = {
        "student": {
            "mem_limit": 512 * MiB,
            "cpu_limit": 1.0,
            "max_age": 3600,
            "req_partition": "classroom",
            "req_account": "teaching",
        },
        "power": {
            "mem_limit": 1024 * MiB,
            "cpu_limit": 2.0,
            "max_age": 7200,
            "req_partition": "research",
            "req_account": "research",
        },
    }


@pytest.fixture(scope="module", autouse=True)
def cluster(slurm_cluster, accounts, monkeypatch_module):
    """The cluster, with the hub (in this process) pointed at its slurm.conf;
    the system users exist before the hub starts."""
    monkeypatch_module.setenv("SLURM_CONF", slurm_cluster.conf)
    return slurm_cluster


@pytest.fixture(autouse=True)
def cleanup_after():
    """Replaces jupyterhub's per-test cleanup (it stops servers with a mock's
    assumptions): each test stops its own servers."""
    yield


async def status_through_proxy(app, name):
    """The server's own /api/status, through the proxy, with the owner's token."""
    token = app.users[name].new_api_token(note="slurm test")
    url = public_url(app, app.users[name]) + "api/status"
    r = await asyncio.to_thread(requests.get, url, headers={"Authorization": f"token {token}"}, timeout=30)
    return r.status_code


def job_processes(cluster, job):
    """{pid: (uid, cmdline, environ)} of every process in the job's cgroups."""
    uid = int(job["UserId"].split("(")[1].rstrip(")"))
    top = cluster.job_cgroup("memory", uid, job["JobId"], job["BatchHost"])
    found = {}
    for folder, _, _ in os.walk(top):
        with open(os.path.join(folder, "cgroup.procs")) as f:
            for pid in map(int, f.read().split()):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as c, open(f"/proc/{pid}/environ", "rb") as e:
                        cmd, env = c.read().replace(b"\0", b" ").decode(), e.read().split(b"\0")
                    found[pid] = (os.stat(f"/proc/{pid}").st_uid, cmd, env)
                except (FileNotFoundError, ProcessLookupError):
                    pass  # exited meanwhile
    return found


def processes_on_nodes(cluster, login):
    """*login*'s processes on the cluster's nodes (in any of their cgroups)."""
    uid = pwd.getpwnam(login).pw_uid
    return [pid for pid in cluster.pids_in_cgroups() if _uid(pid) == uid]


DAEMON = """
import os, subprocess
if os.fork() == 0:
    os.setsid()
    subprocess.Popen(["sleep", "997"], start_new_session=True)
    os._exit(0)
"""


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _uid(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:
        return None


def assert_job_asks_for(job, expected):
    tres = dict(item.split("=", 1) for item in job["TRES"].split(","))
    assert (tres["mem"], tres["cpu"], job["TimeLimit"], job["Partition"], job["Account"]) == (
        expected["mem"],
        expected["cpu"],
        expected["time"],
        expected["partition"],
        expected["account"],
    ), job


async def test_student_server_runs_as_a_job_with_the_tier_limits(app, cluster):
    await app.authenticator.sync_roster()
    spawner = await start_server(app, STUDENT)
    try:
        job = cluster.job(spawner.job_id)
        assert job["JobState"] == "RUNNING"
        assert job["UserId"].startswith(f"{STUDENT}(")
        assert job["BatchHost"] in cluster.nodes
        assert_job_asks_for(job, STUDENT_JOB)
        assert spawner.ip == "127.0.0.1"  # the node's NodeAddr, not its name
        assert await status_through_proxy(app, STUDENT) == 200

        # Slurm's cgroup holds the memory limit, and every process in it is the student's
        limit = cluster.job_cgroup("memory", pwd.getpwnam(STUDENT).pw_uid, job["JobId"], job["BatchHost"])
        with open(os.path.join(limit, "memory.limit_in_bytes")) as f:
            assert int(f.read()) == 512 * MiB
        procs = job_processes(cluster, job)
        # besides Slurm's own slurmstepd (root), only the student's processes
        users = {uid for uid, cmd, _ in procs.values() if not cmd.startswith("slurmstepd:")}
        assert users == {pwd.getpwnam(STUDENT).pw_uid}, procs
        server = [env for _, cmd, env in procs.values() if "jupyterhub-singleuser" in cmd]
        assert server, procs
        assert {b"MEM_LIMIT=%d" % (512 * MiB), b"CPU_LIMIT=1.0"} <= set(server[0])

        # the server's token, which its owner can read in the job, reports a port and nothing else:
        # batchspawner's own handler would set exec_prefix, a command the hub runs as root
        for body in ({"exec_prefix": "touch /tmp/slurm-pwned;"}, {"port": spawner.port, "batch_query_cmd": "id"}):
            r = await api_request(
                app, "batchspawner", method="post", data=json.dumps(body), headers={"Authorization": f"token {spawner.api_token}"}
            )
            assert r.status_code == 400, r.text
        assert (spawner.exec_prefix, spawner.batch_query_cmd) == ("runuser -u {username} --", ClassroomSlurmSpawner.batch_query_cmd.default_value)
    finally:
        await stop_server(app, STUDENT)


async def test_stop_cancels_the_job_and_leaves_nothing_on_the_node(app, cluster):
    spawner = await start_server(app, STUDENT)
    job_id, node = spawner.job_id, cluster.job(spawner.job_id)["BatchHost"]
    job_cgroup = cluster.job_cgroup("memory", pwd.getpwnam(STUDENT).pw_uid, job_id, node)
    # a daemon that leaves the server's process tree (double fork, new session)
    _, ws = await open_kernel(app, STUDENT)
    await run_code(ws, DAEMON)
    ws.close()
    daemon = await wait_for(lambda: [p for p in processes_on_nodes(cluster, STUDENT) if "sleep 997" in cmdline(p)], 30, "the daemon")
    assert os.getsid(daemon[0]) == daemon[0]
    await stop_server(app, STUDENT)
    deadline = time.monotonic() + 30
    while job_id in cluster.jobs() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert cluster.job(job_id)["JobState"] == "CANCELLED"
    assert processes_on_nodes(cluster, STUDENT) == []
    assert not os.path.exists(job_cgroup)


async def test_two_students_run_on_two_nodes_at_once(app, cluster):
    try:
        spawners = await asyncio.gather(start_server(app, STUDENT), start_server(app, CLASSMATE))
        jobs = [cluster.job(s.job_id) for s in spawners]
        assert all(job["JobState"] == "RUNNING" for job in jobs)
        assert {job["BatchHost"] for job in jobs} == set(cluster.nodes)
        # same tier, but the classmate's course overrides the account
        assert_job_asks_for(jobs[0], STUDENT_JOB)
        assert_job_asks_for(jobs[1], {**STUDENT_JOB, "account": "data101"})
        for name in (STUDENT, CLASSMATE):
            assert await status_through_proxy(app, name) == 200
    finally:
        await asyncio.gather(stop_server(app, STUDENT), stop_server(app, CLASSMATE))


async def test_a_demotion_changes_the_next_jobs_limits(app, cluster, roster_file):
    spawner = await start_server(app, RESEARCHER)
    try:
        assert_job_asks_for(cluster.job(spawner.job_id), POWER_JOB)
    finally:
        await stop_server(app, RESEARCHER)
    write_roster(roster_file, DEMOTED)
    try:
        app.authenticator.reload_roster(force=True)
        await app.authenticator.sync_roster()
        spawner = await start_server(app, RESEARCHER)
        try:
            assert spawner.tier == "student"
            assert_job_asks_for(cluster.job(spawner.job_id), STUDENT_JOB)
        finally:
            await stop_server(app, RESEARCHER)
    finally:
        write_roster(roster_file, ROSTER)
        app.authenticator.reload_roster(force=True)
        await app.authenticator.sync_roster()


async def test_a_kernel_over_its_memory_is_killed_by_slurms_cgroup_and_the_server_lives(app, cluster):
    spawner = await start_server(app, STUDENT)
    try:
        job = cluster.job(spawner.job_id)
        kernel_id, ws = await open_kernel(app, STUDENT)
        try:
            kernel_pid = await wait_for(lambda: kernel_pid_of(cluster, job, kernel_id), 60, "the kernel's process")
            await run_code(ws, f"hog = bytearray({700 * MiB}); hog[::4096] = b'x' * len(hog[::4096])")
            await wait_for(lambda: not os.path.exists(f"/proc/{kernel_pid}"), 60, "the kernel's end")
        finally:
            ws.close()
        assert oom_kills(cluster, job) >= 1
        assert spawner.job_id == job["JobId"] and cluster.job(job["JobId"])["JobState"] == "RUNNING"
        assert await status_through_proxy(app, STUDENT) == 200
        # jupyter_server restarts the kernel, in the same job
        await wait_for(lambda: kernel_pid_of(cluster, job, kernel_id) not in (None, kernel_pid), 60, "a restarted kernel")
    finally:
        await stop_server(app, STUDENT)


async def wait_for(probe, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        await asyncio.sleep(0.2)


async def open_kernel(app, name):
    """A new kernel of *name*'s server and a websocket to it, as JupyterLab
    opens them (through the proxy, with the owner's token): (id, websocket)."""
    token = app.users[name].new_api_token(note="slurm kernel test")
    url = public_url(app, app.users[name])
    headers = {"Authorization": f"token {token}"}
    r = await asyncio.to_thread(requests.post, url + "api/kernels", json={"name": "python3"}, headers=headers, timeout=60)
    assert r.status_code == 201, r.text
    kernel_id = r.json()["id"]
    ws_url = url.replace("http", "ws", 1) + f"api/kernels/{kernel_id}/channels"
    ws = await websocket_connect(HTTPRequest(ws_url, headers=headers))
    await wait_kernel_ready(ws)
    return kernel_id, ws


async def run_code(ws, code):
    await send(ws, "execute_request", {"code": code, "silent": False, "store_history": False})


async def send(ws, msg_type, content):
    header = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": STUDENT, "session": "slurm-test", "version": "5.3"}
    message = {"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell"}
    await ws.write_message(json.dumps(message))
    return header["msg_id"]


async def wait_kernel_ready(ws, timeout=60):
    """Ask for kernel_info until the kernel answers (a request sent while it
    starts may get no reply)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg_id = await send(ws, "kernel_info_request", {})
        try:
            while True:
                reply = json.loads(await asyncio.wait_for(ws.read_message(), 2))
                if reply.get("parent_header", {}).get("msg_id") == msg_id and reply["msg_type"] == "kernel_info_reply":
                    return
        except asyncio.TimeoutError:
            continue
    raise AssertionError(f"the kernel did not answer in {timeout} s")


def kernel_pid_of(cluster, job, kernel_id):
    pids = [pid for pid, (_, cmd, _) in job_processes(cluster, job).items() if "ipykernel" in cmd and kernel_id in cmd]
    return pids[0] if pids else None


def oom_kills(cluster, job):
    """OOM kills in the job's memory cgroups (cgroup v1's ``oom_kill`` counters)."""
    uid = int(job["UserId"].split("(")[1].rstrip(")"))
    total = 0
    for folder, _, _ in os.walk(cluster.job_cgroup("memory", uid, job["JobId"], job["BatchHost"])):
        with open(os.path.join(folder, "memory.oom_control")) as f:
            total += int(dict(line.split() for line in f).get("oom_kill", 0))
    return total


def test_slurm_time():
    assert slurm_time(3600) == "0-01:00:00"
    assert slurm_time(8 * 86400 + 61) == "8-00:01:01"


# -- usage, culling, end notices (what ClassroomSpawner's monitor does on one machine)


class personal_settings:
    """*values* as the owner's own ``user_settings`` (applied last at each
    start) on their spawner, for the test's duration."""

    def __init__(self, app, name, server="", **values):
        self.spawner = app.users[name].spawners[server] if server else app.users[name].spawner
        self.name, self.values = name, values

    def __enter__(self):
        self.before = self.spawner.user_settings
        self.spawner.user_settings = {**self.before, self.name: self.values}
        return self.spawner

    def __exit__(self, *exc):
        self.spawner.user_settings = self.before


async def usage_of(app, name):
    r = await api_request(app, "classroom/usage")
    assert r.status_code == 200, r.text
    return next((s for s in r.json()["servers"] if s["user"] == name), None)


async def wait_async(probe, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        await asyncio.sleep(0.5)


async def test_a_jobs_usage_from_sstat_in_the_api_the_cli_and_prometheus(app, cluster):
    spawner = await start_server(app, STUDENT)
    try:
        _, ws = await open_kernel(app, STUDENT)
        # 200 MiB kept, and about 6 s of CPU
        await run_code(ws, f"import time\nkeep = bytearray({200 * MiB}); keep[::4096] = b'x' * len(keep[::4096])\n"
                       "t = time.time()\nwhile time.time() - t < 6: pass")
        ws.close()

        async def busy_sample():
            s = await usage_of(app, STUDENT)
            return s if s and s["cpu_seconds"] >= 5 and s["mem_bytes"] >= 200 * MiB else None

        report = await wait_async(busy_sample, 60, "usage sample with the kernel's CPU and memory")
        assert report["enforcement"] == "slurm" and report["job_id"] == spawner.job_id
        assert report["mem_limit"] == 512 * MiB and report["cpu_limit"] == 1.0
        assert 200 * MiB <= report["mem_peak_bytes"] and report["mem_bytes"] < 512 * MiB
        assert report["procs"] is None and report["oom_kills"] is None  # Slurm does not say
        row = [line for line in format_usage([report]).splitlines() if line.startswith(STUDENT)]
        assert row and "512 MiB" in row[0], format_usage([report])
        # the series /hub/metrics serves
        metrics = generate_latest().decode()
        cpu = [line for line in metrics.splitlines() if line.startswith("classroomhub_server_cpu_seconds{") and f'user="{STUDENT}"' in line]
        assert cpu and float(cpu[0].split()[-1]) >= 5, cpu
    finally:
        await stop_server(app, STUDENT)
    assert await usage_of(app, STUDENT) is None
    assert f'classroomhub_server_cpu_seconds{{server="",user="{STUDENT}"}}' not in generate_latest().decode()


SLURM_COMMANDS = {"squeue", "sstat", "scancel", "scontrol", "sacct"}


async def test_a_student_cannot_stall_the_hubs_slurm_commands(app, cluster):
    """The student stops (SIGSTOP) every Slurm command running under their
    uid, as a loop in their shell could: batchspawner ran squeue that way and
    waited forever; the hub now queries as itself, and kills any command at
    its time limit."""
    spawner = await start_server(app, STUDENT)
    uid = pwd.getpwnam(STUDENT).pw_uid
    done, stopped = threading.Event(), set()

    def hostile():
        while not done.is_set():
            for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        name = f.read().strip()
                    if name in SLURM_COMMANDS and os.stat(f"/proc/{pid}").st_uid == uid:
                        os.kill(pid, signal.SIGSTOP)
                        stopped.add(pid)
                except (FileNotFoundError, ProcessLookupError):
                    pass
            time.sleep(0.002)

    thread = threading.Thread(target=hostile, daemon=True)
    thread.start()
    try:
        # batchspawner's own query runs squeue as the student: it stalls
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(SlurmSpawner.query_job_status(spawner), 5)
        assert stopped, "the student's loop stopped nothing"
        # ours does not
        for _ in range(3):
            assert await asyncio.wait_for(spawner.poll(), 20) is None
            assert await asyncio.wait_for(spawner.job_usage(), 20) is not None
        # and a command that hangs is killed at the time limit, with what it started
        spawner.slurm_command_timeout = 1
        t0 = time.monotonic()
        with pytest.raises(SlurmCommandTimeout):
            await spawner.run_command(f"runuser -u {STUDENT} -- sleep 987")
        assert time.monotonic() - t0 < 5
        await wait_for(lambda: not any("sleep 987" in cmdline(p) for p in map(int, filter(str.isdigit, os.listdir("/proc")))), 5, "end of the stalled command")
    finally:
        done.set()
        thread.join()
        spawner.slurm_command_timeout = ClassroomSlurmSpawner.slurm_command_timeout.default_value
        await stop_server(app, STUDENT)


async def test_an_idle_job_is_cancelled_and_a_busy_one_kept(app, cluster):
    with personal_settings(app, STUDENT, idle_timeout=30), personal_settings(app, CLASSMATE, idle_timeout=30):
        busy, idle = await asyncio.gather(start_server(app, STUDENT), start_server(app, CLASSMATE))
        idle_job = idle.job_id
        try:
            _, ws = await open_kernel(app, STUDENT)
            await run_code(ws, "import time\nt = time.time()\nwhile time.time() - t < 150: pass")
            ws.close()  # the tab is closed: no hub activity from here on
            t0 = time.monotonic()
            await wait_for(lambda: not idle.active, 120, "cull of the idle job")
            assert time.monotonic() - t0 >= 20
            assert cluster.job(idle_job)["JobState"] == "CANCELLED"
            assert busy.active and cluster.job(busy.job_id)["JobState"] == "RUNNING", "the busy job was culled"
            assert busy.idle_seconds() < 30
            # the hub stopped it: no "Slurm ended your server" notice
            assert ended_notice(app.users[CLASSMATE]) == ""
        finally:
            await asyncio.gather(stop_server(app, STUDENT), stop_server(app, CLASSMATE))


async def test_a_job_slurm_ends_is_told_to_its_owner(app, cluster):
    """A time limit (a one-minute ``--time``), an operator's scancel, a
    node that fails (set DOWN by the operator) and preemption by a job of a
    partition of higher priority end the jobs; the hub's poll
    reads the end state and the owners see why on the hub's pages. A job is
    never requeued: restarted elsewhere, its server would have an address
    the hub does not know."""
    announcement = app.tornado_settings["template_vars"]["announcement"]
    with personal_settings(app, STUDENT, max_age=60, idle_timeout=0), personal_settings(app, CLASSMATE, idle_timeout=0):
        timed, cancelled = await asyncio.gather(start_server(app, STUDENT), start_server(app, CLASSMATE))
        try:
            assert cluster.job(timed.job_id)["TimeLimit"] == "00:01:00"
            job = cancelled.job_id
            cluster.run("scancel", job)  # an operator, on the cluster
            await wait_for(lambda: not cancelled.active, 30, "the hub noticing the cancelled job")
            assert f"Slurm job {job}, CANCELLED" in ended_notice(app.users[CLASSMATE])
            assert "was cancelled on the cluster" in announcement(app.users[CLASSMATE])
            # again, on the other node than the timed job's, which then fails
            node = next(n for n in cluster.nodes if n != cluster.job(timed.job_id)["BatchHost"])
            with personal_settings(app, CLASSMATE, idle_timeout=0, req_options=f"--nodelist={node}"):
                failed = await start_server(app, CLASSMATE)
            job = failed.job_id
            assert cluster.job(job)["Requeue"] == "0"
            try:
                cluster.run("scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=slurm-test")
                await wait_for(lambda: not failed.active, 60, "the hub noticing the failed node")
                assert cluster.job(job)["JobState"] == "NODE_FAIL"
                assert f"Slurm job {job}, NODE_FAIL" in announcement(app.users[CLASSMATE])
            finally:
                cluster.run("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False)
                await wait_for(lambda: cluster.node_states().get(node) == "idle", 60, f"{node} idle again")
            # again, and a research job (a partition of higher priority) needs both CPUs of its node
            with personal_settings(app, CLASSMATE, idle_timeout=0, req_options=f"--nodelist={node}"):
                preempted = await start_server(app, CLASSMATE)
            job = preempted.job_id
            research = cluster.run(
                "sbatch", "--parsable", "--partition=research", f"--nodelist={node}", "--cpus-per-task=2", "--mem=64M",
                "--output=/dev/null", "--chdir=/tmp", "--wrap=sleep 600",
            ).strip()
            try:
                await wait_for(lambda: not preempted.active, 60, "the hub noticing the preempted job")
                assert cluster.job(job)["JobState"] == "PREEMPTED"
                assert f"Slurm job {job}, PREEMPTED" in announcement(app.users[CLASSMATE])
            finally:
                cluster.run("scancel", research, check=False)
            job = timed.job_id
            await wait_for(lambda: not timed.active, 150, "the end of the time limit")
            # (scontrol may still say COMPLETING while the node cleans up)
            await wait_for(lambda: cluster.job(job)["JobState"] == "TIMEOUT", 30, "the job's TIMEOUT state")
            notice = announcement(app.users[STUDENT])
            assert "Your server reached its time limit" in notice and f"Slurm job {job}, TIMEOUT" in notice
            assert ended_notice(app.users[RESEARCHER]) == ""
        finally:
            await asyncio.gather(stop_server(app, STUDENT), stop_server(app, CLASSMATE))
            for name in (STUDENT, CLASSMATE):  # the notices are the test's
                app.users[name].spawner.ended = []
                app.users[name].spawner.orm_spawner.state = app.users[name].spawner.get_state()
            app.db.commit()


async def test_a_job_that_outlives_a_hub_restart_is_watched_again(app, cluster):
    """What a hub restart does: the spawner objects are gone and the hub
    rebuilds them from its database (load_state) and polls them (JupyterHub's
    own init_spawners). The new spawner samples the same job again, with the
    owner's settings re-applied."""
    before = await start_server(app, STUDENT)
    try:
        await wait_for(lambda: before.usage, 30, "a first usage sample")
        user = app.users[STUDENT]
        before.stop_polling()
        before._stop_monitor()
        user.spawners.pop("")
        app.db.expire_all()
        await app.init_spawners()
        after = user.spawner
        assert after is not before and after.active and after.job_id == before.job_id
        await wait_for(lambda: after.usage, 30, "a usage sample after the restart")
        assert after.mem_limit == 512 * MiB  # the student tier's, re-applied (not in the saved state)
        report = await usage_of(app, STUDENT)
        assert report["job_id"] == before.job_id and report["cpu_seconds"] > 0
    finally:
        await stop_server(app, STUDENT)
    assert cluster.job(before.job_id)["JobState"] == "CANCELLED"


async def test_shared_environments_and_the_named_server_limit_apply_to_jobs(app, cluster, tmp_path):
    data = tmp_path / "hubdata"
    layout = Layout(data / "environments")
    for name, audience, default in (("base", ["everyone"], True), ("data101", ["course:data101"], False), ("other", ["course:x9"], False)):
        os.makedirs(layout.kernels_dir(name, 1))
        write_json_atomic(layout.declaration(name), {"name": name, "packages": ["ipykernel"], "audience": audience, "default": default})
        layout.switch(name, 1)
    with personal_settings(app, CLASSMATE, environments_data_dir=str(data)):
        spawner = await start_server(app, CLASSMATE)
        try:
            server = [env for _, cmd, env in job_processes(cluster, cluster.job(spawner.job_id)).values() if "jupyterhub-singleuser" in cmd]
            env = dict(item.split(b"=", 1) for item in server[0] if b"=" in item)
            assert env[b"JUPYTER_PATH"].decode().split(os.pathsep)[:2] == [layout.kernels_dir("base"), layout.kernels_dir("data101")]
            assert env[b"PATH"].decode().startswith(f"{data}/environments/base/1/bin{os.pathsep}")
        finally:
            await stop_server(app, CLASSMATE)
    # a student's tier allows no named server: refused before any job
    r = await api_request(app, f"users/{STUDENT}/servers/extra", method="post")
    assert r.status_code >= 400 and "allows 0 named server" in r.text, r.text
    assert cluster.run("squeue", "-h", "-u", STUDENT, "-o", "%i").strip() == ""


# -- the job id the hub records (security review F2) -------------------------------------------


def test_the_job_id_parser_takes_one_line_of_ascii_digits_only():
    assert parse_job_id("12\n") == "12" and parse_job_id("12;cluster") == "12"
    for tampered in (" 12", "1_2", "١٢", "12\n13", "12\n\n13", "", "\n", "12 ", "+12", "12;"):
        with pytest.raises(ValueError, match="one job id"):
            parse_job_id(tampered)


class tampered_sbatch:
    """The student's sbatch answers with *answer* (a shell command's output)
    instead of, or after, its own line. sbatch runs as the student (runuser),
    who may ptrace it (no Yama here) and have it print anything: a command
    appended in the submit command stands in for that, since it changes
    only what the hub reads from sbatch's stdout, which is all ptrace can
    change here (the job itself is submitted by the real sbatch)."""

    def __init__(self, app, name, suffix):
        # *name*'s spawner now, and the config of the one that replaces it after a failed start
        self.user, self.config, self.suffix = app.users[name], app.config.ClassroomSlurmSpawner, suffix

    def __enter__(self):
        assert "batch_submit_cmd" not in self.config  # the test hub keeps the default
        self.user.spawner.batch_submit_cmd = self.config.batch_submit_cmd = DEFAULT_SUBMIT + self.suffix

    def __exit__(self, *exc):
        del self.config["batch_submit_cmd"]
        self.user.spawner.batch_submit_cmd = DEFAULT_SUBMIT


DEFAULT_SUBMIT = ClassroomSlurmSpawner.batch_submit_cmd.default_value


async def failed_start(app, name, timeout=120):
    """Ask for *name*'s server and wait until the spawn ends; its spawner.
    (A spawn that fails within the request is JupyterHub's 500.)"""
    r = await api_request(app, f"users/{name}/server", method="post")
    assert r.status_code in (201, 202, 500), r.text
    spawner = app.users[name].spawner
    deadline = time.monotonic() + timeout
    while spawner.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return spawner


async def test_a_student_cannot_make_the_hub_cancel_someone_elses_job(app, cluster):
    """A research job (root's) runs; the student's sbatch answers with its id
    after its own line, or instead of it (or fails after queuing its job).
    The spawn fails, nothing of the student's is left queued, and the
    research job survives the student's stop, the hub's queries and cancels
    for the student (before the fix:
    the hub recorded the research job, polled it as the student's and
    scancel'ed it as root at the stop)."""
    victim = cluster.run("sbatch", "--parsable", "-p", "research", "-J", "sfvictim", "--wrap", "sleep 900").strip()
    spawner = app.users[STUDENT].spawner
    try:
        await wait_for(lambda: cluster.job(victim).get("JobState") == "RUNNING", 30, "the research job running")
        # after its own line, instead of it, or with a failure once the job is queued
        for suffix in (f"; echo {victim}", f" >/dev/null; echo {victim}", "; false"):
            with tampered_sbatch(app, STUDENT, suffix):
                spawner = await failed_start(app, STUDENT)
                assert not spawner.ready, f"a spawn with {suffix!r} was taken"
                await stop_server(app, STUDENT)
            assert spawner.job_id != victim
            assert cluster.job(victim).get("JobState") == "RUNNING", (suffix, cluster.job(victim))
            await wait_for(lambda: cluster.run("squeue", "-h", "-u", STUDENT, "-o", "%i").strip() == "", 30, "the student's real job cancelled")
        # an id recorded by any other means reaches nothing of the victim's either
        spawner = app.users[STUDENT].spawner
        spawner.job_id = victim
        assert await spawner.job_usage() is None
        await spawner.cancel_batch_job()
        assert await spawner.poll() == 1 and not spawner.job_id
        assert cluster.job(victim).get("JobState") == "RUNNING", cluster.job(victim)
    finally:
        spawner.job_id = ""
        cluster.run("scancel", victim, check=False)
    # a well-formed spawn still works, and its job carries the start's nonce
    spawner = await start_server(app, STUDENT)
    try:
        job = cluster.job(spawner.job_id)
        assert job["JobState"] == "RUNNING" and job["Comment"] == spawner.job_nonce and len(spawner.job_nonce) == 32
        assert job["UserId"].startswith(f"{STUDENT}(")
    finally:
        await stop_server(app, STUDENT)
