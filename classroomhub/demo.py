"""``classroomhub demo``: a real local classroom hub on embedded defaults.

Runs a real ``jupyterhub`` process (SQLite, configurable-http-proxy from
PATH) bound to 127.0.0.1, with a demo roster (one person per tier and one
course) and the ``classroom-password`` login. As root it creates the demo
people as system users with private homes; otherwise every server runs as
the invoking user in a per-person folder under the state directory.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

#: Marks system users created by the demo (GECOS field), so they are
#: never confused with real accounts and can be removed safely.
DEMO_MARKER = "classroomhub demo user"

#: the demo's own folder of server cgroups, removed when the demo ends
DEMO_CGROUP_PARENT = "classroomhub-demo"

DEMO_ROSTER = """\
# classroomhub demo roster. Edit it while the hub runs: changes apply within
# a few seconds (try removing demo-student2, or making demo-researcher admin).
users:
  demo-owner: {tier: root, name: Hub Owner}
  demo-teacher: {tier: admin, name: Course Instructor}
  demo-researcher: {tier: power, name: Researcher and TA}
courses:
  demo101:
    title: Data Analytics with Python
    instructors: [demo-teacher]
    tas: [demo-researcher]
    students: [demo-student1, demo-student2]
"""


def free_port():
    return free_ports(1)[0]


def free_ports(n):
    """*n* distinct free ports: held open together, so none is handed out twice."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def proxy_command():
    """configurable-http-proxy: $CLASSROOMHUB_PROXY, else PATH."""
    cmd = os.environ.get("CLASSROOMHUB_PROXY") or shutil.which("configurable-http-proxy")
    if not cmd:
        raise SystemExit(
            "configurable-http-proxy not found: run `npm install` in the repository's proxy/ "
            "folder (./dev does) or set CLASSROOMHUB_PROXY to its path"
        )
    return cmd


def demo_config(c, state_dir, ip, port, system_users):
    """Fill the traitlets config *c* for the demo hub (used by the generated
    jupyterhub_config.py, so `jupyterhub -f` sees exactly this)."""
    bin_dir = os.path.dirname(sys.executable)
    # distinct ports: a service that got the hub's own port would fail to
    # start, and the hub, finding an HTTP server there (itself), route to it
    hub_port, proxy_api_port, service_port = [p for p in free_ports(4) if p != port][:3]
    c.JupyterHub.bind_url = f"http://{ip}:{port}"
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = hub_port
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{proxy_api_port}"
    c.ConfigurableHTTPProxy.command = [proxy_command()]
    c.ConfigurableHTTPProxy.pid_file = os.path.join(state_dir, "proxy.pid")
    c.JupyterHub.db_url = "sqlite:///" + os.path.join(state_dir, "jupyterhub.sqlite")
    c.JupyterHub.cookie_secret_file = os.path.join(state_dir, "jupyterhub_cookie_secret")
    c.JupyterHub.authenticator_class = "classroom-password"
    c.ClassroomPasswordAuthenticator.roster_path = os.path.join(state_dir, "roster.yaml")
    c.Spawner.cmd = [os.path.join(bin_dir, "jupyterhub-singleuser")]
    c.Spawner.default_url = "/lab"
    c.Spawner.http_timeout = 60
    if system_users:
        c.JupyterHub.spawner_class = "classroom"
        c.ClassroomSpawner.cgroup_parent = DEMO_CGROUP_PARENT
        # the classroom service writes into homes as their owners: root only
        from .service.hubconfig import add_classroom_service

        add_classroom_service(c, data_dir=os.path.join(state_dir, "classroom"), port=service_port)
    else:
        # Not root: no users to switch to. Every server runs as us, in its
        # own folder; fine for a demo, never for a real class.
        c.JupyterHub.spawner_class = "simple"
        c.SimpleLocalProcessSpawner.home_dir_template = os.path.join(state_dir, "homes", "{username}")


DEMO_NOTEBOOK = {
    "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Week 1\n", "Released by the classroom service."]},
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": ["print('hello, class')"]},
    ],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}


def seed_material(login):
    """A ``~/materials/week1`` folder for the demo instructor to release."""
    import json

    entry = pwd.getpwnam(login)
    folder = os.path.join(entry.pw_dir, "materials", "week1")
    if os.path.exists(folder):
        return
    # as the instructor: nothing in a home is written as root
    code = (
        "import json, os, sys; os.makedirs(sys.argv[1]); "
        "open(os.path.join(sys.argv[1], 'intro.ipynb'), 'w').write(sys.argv[2])"
    )
    subprocess.run(
        [sys.executable, "-I", "-c", code, folder, json.dumps(DEMO_NOTEBOOK, indent=1)],
        user=entry.pw_uid,
        group=entry.pw_gid,
        cwd="/",
        check=True,
    )


def demo_logins(roster_path):
    from .roster import load_roster

    return sorted(load_roster(roster_path).people)


def ensure_demo_user(login, record):
    """Create *login* with a private home, unless a real account has it;
    note created users in the file *record* for `--remove-users`."""
    from .spawner.users import ensure_system_user

    entry, created = ensure_system_user(login, comment=DEMO_MARKER)
    if created:
        with open(record, "a") as f:
            f.write(login + "\n")
    elif entry.pw_gecos != DEMO_MARKER:
        raise SystemExit(f"system user {login!r} exists and was not made by the demo; not touching it")


def remove_demo_users(record):
    try:
        with open(record) as f:
            logins = sorted(set(f.read().split()))
    except FileNotFoundError:
        return
    for login in logins:
        try:
            entry = pwd.getpwnam(login)
        except KeyError:
            continue
        if entry.pw_gecos == DEMO_MARKER:
            subprocess.run(["pkill", "-KILL", "-u", login], check=False)
            subprocess.run(["userdel", "--remove", login], check=False, stderr=subprocess.DEVNULL)
            print(f"removed demo user {login}")
    os.unlink(record)


def remove_demo_cgroups():
    """The hub stopped its servers (and their cgroups); remove the folder holding them."""
    from .spawner import EnforcementUnavailable, detect

    try:
        backend, _ = detect("auto", DEMO_CGROUP_PARENT)
    except EnforcementUnavailable:
        return
    backend.remove_parent()


def _wait_for_hub(url, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def run_demo(args):
    state_dir = os.path.abspath(args.state_dir)
    os.makedirs(state_dir, exist_ok=True)
    os.chmod(state_dir, 0o711)
    roster_path = os.path.join(state_dir, "roster.yaml")
    if not os.path.exists(roster_path):
        with open(roster_path, "w") as f:
            f.write(DEMO_ROSTER)
    record = os.path.join(state_dir, "system-users.txt")
    if args.remove_users:
        remove_demo_users(record)
        return 0
    logins = demo_logins(roster_path)
    system_users = os.geteuid() == 0
    if system_users:
        for login in logins:
            ensure_demo_user(login, record)
        if "demo-teacher" in logins:
            seed_material("demo-teacher")

    config_path = os.path.join(state_dir, "jupyterhub_config.py")
    with open(config_path, "w") as f:
        f.write(
            "# Generated by `classroomhub demo`; rewritten at every start.\n"
            "from classroomhub.demo import demo_config\n"
            f"demo_config(c, {state_dir!r}, {args.ip!r}, {args.port}, {system_users!r})\n"
        )
    password = args.password or secrets.token_urlsafe(9)
    env = dict(os.environ, CLASSROOMHUB_PASSWORD=password)
    url = f"http://{args.ip}:{args.port}/"

    def child_setup():
        # a hub started from a script with `&` inherits SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    log_path = os.path.join(state_dir, "jupyterhub.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", config_path],
            cwd=state_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=child_setup,
        )
    try:
        if not _wait_for_hub(url + "hub/api/", proc):
            print(f"the hub did not start; see {log_path}", file=sys.stderr)
            return 1
        print(f"classroomhub demo running at {url}")
        print(f"  password (any demo user): {password}")
        print(f"  people: {', '.join(logins)}")
        print(f"  roster: {roster_path} (edits apply within seconds)")
        if system_users:
            print(f"  classroom: {url}services/classroom/ (demo-teacher can release ~demo-teacher/materials/week1)")
        print(f"  log:    {log_path}")
        print("  Ctrl-C stops the hub and every server it started.")
        sys.stdout.flush()
        return proc.wait()
    except KeyboardInterrupt:
        print("\nstopping the demo hub ...")
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if system_users:
            remove_demo_cgroups()
