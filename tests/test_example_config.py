"""jupyterhub_config.example.py loads as-is in a real `jupyterhub` process and
logs a roster person in through (fake) GitHub and the real proxy."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from classroomhub.demo import free_ports
from fake_github import FakeGitHub

EXAMPLE = Path(__file__).parent.parent / "jupyterhub_config.example.py"


@pytest.fixture
def github():
    with FakeGitHub() as gh:
        gh.add_user("Dave", 4242)
        gh.add_user("mallory", 666)
        yield gh


@pytest.fixture
def hub(tmp_path, github):
    port, hub_port, proxy_api_port, service_port = free_ports(4)
    url = f"http://127.0.0.1:{port}/"
    roster = tmp_path / "roster.yaml"
    roster.write_text("users:\n  alice: {tier: root}\ncourses:\n  data101:\n    students: [dave]\n")
    env = dict(
        os.environ,
        CLASSROOMHUB_STATE_DIR=str(tmp_path),
        CLASSROOMHUB_ROSTER=str(roster),
        CLASSROOMHUB_BIND_URL=url.rstrip("/"),
        CLASSROOMHUB_HUB_PORT=str(hub_port),
        CLASSROOMHUB_PROXY_API_URL=f"http://127.0.0.1:{proxy_api_port}",
        CLASSROOMHUB_SERVICE_DIR=str(tmp_path / "classroom"),
        CLASSROOMHUB_SERVICE_PORT=str(service_port),
        GITHUB_URL=github.url,
        GITHUB_CLIENT_ID=github.client_id,
        GITHUB_CLIENT_SECRET=github.client_secret,
        OAUTH_CALLBACK_URL=url + "hub/oauth_callback",
    )
    log = open(tmp_path / "hub.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(EXAMPLE)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        # a hub started from a background shell inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    children = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "hub.log").read_text()[-3000:]
            try:
                if requests.get(url + "hub/api/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        children = psutil.Process(proc.pid).children(recursive=True)
        yield {"url": url, "state": tmp_path, "log": tmp_path / "hub.log"}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        psutil.wait_procs(children, timeout=10)
        for child in children:
            if child.is_running():
                child.kill()
        log.close()


def oauth_login(hub, github, login):
    """The browser's path: hub → GitHub authorize → hub callback; stops at the
    callback's answer (a spawn would need the person's system account)."""
    github.login_as(login)
    s = requests.Session()
    url, hops = hub["url"] + "hub/oauth_login", []
    while True:
        r = s.get(url, allow_redirects=False, timeout=10)
        hops.append(url)
        if "/hub/oauth_callback" in url or r.status_code != 302:
            return s, r, hops
        url = requests.compat.urljoin(url, r.headers["location"])


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
