"""jupyterhub_config.example.py loads as-is in a real `jupyterhub` process,
logs a roster person in through (fake) GitHub and the real proxy, runs a
server under systemd's minimal environment (``env -i``), and fails safe: a
missing state folder is made private, an https:// address without a
certificate or a missing roster stops the hub with one line."""

import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests

from classroomhub.demo import free_ports
from classroomhub.ops.config import private_dir
from fake_github import FakeGitHub
from fixtures.example_hub import BIN, EXAMPLE, hub_env, oauth_login, run_hub, wait_ready
from fixtures.real_hub import stop_hub

# starts real jupyterhub processes (fixtures/selection.py)
pytestmark = pytest.mark.e2e

PACKAGED = Path(__file__).parent.parent / "classroomhub" / "data" / "jupyterhub_config.example.py"
# a test person the hub creates as a system user (prefix h7: these tests' own)
SPAWNER = "h7dave"
ROSTER = f"users:\n  alice: {{tier: root}}\n  {SPAWNER}: {{}}\ncourses:\n  data101:\n    students: [dave]\n"
CGROUP_PARENT = "h7-example"
CGROUP_ROOT = "/sys/fs/cgroup"


@pytest.fixture
def github():
    with FakeGitHub() as gh:
        gh.add_user("Dave", 4242)
        gh.add_user("mallory", 666)
        gh.add_user(SPAWNER, 4343)
        yield gh


@pytest.fixture
def hub(tmp_path, github):
    port = free_ports(1)[0]
    url, env = hub_env(tmp_path, github, port, roster=ROSTER)
    proc, log = run_hub(tmp_path, env, log_path=tmp_path / "hub.log")
    children = []
    try:
        wait_ready(proc, url, tmp_path / "hub.log")
        children = psutil.Process(proc.pid).children(recursive=True)
        yield {"url": url, "state": tmp_path, "log": tmp_path / "hub.log"}
    finally:
        stop_hub(proc, log, children)


def test_the_top_level_example_is_the_packaged_one():
    assert EXAMPLE.is_symlink() and EXAMPLE.resolve() == PACKAGED.resolve()


def test_example_config_logs_roster_user_in(hub, github):
    s, r, hops = oauth_login(hub, github, "Dave")
    assert r.status_code == 302, hub["log"].read_text()[-3000:]
    assert any(hop.startswith(github.url + "/login/oauth/authorize") for hop in hops)
    home = s.get(hub["url"] + "hub/home", allow_redirects=False, timeout=10)
    assert home.status_code == 200
    # the GitHub id was pinned in the configured state folder
    assert '"dave"' in (hub["state"] / "classroomhub-identities.json").read_text()
    assert "4242" in (hub["state"] / "classroomhub-identities.json").read_text()

    # the classroom service runs behind the hub's proxy and answers for Dave
    r = s.get(hub["url"] + "services/classroom/api/openapi.json", timeout=10)
    assert r.status_code == 200, hub["log"].read_text()[-3000:]
    assert "/api/courses" in r.json()["paths"]

    _, r, _ = oauth_login(hub, github, "mallory")
    assert r.status_code == 403
    assert "not on this hub" in r.text


def remove_spawner_user():
    try:
        pwd.getpwnam(SPAWNER)
    except KeyError:
        return
    subprocess.run(["pkill", "-KILL", "-u", SPAWNER], check=False)
    for _ in range(50):
        if not [p for p in psutil.process_iter(["username"]) if p.info["username"] == SPAWNER]:
            break
        time.sleep(0.1)
    subprocess.run(["userdel", "--remove", SPAWNER], check=False, stderr=subprocess.DEVNULL)


def remove_cgroup_parent():
    for controller in os.listdir(CGROUP_ROOT):
        folder = os.path.join(CGROUP_ROOT, controller, CGROUP_PARENT)
        for sub in sorted(Path(folder).glob("*"), reverse=True) if os.path.isdir(folder) else []:
            if sub.is_dir():
                os.rmdir(sub)
        if os.path.isdir(folder):
            os.rmdir(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="spawns a server as a system user the hub creates: needs root")
def test_a_server_runs_under_systemds_minimal_environment(tmp_path, github):
    """env -i with systemd's PATH: the hub finds jupyterhub-singleuser and the
    proxy by the config's absolute paths; the state folder it makes is private."""
    state = tmp_path / "state" / "hub"  # missing: the config creates it
    port = free_ports(1)[0]
    url, env = hub_env(tmp_path, github, port, clean=True, roster=ROSTER, CLASSROOMHUB_STATE_DIR=str(state))
    assert "jupyterhub-singleuser" not in subprocess.run(
        ["sh", "-c", "command -v jupyterhub-singleuser configurable-http-proxy || true"], env=env, capture_output=True, text=True
    ).stdout
    args = ["--ClassroomSpawner.create_system_users=True", f"--ClassroomSpawner.cgroup_parent={CGROUP_PARENT}"]
    log_path = tmp_path / "hub.log"
    proc, log = run_hub(tmp_path, env, *args, log_path=log_path)
    children = []
    try:
        wait_ready(proc, url, log_path)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert stat.S_IMODE((state / "jupyterhub.sqlite").stat().st_mode) == 0o600

        s, r, _ = oauth_login({"url": url}, github, SPAWNER)
        assert r.status_code == 302, log_path.read_text()[-3000:]
        s.get(url + "hub/spawn", timeout=30)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            # the browser's way in: the server's own OAuth with the hub, then JupyterLab
            r = s.get(url + f"user/{SPAWNER}/lab", timeout=10)
            if r.status_code == 200 and r.url == url + f"user/{SPAWNER}/lab":
                break
            time.sleep(1)
        else:
            raise AssertionError(f"no server in 90 s: {r.status_code} {log_path.read_text()[-4000:]}")
        server = next(p for p in psutil.process_iter(["username", "cmdline"]) if p.info["username"] == SPAWNER)
        assert server.info["cmdline"][1] == os.path.join(BIN, "jupyterhub-singleuser"), server.info["cmdline"]
        r = s.delete(
            url + f"hub/api/users/{SPAWNER}/server", headers={"X-XSRFToken": s.cookies.get("_xsrf", path="/hub/")}, timeout=30
        )
        assert r.status_code in (202, 204), r.text
    finally:
        stop_hub(proc, log, children)
        remove_spawner_user()
        remove_cgroup_parent()


def failed_start(tmp_path, github, port=None, **extra):
    """Run the hub that must refuse to start (at *port*): (exit status, its output)."""
    port = port or free_ports(1)[0]
    url, env = hub_env(tmp_path, github, port, clean=True, roster=ROSTER, **extra)
    result = subprocess.run(
        [os.path.join(BIN, "jupyterhub"), "-f", str(EXAMPLE)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    with pytest.raises(requests.ConnectionError):  # nothing serves there, in plain HTTP or any other way
        requests.get(f"http://127.0.0.1:{port}/", timeout=2)
    return result.returncode, (result.stdout + result.stderr).strip()


def test_https_without_a_certificate_stops_with_one_line(tmp_path, github):
    port = free_ports(1)[0]
    rc, out = failed_start(
        tmp_path,
        github,
        port,
        CLASSROOMHUB_BIND_URL=f"https://127.0.0.1:{port}",
        CLASSROOMHUB_SSL_CERT=str(tmp_path / "missing.pem"),
        CLASSROOMHUB_SSL_KEY=str(tmp_path / "missing.key"),
    )
    assert rc != 0
    assert len(out.splitlines()) == 1, out
    assert "https" in out and str(tmp_path / "missing.pem") in out and "not readable" in out


def test_a_missing_roster_stops_with_one_line(tmp_path, github):
    rc, out = failed_start(tmp_path, github, CLASSROOMHUB_ROSTER=str(tmp_path / "nowhere.yaml"))
    assert rc != 0
    lines = [line for line in out.splitlines() if "Traceback" in line or "nowhere.yaml" in line]
    assert len(lines) == 1 and "Traceback" not in lines[0], out


def test_a_broken_roster_stops_with_its_file_and_line(tmp_path, github):
    roster = tmp_path / "roster.yaml"
    roster.write_text("users:\n  alice: {tier: root}\n  bob: {tier: wizard}\n")
    rc, out = failed_start(tmp_path, github)
    assert rc != 0
    lines = [line for line in out.splitlines() if "Traceback" in line or f"{roster}:" in line]
    assert len(lines) == 1 and f"{roster}:3" in lines[0], out


def test_a_state_folder_others_can_read_is_made_private(tmp_path):
    folder = tmp_path / "state"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    private_dir(str(folder))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    new = tmp_path / "a" / "b"
    private_dir(str(new))
    assert stat.S_IMODE(new.stat().st_mode) == 0o700
