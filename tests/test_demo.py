"""End to end: `classroomhub demo` runs a real jupyterhub process, a real
configurable-http-proxy and real single-user servers as real system users;
Ctrl-C leaves nothing running."""

import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time

import psutil
import pytest
import requests

from classroomhub.demo import DEMO_CGROUP_PARENT, DEMO_MARKER, free_port
from classroomhub.spawner import cgroupfs

pytestmark = pytest.mark.root("the demo creates system users")


def classroomhub_cmd():
    exe = shutil.which("classroomhub")
    return [exe] if exe else [sys.executable, "-m", "classroomhub.cli"]


@pytest.fixture
def demo(tmp_path):
    """A running demo on its own roster of uniquely named people."""
    tag = "ct" + secrets.token_hex(3)
    people = {"owner": f"{tag}-owner", "student": f"{tag}-stu"}
    state = tmp_path / "state"
    state.mkdir()
    (state / "roster.yaml").write_text(
        f"users:\n  {people['owner']}: {{tier: root}}\n"
        f"courses:\n  demo101:\n    students: [{people['student']}]\n"
    )
    port = free_port()
    password = secrets.token_urlsafe(12)
    demo = {"url": f"http://127.0.0.1:{port}/", "port": port, "password": password, "state": state, **people}
    try:
        demo["proc"] = _start_demo(demo)
        yield demo
    finally:
        _stop_demo(demo)
        subprocess.run([*classroomhub_cmd(), "demo", "--state-dir", str(state), "--remove-users"], check=False)
        for login in people.values():
            with pytest.raises(KeyError):
                pwd.getpwnam(login)


def _start_demo(demo):
    """`classroomhub demo` on *demo*'s state folder and port, once it says it runs."""
    proc = subprocess.Popen(
        [*classroomhub_cmd(), "demo", "--port", str(demo["port"]), "--state-dir", str(demo["state"]),
         "--password", demo["password"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    demo["proc"] = proc
    banner = []
    for line in proc.stdout:
        banner.append(line)
        if "Ctrl-C" in line or proc.poll() is not None:
            break
    assert any("running at" in line for line in banner), "".join(banner) + _log(demo["state"])
    return proc


def _stop_demo(demo):
    proc = demo.get("proc")
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _log(state):
    path = state / "jupyterhub.log"
    if not path.exists():
        return ""
    text = path.read_text()
    service = [line for line in text.splitlines() if "ClassroomService" in line or "ervice" in line]
    return "\n".join(service[-40:]) + "\n...\n" + text[-3000:]


def _login(url, name, password):
    s = requests.Session()
    s.get(url + "hub/login").raise_for_status()
    r = s.post(
        url + "hub/login",
        data={"username": name, "password": password, "_xsrf": s.cookies["_xsrf"]},
        allow_redirects=False,
    )
    return s, r


def _processes_of(login):
    return [p for p in psutil.process_iter(["username", "cmdline"]) if p.info["username"] == login]


def test_demo_end_to_end(demo):
    url, stu = demo["url"], demo["student"]
    # the demo made the people system users, with private homes
    entry = pwd.getpwnam(stu)
    assert entry.pw_gecos == DEMO_MARKER
    assert stat.S_IMODE(os.stat(entry.pw_dir).st_mode) == 0o700

    # a stranger cannot log in, a roster person can (any case)
    _, r = _login(url, "stranger", demo["password"])
    assert r.status_code == 403
    _, r = _login(url, stu.upper(), "wrong password")
    assert r.status_code == 403
    session, r = _login(url, stu.upper(), demo["password"])
    assert r.status_code == 302

    # spawn: the real jupyterhub-singleuser runs as the student
    session.get(url + "hub/spawn", timeout=30)
    deadline = time.monotonic() + 90
    status = None
    while time.monotonic() < deadline:
        # as a browser: the server's page (OAuth handshake with the hub), then its API
        session.get(url + f"user/{stu}/lab", timeout=30)
        status = session.get(url + f"user/{stu}/api/status", timeout=10)
        if status.status_code == 200 and status.headers.get("content-type", "").startswith("application/json"):
            break
        time.sleep(0.5)
    assert status is not None and status.status_code == 200, _log(demo["state"])
    servers = [p for p in _processes_of(stu) if any("jupyterhub-singleuser" in a for a in p.info["cmdline"] or [])]
    assert servers, "no single-user server running as the student"

    # the classroom service runs behind the same proxy
    spec = session.get(url + "services/classroom/api/openapi.json", timeout=10)
    assert spec.status_code == 200, _log(demo["state"])
    r = session.get(url + "services/classroom/api/courses", timeout=10)
    assert r.status_code == 403 and "Authentication needed" in r.json()["message"]

    # the roster is live: removing the student stops their server
    roster = demo["state"] / "roster.yaml"
    roster.write_text(re.sub(r"students: \[.*\]", "students: []", roster.read_text()))
    deadline = time.monotonic() + 15
    while _processes_of(stu) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_of(stu), _log(demo["state"])

    # Ctrl-C stops the hub and the proxy it started
    hub = psutil.Process(demo["proc"].pid)
    children = hub.children(recursive=True)
    assert any("configurable-http-proxy" in " ".join(c.cmdline()) for c in children)
    demo["proc"].send_signal(signal.SIGINT)
    demo["proc"].wait(timeout=60)
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    # and removes the folder that held the servers' cgroups
    leftovers = [
        os.path.join(mount, own.lstrip("/"), DEMO_CGROUP_PARENT)
        for mount, fstype, _ in cgroupfs.mountinfo()
        if fstype == "cgroup"
        for controller, own in cgroupfs.own_cgroups().items()
        if controller and controller in os.path.basename(mount).split(",")
    ]
    assert leftovers and not [d for d in leftovers if os.path.exists(d)]


def test_demo_starts_again_on_its_state(demo):
    """Stopped and started on the same state folder (database, roster, users),
    the demo comes back with the same people and a roster edited meanwhile."""
    url, stu = demo["url"], demo["student"]
    session, r = _login(url, stu, demo["password"])
    assert r.status_code == 302
    _stop_demo(demo)
    roster = demo["state"] / "roster.yaml"
    roster.write_text(roster.read_text().replace(f"students: [{stu}]", "students: []"))
    _start_demo(demo)
    _, r = _login(url, demo["owner"], demo["password"])
    assert r.status_code == 302, _log(demo["state"])
    _, r = _login(url, stu, demo["password"])
    assert r.status_code == 403, "removed while the demo was stopped"
    _stop_demo(demo)
    _start_demo(demo)
    _, r = _login(url, demo["owner"], demo["password"])
    assert r.status_code == 302, _log(demo["state"])
