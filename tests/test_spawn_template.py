"""Servers forked from the spawn template (``spawn_method = "template"``):
a real hub and proxy, real system users, real cgroup v1 limits, real kernels.
The template's memory is read as root after real students were spawned, to
prove it holds nothing of them; a template that reads the request before it
forks is caught by the same probe."""

import asyncio
import os
import pwd
import re
import secrets
import signal
import subprocess
import sys
import time

import psutil
import pytest
from jupyterhub.spawner import SimpleLocalProcessSpawner
from jupyterhub.tests.utils import public_url

from classroomhub.demo import free_ports
from classroomhub.spawner import Host, detect
from classroomhub.spawner.enforcement import EnforcementUnavailable
from classroomhub.spawner.template import Template
from classroomhub.spawner.template_env import differs

from conftest import login
from fixtures.example_hub import proxy_path
from fixtures.real_hub import start_hub, stop_hub, wait_until_answers

from fixtures.servers import (
    group_dirs,
    group_pids,
    kernel_client,
    kernel_pids_of,
    kill_a_kernel_for_memory,
    server_api,
    start,
    start_kernel,
    stop,
)

TAG = "ft" + secrets.token_hex(2)
S1, S2, S3, S4, BROKEN, R1, R2 = (f"{TAG}-s{i}" for i in range(1, 8))
PEOPLE = [S1, S2, S3, S4, BROKEN, R1, R2]
REAL_PARENT = f"ft-{TAG}-real"  # the real hub's cgroups
CGROUP_PARENT = f"ft-{TAG}"
MEM_LIMIT = 256 * 1024**2
SCRIPT = os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")

ROSTER = "users:\n  admin: {tier: root}\n" + "".join(f"  {name}: {{}}\n" for name in PEOPLE)

# A template that reads each request itself and only then forks: what the
# design forbids. The memory probe must find the students in it.
BROKEN_TEMPLATE = """
import socket, sys
from classroomhub.spawner import template_process as t
kept, read = [], t.read_request
def spawn_after_reading(conn_fd, context):
    sock = socket.socket(fileno=conn_fd)
    request = read(sock)
    kept.append(request)
    t.read_request = lambda conn: request
    t.spawn_first(sock.detach(), context)
t.spawn_first, t.spawn = t.spawn, spawn_after_reading
t.main()
"""


def _cgroups_writable():
    try:
        backend, _ = detect("cgroup-v1", cgroup_parent=CGROUP_PARENT)
    except EnforcementUnavailable as e:
        return f"needs writable cgroup v1 controllers: {e}"
    for folder in set(backend.bases.values()):
        os.rmdir(folder)
    return None


_skip = _cgroups_writable() if os.geteuid() == 0 else None
pytestmark = [
    pytest.mark.root("creates system users and cgroups, forks servers as them"),
    pytest.mark.skipif(_skip is not None, reason=_skip or ""),
]


def HUB_CONFIG(c):
    c.JupyterHub.spawner_class = "classroomhub.ClassroomSpawner"
    c.Spawner.cmd = [SCRIPT]
    c.Spawner.start_timeout = 60
    c.Spawner.http_timeout = 60
    c.ClassroomSpawner.spawn_method = "template"
    c.ClassroomSpawner.cgroup_parent = CGROUP_PARENT
    c.ClassroomSpawner.create_system_users = True
    c.ClassroomSpawner.monitor_interval = 0.5
    c.ClassroomSpawner.memory_reserve = 0
    c.ClassroomSpawner.tier_settings = {
        "student": {"mem_limit": MEM_LIMIT, "cpu_limit": 0.5, "idle_timeout": 0, "max_age": 0},
    }


@pytest.fixture(scope="module", autouse=True)
def clean_up():
    yield
    Template.stop_current()
    for login_name in PEOPLE:
        try:
            entry = pwd.getpwnam(login_name)
        except KeyError:
            continue
        if entry.pw_gecos == "classroomhub user":
            subprocess.run(["pkill", "-KILL", "-u", login_name], check=False)
            subprocess.run(["userdel", "--remove", login_name], check=False, stderr=subprocess.DEVNULL)
    for parent in (CGROUP_PARENT, REAL_PARENT):
        backend, _ = detect("cgroup-v1", cgroup_parent=parent)
        for key in backend.keys():
            asyncio.run(backend.destroy(key))
        backend.remove_parent()


@pytest.fixture
def broken_template(monkeypatch):
    """The next template is the broken variant; the current one is closed."""
    Template.stop_current()
    monkeypatch.setattr(Template, "command", (sys.executable, "-P", "-c", BROKEN_TEMPLATE))
    yield
    Template.stop_current()


def status_ids(pid):
    """``(uids, gids, supplementary groups)`` of *pid*, from /proc."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return (
        {int(x) for x in fields["Uid"].split()},
        {int(x) for x in fields["Gid"].split()},
        {int(x) for x in fields["Groups"].split()},
    )


def environ(pid):
    items = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(item.decode().split("=", 1) for item in items if b"=" in item)


def socket_inodes(pid):
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def memory_of(pid):
    """Every readable mapping of *pid*'s memory, read as root."""
    chunks = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                chunks.append(mem.read(end - start))
            except (OSError, ValueError, OverflowError):
                continue
    return b"\0".join(chunks)


def secrets_of(app, name):
    """What of *name* must never be in the template: API token, login, home."""
    spawner = app.users[name].spawner
    return {
        "token": spawner.api_token.encode(),
        "name": name.encode(),
        "home": pwd.getpwnam(name).pw_dir.encode(),
    }


async def test_a_forked_server_is_the_student_in_their_cgroup(app, synced):
    spawner = await start(app, S1)
    try:
        template = Template._current
        assert template is not None and template.alive
        assert spawner.proc is None and spawner._template_child.pid == spawner.pid
        server = psutil.Process(spawner.pid)
        assert server.ppid() == template.pid
        assert psutil.Process(template.pid).uids().real == 0
        # ps and pgrep show the server's own command, not the template's
        title = open(f"/proc/{spawner.pid}/cmdline").read().replace("\0", " ")
        assert title.startswith(SCRIPT + " ") and "template_process" not in title, title
        entry = pwd.getpwnam(S1)
        uids, gids, groups = status_ids(spawner.pid)
        assert uids == {entry.pw_uid} and gids == {entry.pw_gid}
        assert groups == set(os.getgrouplist(S1, entry.pw_gid))
        assert server.cwd() == entry.pw_dir
        assert os.getsid(spawner.pid) == spawner.pid  # its own session
        # in every hierarchy's group, with the tier's limit
        for folder in group_dirs(spawner):
            assert str(spawner.pid) in open(os.path.join(folder, "cgroup.procs")).read().split()
        memory_dir = next(d for d in group_dirs(spawner) if "/memory/" in d)
        assert int(open(os.path.join(memory_dir, "memory.limit_in_bytes")).read()) == MEM_LIMIT
        # nothing of the template's is open in the server: no way to ask it for a spawn
        assert not socket_inodes(spawner.pid) & socket_inodes(template.pid)
        # the request's environment reached the server (its kernels inherit it)
        kernel_id = await start_kernel(app, S1)
        await kernel_client(S1, kernel_id)
        (kernel,) = kernel_pids_of(spawner, kernel_id)
        env = environ(kernel)
        assert env["JUPYTERHUB_API_TOKEN"] == spawner.api_token and env["HOME"] == entry.pw_dir
        assert env["MEM_LIMIT"] == str(MEM_LIMIT) and env["CLASSROOMHUB_SERVER_KEY"] == spawner.group_key
        r = await server_api(app, S1, "status")
        assert r.status_code == 200, r.text
    finally:
        await stop(app, S1)


async def test_what_imports_derive_from_the_environment_is_the_students(app, synced):
    """JupyterHub's HubAuth takes the cookie path of a server's login from
    JUPYTERHUB_SERVICE_PREFIX, JupyterLab its settings folder from HOME, at
    import. A forked server has its owner's: their login cookie is sent to
    their server only (not to every other student's server under /user/),
    and their settings are saved in their home."""
    spawner = await start(app, S3)
    try:
        session, _ = await login(app, S3)
        r = await session.get(public_url(app, app.users[S3]) + "lab", allow_redirects=True)
        assert r.status_code == 200 and r.url.endswith("/lab"), (r.status_code, r.url)
        cookies = {c.name: c for c in session.cookies}
        cookie = cookies[f"jupyterhub-user-{S3}"]
        assert cookie.path == spawner.server.base_url, cookie.path
        plugin = "@jupyterlab/apputils-extension:themes"
        r = await server_api(app, S3, "../lab/api/settings/" + plugin, "PUT", json={"raw": '{"theme": "JupyterLab Dark"}'})
        assert r.status_code == 204, r.text
        saved = os.path.join(
            pwd.getpwnam(S3).pw_dir, ".jupyter/lab/user-settings/@jupyterlab/apputils-extension/themes.jupyterlab-settings"
        )
        assert os.stat(saved).st_uid == pwd.getpwnam(S3).pw_uid
    finally:
        await stop(app, S3)


async def test_the_tier_limit_kills_the_kernel_and_the_server_lives(app, synced):
    spawner = await start(app, S2)
    try:
        await kill_a_kernel_for_memory(app, S2, spawner, 2 * MEM_LIMIT)
        await spawner.check()
        assert spawner.oom_kills >= 1
        assert await spawner.poll() is None
        r = await server_api(app, S2, "status")
        assert r.status_code == 200, r.text
    finally:
        await stop(app, S2)


async def test_stop_leaves_nothing_and_a_dead_server_is_no_zombie(app, synced):
    spawner = await start(app, S1)
    await start_kernel(app, S1)
    await asyncio.sleep(1)
    pids, folders = group_pids(spawner), group_dirs(spawner)
    assert len(pids) >= 2
    await stop(app, S1)
    assert not [p for p in pids if psutil.pid_exists(p)]  # reaped, not zombies
    assert not any(os.path.exists(d) for d in folders)
    # a server that dies on its own: the template reaps it at once, the
    # hub's poll reports its status and removes what it left
    spawner = await start(app, S1)
    await start_kernel(app, S1)
    await asyncio.sleep(1)
    pid, pids, folders = spawner.pid, group_pids(spawner), group_dirs(spawner)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid):
        assert time.monotonic() < deadline, f"server {pid} left as {psutil.Process(pid).status()}"
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + 10
    while (status := await spawner.poll()) is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert status == -signal.SIGKILL
    assert not [p for p in pids if psutil.pid_exists(p)]
    assert not any(os.path.exists(d) for d in folders)
    deadline = time.monotonic() + 30
    while app.users[S1].spawner.active:  # the hub's own poll notices too
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)


async def test_the_template_holds_nothing_of_the_students(app, synced):
    """Three students spawned at once: their tokens, logins and homes are in
    their servers and nowhere in the template."""
    names = [S1, S2, S3]
    await asyncio.gather(*(start(app, name) for name in names))
    try:
        template = Template._current
        wanted = {name: secrets_of(app, name) for name in names}
        # the probe sees what is there: each server's own memory holds its token
        for name in names:
            assert wanted[name]["token"] in memory_of(app.users[name].spawner.pid)
        memory = memory_of(template.pid)
        assert len(memory) > 50 * 1024**2, "the template has not imported the server"
        found = [f"{name}'s {what}" for name in names for what, text in wanted[name].items() if text in memory]
        assert not found, f"in the template's memory: {found}"
        assert not re.search(rb"/home/" + TAG.encode(), memory)
    finally:
        await asyncio.gather(*(stop(app, name) for name in names))


async def test_the_probe_finds_a_template_that_reads_before_forking(app, synced, broken_template):
    spawner = await start(app, BROKEN)
    try:
        template = Template._current
        assert psutil.Process(spawner.pid).ppid() == template.pid  # the broken template forked it
        memory = memory_of(template.pid)
        found = {what for what, text in secrets_of(app, BROKEN).items() if text in memory}
        assert found == {"token", "name", "home"}, found
    finally:
        await stop(app, BROKEN)


def by_exec(caplog):
    """Why servers started by exec, from the hub's log."""
    return [r.getMessage() for r in caplog.records if "starts by exec" in r.getMessage()]


async def test_servers_outlive_their_hub_and_a_new_hub_starts_a_new_template(app, synced, caplog):
    spawner = await start(app, S4)
    assert spawner._template_child is not None, by_exec(caplog)
    old = Template._current
    pid = spawner.pid
    # the hub goes away: its end of the control socket closes
    for server_name, s in list(app.users[S4].spawners.items()):
        s.stop_polling()
        s._stop_monitor()
        app.users[S4].spawners.pop(server_name)
    old.close()
    assert old.process.returncode == 0
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    # a restarted hub finds the server from its database
    Host.fresh()
    app.db.expire_all()
    await app.init_spawners()
    revived = app.users[S4].spawner
    assert revived.pid == pid and await revived.poll() is None
    r = await server_api(app, S4, "status")
    assert r.status_code == 200, r.text
    # and forks new servers from a template of its own
    other = await start(app, S3)
    try:
        assert other._template_child is not None, by_exec(caplog)
        assert Template._current is not old and psutil.Process(other.pid).ppid() == Template._current.pid
    finally:
        await stop(app, S3)
    folders = group_dirs(revived)
    await stop(app, S4)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not any(os.path.exists(d) for d in folders)


async def test_what_the_template_cannot_run_starts_by_exec(app, synced, caplog):
    spawner = app.users[S3].spawner
    assert spawner._template_unsuitable([SCRIPT], {"PATH": os.defpath}) == ""
    assert spawner._template_unsuitable(["jupyterhub-singleuser"], {"PATH": os.path.dirname(SCRIPT)}) == ""
    assert "not" in spawner._template_unsuitable(["/usr/bin/env", SCRIPT], {})

    # a spawner class that starts servers otherwise (here: as the hub's user)
    class AsTheHub(type(spawner), SimpleLocalProcessSpawner):
        pass

    assert "make_preexec_fn" in AsTheHub()._template_unsuitable([SCRIPT], {"PATH": os.defpath})
    # a variable the template's imports read, set otherwise for this server
    template = {"LANG": "C.UTF-8", "HOME": "/nonexistent/t-HOME", "JUPYTERHUB_SSL_KEYFILE": None}
    marked = {"HOME": "/nonexistent/t-HOME"}
    assert differs({"LANG": "C.UTF-8", "HOME": "/home/a"}, template, marked) == ""
    assert "LANG differs" in differs({"LANG": "fr_FR.UTF-8", "HOME": "/home/a"}, template, marked)
    assert "JUPYTERHUB_SSL_KEYFILE is set here" in differs(
        {"LANG": "C.UTF-8", "HOME": "/home/a", "JUPYTERHUB_SSL_KEYFILE": "/k"}, template, marked
    )
    spawner.popen_kwargs = {"stdout": subprocess.PIPE}
    assert spawner._template_stdio() is None
    spawner.popen_kwargs = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT}
    fds, opened = spawner._template_stdio()
    assert fds[0] == 0 and fds[1] == fds[2] == opened[0]
    os.close(opened[0])
    # exec is the default (the template: on request, for a class)
    from classroomhub.spawner import ClassroomSpawner

    assert ClassroomSpawner.spawn_method.default_value == "exec"


async def test_no_process_of_the_students_is_left():
    await asyncio.sleep(0.5)
    uids = set()
    for name in PEOPLE:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            pass
    left = [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real in uids]
    assert not left, f"processes of the students left: {left}"


REAL_HUB_CONFIG = """
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.JupyterHub.db_url = "sqlite:///{tmp}/hub.sqlite"
c.JupyterHub.cookie_secret_file = "{tmp}/cookie_secret"
c.JupyterHub.pid_file = "{tmp}/hub.pid"
c.JupyterHub.cleanup_servers = False
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {users!r}
c.JupyterHub.services = [{{"name": "ft-admin", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "ft-admin", "scopes": ["admin:users", "admin:servers", "admin:server_state", "access:servers"], "services": ["ft-admin"]}}
]
c.JupyterHub.spawner_class = "classroom"
c.Spawner.cmd = [{script!r}]
c.ClassroomSpawner.spawn_method = "template"
c.ClassroomSpawner.cgroup_parent = {parent!r}
c.ClassroomSpawner.create_system_users = True
c.ClassroomSpawner.memory_reserve = 0
"""


def real_hub_api(url, token, method, path):
    import requests

    return requests.request(method, url + "hub/api/" + path, headers={"Authorization": f"token {token}"}, timeout=30)


def wait_server_ready(url, token, name, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = real_hub_api(url, token, "GET", f"users/{name}")
        server = r.json().get("servers", {}).get("") if r.status_code == 200 else None
        if server and server.get("ready"):
            return server
        time.sleep(0.3)
    raise AssertionError(f"the server of {name} was not ready in {timeout} s")


def template_of(pid):
    """The spawn template a server was forked from: its parent, a child of the hub."""
    return psutil.Process(pid).parent()


@pytest.mark.e2e
def test_a_real_hub_restart_leaves_servers_running_and_starts_a_new_template(tmp_path):
    """Real `jupyterhub` processes: the hub exits (Ctrl-C, cleanup_servers =
    False), its template follows it at once, the server lives on and is found
    by the next hub, which forks the next server from a template of its own."""
    import requests

    port, hub_port, api_port = free_ports(3)
    url, token = f"http://127.0.0.1:{port}/", secrets.token_hex(16)
    config = tmp_path / "jupyterhub_config.py"
    config.write_text(
        REAL_HUB_CONFIG.format(
            port=port, hub_port=hub_port, api_port=api_port, proxy=proxy_path(), tmp=tmp_path,
            users={R1, R2}, token=token, script=SCRIPT, parent=REAL_PARENT,
        )
    )
    command = [os.path.join(os.path.dirname(sys.executable), "jupyterhub"), "-f", str(config)]
    env = dict(os.environ)

    def run(log_name):
        proc, log = start_hub(command, tmp_path, env, tmp_path / log_name)
        wait_until_answers(proc, url + "hub/api/", tmp_path / log_name)
        return proc, log

    proc, log = run("hub1.log")
    children, template = psutil.Process(proc.pid).children(recursive=True), None
    try:
        for name in (R1, R2):
            assert real_hub_api(url, token, "POST", f"users/{name}").status_code in (201, 409)
        assert real_hub_api(url, token, "POST", f"users/{R1}/server").status_code in (201, 202)
        pid = wait_server_ready(url, token, R1)["state"]["pid"]
        template = template_of(pid)
        assert template.parent().pid == proc.pid and template.uids().real == 0
        children = psutil.Process(proc.pid).children(recursive=True)
    finally:
        # what the hub started, but the servers it leaves running
        stop_hub(proc, log, [c for c in children if c.username() == "root" and c.pid != getattr(template, "pid", None)])
    # the template went with its hub; the server did not
    try:
        template.wait(10)
    except psutil.TimeoutExpired:
        template.kill()
        raise AssertionError("the template outlived its hub") from None
    assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE

    proc, log = run("hub2.log")
    children = []
    try:
        assert wait_server_ready(url, token, R1)["state"]["pid"] == pid
        r = requests.get(url + f"user/{R1}/api/status", headers={"Authorization": f"token {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        assert real_hub_api(url, token, "POST", f"users/{R2}/server").status_code in (201, 202)
        pid2 = wait_server_ready(url, token, R2)["state"]["pid"]
        assert template_of(pid2).parent().pid == proc.pid and template_of(pid2).pid != template.pid
        children = psutil.Process(proc.pid).children(recursive=True)
        for name in (R1, R2):
            assert real_hub_api(url, token, "DELETE", f"users/{name}/server").status_code in (202, 204)
        deadline = time.monotonic() + 30
        while psutil.pid_exists(pid) or psutil.pid_exists(pid2):
            assert time.monotonic() < deadline, "servers not stopped"
            time.sleep(0.2)
    finally:
        stop_hub(proc, log, children)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


# -- The template's own guarantees, on a template started directly (no hub):
# requests as a hub sends them, for the system user ``nobody``.

import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402

from jupyterhub.spawner import set_user_setuid  # noqa: E402

from classroomhub.spawner import template as template_module  # noqa: E402
from classroomhub.spawner.template import TEMPLATE_ENV  # noqa: E402

LOG = logging.getLogger("tf-template")
#: a server config that records the server's sys.path, holds TF_HOLD seconds
#: and exits with TF_EXIT: run by an exec'd and a forked server alike
PROBE_CONFIG = """
import json, os, sys, time
with open(os.path.join(os.environ["JUPYTER_CONFIG_DIR"], "out", "path.json"), "w") as f:
    json.dump(sys.path, f)
time.sleep(float(os.environ.get("TF_HOLD", "0")))
os._exit(int(os.environ.get("TF_EXIT", "0")))
"""


@pytest.fixture
def probe_folder():
    """A Jupyter config folder ``nobody`` can read, with PROBE_CONFIG and an ``out`` folder it can write."""
    folder = tempfile.mkdtemp(prefix="tf-template-")
    os.chmod(folder, 0o755)
    os.mkdir(os.path.join(folder, "out"))
    os.chmod(os.path.join(folder, "out"), 0o777)
    with open(os.path.join(folder, "jupyter_server_config.py"), "w") as f:
        f.write(PROBE_CONFIG)
    yield folder
    shutil.rmtree(folder)


def probe_env(folder, **extra):
    env = {name: os.environ[name] for name in TEMPLATE_ENV if name in os.environ}
    return {**env, "HOME": folder, "JUPYTER_CONFIG_DIR": folder, **extra}


def direct_request(env, user="nobody", attach=()):
    return {"argv": [SCRIPT], "env": env, "user": user, "attach": list(attach), "oom_score_adj": 0}


@pytest.fixture
async def direct_template():
    """A template of its own (the hub's current one is closed first and after)."""
    Template.stop_current()
    template = await Template.running(LOG, probe_env("/"), ())
    yield template
    Template.stop_current()


async def wait_exit(child, timeout=120):
    deadline = time.monotonic() + timeout
    while (status := child.poll()) is None:
        assert time.monotonic() < deadline, f"fork {child.number} (pid {child.pid}) did not exit"
        await asyncio.sleep(0.1)
    return status


async def test_the_template_imports_nothing_from_the_hubs_folder(tmp_path, monkeypatch, probe_folder):
    """The template runs as root: a module planted in the folder the hub was
    started from (/tmp, a course folder) must not be imported. A forked
    server's sys.path is the one an exec'd jupyterhub-singleuser has (the
    script's folder first, no current folder)."""
    marker = tmp_path / "planted-module-ran"
    (tmp_path / "IPython.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    Template.stop_current()
    try:
        template = await Template.running(LOG, probe_env("/"), ["IPython"])
        assert not marker.exists(), "the template imported IPython.py from the hub's folder"
        assert os.readlink(f"/proc/{template.pid}/cwd") == "/"
        out = os.path.join(probe_folder, "out", "path.json")
        env = probe_env(probe_folder)
        subprocess.run([SCRIPT], env=env, preexec_fn=set_user_setuid("nobody"), check=True, timeout=120)
        with open(out) as f:
            exec_path = json.load(f)
        os.remove(out)
        child = await template.spawn(direct_request(env), (0, 1, 2))
        assert await wait_exit(child) == 0
        with open(out) as f:
            forked_path = json.load(f)
        assert "" not in forked_path and forked_path == exec_path
    finally:
        Template.stop_current()


async def test_a_large_request_does_not_block_the_hubs_event_loop(direct_template):
    """The request is sent while the loop runs: with the template stopped for
    3 s (nobody reads), a request larger than the socket's buffer does not
    stall the hub."""
    env = probe_env("/", BIG="x" * 8 * 1024**2)
    gaps = []

    async def tick():
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    os.kill(direct_template.pid, signal.SIGSTOP)
    resume = threading.Timer(3, os.kill, (direct_template.pid, signal.SIGCONT))
    resume.start()
    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0.2)  # ticking
    try:
        with pytest.raises(RuntimeError, match="KeyError"):  # no such user: the child says so
            await direct_template.spawn(direct_request(env, user=f"tf-none-{TAG}"), (0, 1, 2))
    finally:
        ticker.cancel()
        resume.join()
        os.kill(direct_template.pid, signal.SIGCONT)
    assert max(gaps) < 1.5, f"the event loop stood still for {max(gaps):.1f} s"


async def test_a_child_stuck_before_ready_is_killed_and_the_spawn_fails_cleanly(tmp_path, monkeypatch, direct_template):
    """A child that never says READY (here: stuck opening a FIFO as its
    cgroup file; in life: its owner SIGSTOPs their fresh process) is killed
    and the spawn fails with a RuntimeError that says why (no 500, no
    untracked process)."""
    fifo = tmp_path / "cgroup.procs"
    os.mkfifo(fifo)
    monkeypatch.setattr(template_module, "CHILD_TIMEOUT", 3)
    try:
        with pytest.raises(RuntimeError, match=r"server process (\d+) could not start: no answer in 3 s") as failed:
            await direct_template.spawn(direct_request(probe_env("/"), attach=[str(fifo)]), (0, 1, 2))
        pid = int(re.search(r"process (\d+)", str(failed.value)).group(1))
        deadline = time.monotonic() + 10
        while not (reported := [status for (p, _), status in direct_template.exits.items() if p == pid]):
            assert time.monotonic() < deadline, f"process {pid} was not killed"
            await asyncio.sleep(0.1)
        assert reported == [-signal.SIGKILL]
    finally:
        # without the kill, the child would wait for a reader forever
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))


async def test_a_reused_pid_is_not_taken_for_the_server_that_had_it(probe_folder, direct_template):
    """Exit reports are keyed by (pid, fork number): a server forked with the
    pid of one that exited unpolled (forced through ns_last_pid) runs on,
    and each poll gives its own fork's status."""
    first = await direct_template.spawn(direct_request(probe_env(probe_folder, TF_EXIT="3")), (0, 1, 2))
    deadline = time.monotonic() + 60
    while (first.pid, first.number) not in direct_template.exits:  # reported, not polled
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    for _ in range(100):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(first.pid - 1))
        second = await direct_template.spawn(direct_request(probe_env(probe_folder, TF_EXIT="5", TF_HOLD="3")), (0, 1, 2))
        if second.pid == first.pid:
            break
        os.kill(second.pid, signal.SIGKILL)
        await wait_exit(second)
    else:
        # another process took the pid each time (a busy machine): the hub's
        # side of the same case, with the first fork's exit put under the pid
        second = await direct_template.spawn(direct_request(probe_env(probe_folder, TF_EXIT="5", TF_HOLD="3")), (0, 1, 2))
        direct_template.exits[second.pid, first.number] = direct_template.exits.pop((first.pid, first.number))
        first.pid = second.pid
    assert second.number != first.number
    assert second.poll() is None  # running: the first server's exit is not its
    assert first.poll() == 3
    assert await wait_exit(second) == 5
