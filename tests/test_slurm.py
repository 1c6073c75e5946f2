"""ClassroomSlurmSpawner on a real Slurm cluster (tests/fixtures/slurm.py: a
slurmctld and two slurmd nodes on this machine, Slurm's cgroup limits), with
a real hub and proxy, real system users and the real single-user server.

A person's tier becomes the job's ``--mem``, ``--cpus-per-task``, ``--time``,
partition and account (read back with ``scontrol show job``); the job's
processes are the student's and sit in Slurm's cgroup with that memory
limit; stopping cancels the job and leaves nothing on the node; two students
run on the two nodes at once; a demotion in the roster changes the next job.
"""

import asyncio
import os
import pwd
import sys
import time

import pytest
import requests
from jupyterhub.tests.utils import api_request, public_url

from classroomhub.slurm import ClassroomSlurmSpawner, slurm_time

from conftest import write_roster

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
"""
DEMOTED = ROSTER.replace(f"{RESEARCHER}: {{tier: power}}", f"{RESEARCHER}: {{}}")

# what each tier's job must ask for (the nodes have 2 CPUs and 2048 MB each)
STUDENT_JOB = {"mem": "512M", "cpu": "1", "time": "01:00:00", "partition": "classroom", "account": "teaching"}
POWER_JOB = {"mem": "1G", "cpu": "2", "time": "02:00:00", "partition": "research", "account": "research"}
BIN = os.path.dirname(sys.executable)


def HUB_CONFIG(c):
    c.JupyterHub.spawner_class = ClassroomSlurmSpawner
    c.Spawner.cmd = [os.path.join(BIN, "jupyterhub-singleuser")]
    c.Spawner.start_timeout = 90
    c.Spawner.http_timeout = 60
    # sbatch gets the spawner's environment only: it must find this cluster's slurm.conf
    c.Spawner.env_keep = ["PATH", "LANG", "LC_ALL", "SLURM_CONF"]
    c.ClassroomSlurmSpawner.batchspawner_singleuser_cmd = os.path.join(BIN, "batchspawner-singleuser")
    c.ClassroomSlurmSpawner.job_listen_ip = "127.0.0.1"  # every node is this host
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


async def start_server(app, name, timeout=90):
    r = await api_request(app, f"users/{name}/server", method="post")
    assert r.status_code in (201, 202), r.text
    spawner = app.users[name].spawner
    deadline = time.monotonic() + timeout
    while not spawner.ready:
        assert spawner.pending or spawner.ready, f"{name}'s server failed to start"
        assert time.monotonic() < deadline, f"{name}'s server not ready in {timeout} s"
        await asyncio.sleep(0.1)
    return spawner


async def stop_server(app, name, timeout=60):
    spawner = app.users[name].spawner
    if not (spawner.active or spawner.pending):
        return
    await api_request(app, f"users/{name}/server", method="delete")
    deadline = time.monotonic() + timeout
    while spawner.active and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not spawner.active, f"{name}'s server did not stop in {timeout} s"


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


def processes_of(login):
    uid = pwd.getpwnam(login).pw_uid
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _uid(p) == uid]


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
    finally:
        await stop_server(app, STUDENT)


async def test_stop_cancels_the_job_and_leaves_nothing_on_the_node(app, cluster):
    spawner = await start_server(app, STUDENT)
    job_id, node = spawner.job_id, cluster.job(spawner.job_id)["BatchHost"]
    job_cgroup = cluster.job_cgroup("memory", pwd.getpwnam(STUDENT).pw_uid, job_id, node)
    assert processes_of(STUDENT)
    await stop_server(app, STUDENT)
    deadline = time.monotonic() + 30
    while job_id in cluster.jobs() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert cluster.job(job_id)["JobState"] == "CANCELLED"
    assert processes_of(STUDENT) == []
    assert not os.path.exists(job_cgroup)


async def test_two_students_run_on_two_nodes_at_once(app, cluster):
    try:
        spawners = await asyncio.gather(start_server(app, STUDENT), start_server(app, CLASSMATE))
        jobs = [cluster.job(s.job_id) for s in spawners]
        assert all(job["JobState"] == "RUNNING" for job in jobs)
        assert {job["BatchHost"] for job in jobs} == set(cluster.nodes)
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


def test_slurm_time():
    assert slurm_time(3600) == "0-01:00:00"
    assert slurm_time(8 * 86400 + 61) == "8-00:01:01"
