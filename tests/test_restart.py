"""A hub restarts on the same database again and again (the example config,
a real `jupyterhub` process, real servers as real system users left running
by ``cleanup_servers = False``): after each start the roster's groups, roles
and admin flags are in force before any roster sync ran, a roster edited,
broken or deleted while the hub was down is handled, the servers are
reachable through the new proxy; and a demoted instructor loses a student's
server within the roster poll interval plus the servers' token cache."""

import html
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests

from classroomhub.demo import free_ports
from fake_github import FakeGitHub
from fixtures.example_hub import BIN, EXAMPLE, hub_env, oauth_login, run_hub, wait_ready

pytestmark = pytest.mark.root("runs servers as system users the hub creates")

ROOT, TEACH, INS, S1, S2, S3, NEW = "h1rroot", "h1rteach", "h1rins", "h1rs1", "h1rs2", "h1rs3", "h1rnew"
PEOPLE = [ROOT, TEACH, INS, S1, S2, S3, NEW]
CGROUP_PARENT = "h1r-restart"
CGROUP_ROOT = "/sys/fs/cgroup"

ROSTER_1 = f"""\
users:
  {ROOT}: {{tier: root}}
  {TEACH}: {{tier: admin}}
courses:
  c1:
    instructors: [{INS}]
    students: [{S1}, {S2}]
  c2:
    students: [{S3}]
"""
# while the hub is down: TEACH demoted, S2 removed (server running), S1 moved
# from c1 to c2, NEW added (never logged in)
ROSTER_2 = f"""\
users:
  {ROOT}: {{tier: root}}
  {TEACH}: {{}}
courses:
  c1:
    instructors: [{INS}]
    students: []
  c2:
    students: [{S1}, {S3}, {NEW}]
"""
BROKEN = ROSTER_2 + f"  c3:\n    students: [{TEACH}]\n    graders: [{ROOT}]\n"
BROKEN_LINE = len(ROSTER_2.splitlines()) + 3
ROSTER_3 = ROSTER_2.replace(f"{TEACH}: {{}}", f"{TEACH}: {{tier: admin}}")


@pytest.fixture
def world(tmp_path):
    with FakeGitHub() as gh:
        for i, login in enumerate(PEOPLE):
            gh.add_user(login, 9100 + i)
        try:
            yield gh
        finally:
            for login in PEOPLE:
                subprocess.run(["pkill", "-KILL", "-u", login], check=False, stderr=subprocess.DEVNULL)
            for login in PEOPLE:
                for _ in range(50):
                    if not [p for p in psutil.process_iter(["username"]) if p.info["username"] == login]:
                        break
                    time.sleep(0.1)
                subprocess.run(["userdel", "--remove", login], check=False, stderr=subprocess.DEVNULL)
            remove_cgroups()


def remove_cgroups():
    for controller in os.listdir(CGROUP_ROOT):
        folder = Path(CGROUP_ROOT, controller, CGROUP_PARENT)
        if folder.is_dir():
            for sub in sorted(folder.glob("*"), reverse=True):
                if sub.is_dir():
                    sub.rmdir()
            folder.rmdir()


class Hub:
    """One state folder and one set of ports; started and stopped many times."""

    def __init__(self, tmp_path, github, *args):
        self.state = tmp_path
        self.url, self.env = hub_env(tmp_path, github, free_ports(1)[0])
        self.args = [
            "--ClassroomSpawner.create_system_users=True",
            f"--ClassroomSpawner.cgroup_parent={CGROUP_PARENT}",
            *args,
        ]
        self.starts = 0
        self.proc = self.log_file = None

    @property
    def roster(self):
        return self.state / "roster.yaml"

    @property
    def log(self):
        return self.state / f"hub-{self.starts}.log"

    def start(self):
        self.starts += 1
        self.proc, self.log_file = run_hub(self.state, self.env, *self.args, log_path=self.log)
        wait_ready(self.proc, self.url, self.log)

    def stop(self):
        """Ctrl-C: the hub stops its proxy and leaves the servers running."""
        if self.proc is None:
            return
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []  # it exited by itself (failed start)
        proxies = [c for c in children if "configurable-http-proxy" in " ".join(c.cmdline())]
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for proxy in psutil.wait_procs(proxies, timeout=10)[1]:
            proxy.kill()
        self.log_file.close()
        self.proc = None

    def text(self):
        return self.log.read_text()


def api(hub, token, method, path, **kwargs):
    return requests.request(
        method, hub.url + "hub/api/" + path, headers={"Authorization": f"token {token}"}, timeout=30, **kwargs
    )


def root_token(hub, github):
    s, r, _ = oauth_login({"url": hub.url}, github, ROOT)
    assert r.status_code == 302, hub.text()[-3000:]
    s.get(hub.url + "hub/home", timeout=10)
    r = s.post(
        hub.url + f"hub/api/users/{ROOT}/tokens",
        json={"note": "h1 restart test"},
        headers={"X-XSRFToken": s.cookies.get("_xsrf", path="/hub/")},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return r.json()["token"]


def start_server(hub, token, login):
    r = api(hub, token, "POST", f"users/{login}/server")
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if reachable(hub, token, login):
            return
        time.sleep(0.5)
    raise AssertionError(f"no server for {login}: {hub.text()[-3000:]}")


def reachable(hub, token, login):
    """The server answers through the proxy, checking the token with the hub."""
    r = requests.get(hub.url + f"user/{login}/api/status", headers={"Authorization": f"token {token}"}, timeout=10)
    return r.status_code == 200 and r.headers.get("content-type", "").startswith("application/json")


def server_pids(login):
    return [p.pid for p in psutil.process_iter(["username", "cmdline"]) if p.info["username"] == login and any("jupyterhub-singleuser" in a for a in p.info["cmdline"] or [])]


def who(hub, token):
    """{login: (groups, roles, admin)} as the hub's REST API says."""
    r = api(hub, token, "GET", "users", params={"include_stopped_servers": "1"})
    assert r.status_code == 200, r.text
    return {u["name"]: (set(u["groups"]), set(u["roles"]), u["admin"]) for u in r.json()}


def confirm(session, r):
    """Answer the hub's "authorize access" page, as the visitor's browser would."""
    if "oauth2/authorize" in r.url and r.status_code == 200 and 'name="scopes"' in r.text:
        scopes = [html.unescape(v) for v in re.findall(r'name="scopes" value="([^"]*)"', r.text)]
        xsrf = html.unescape(re.search(r'name="_xsrf" value="([^"]*)"', r.text).group(1))
        r = session.post(r.url, data={"_xsrf": xsrf, "scopes": scopes}, timeout=30)
    return r


def syncs(hub):
    return hub.text().count("Roster sync:")


def test_restarts_apply_the_roster_and_keep_servers(tmp_path, world):
    hub = Hub(tmp_path, world, "--ClassroomGitHubAuthenticator.roster_poll_interval=3600")
    hub.roster.write_text(ROSTER_1)
    try:
        hub.start()
        token = root_token(hub, world)
        for login in (S1, S2):
            start_server(hub, token, login)
        people = who(hub, token)
        assert "classroom-admin" in people[TEACH][1] and "tier-admin" in people[TEACH][0]
        assert "course-c1-students" in people[S1][0]
        keep = server_pids(S1)
        assert keep and server_pids(S2)
        hub.stop()
        assert all(psutil.pid_exists(p) for p in keep), "cleanup_servers is False: servers outlive the hub"

        # 2nd start: the roster changed while the hub was down
        hub.roster.write_text(ROSTER_2)
        hub.start()
        people = who(hub, token)
        assert syncs(hub) == 1, "only the sync the start itself makes ran"
        groups, roles, admin = people[TEACH]
        assert groups == {"tier-student"} and "classroom-admin" not in roles and "user" in roles and not admin
        assert people[S2] == (set(), set(), False), "removed: nothing left"
        assert people[S1][0] == {"tier-student", "course-c2-students"}
        assert "user" in people[S1][1]
        assert people[NEW][0] == {"tier-student", "course-c2-students"}, "created at start, like a sync does"
        assert people[ROOT][2] and "admin" in people[ROOT][1]
        assert reachable(hub, token, S1), hub.text()[-3000:]
        assert server_pids(S1) == keep, "the same server, not a new one"
        deadline = time.monotonic() + 30
        while server_pids(S2) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not server_pids(S2), "the removed person's server is stopped"
        last_good = tmp_path / "classroomhub-last-good-roster.json"
        assert stat.S_IMODE(last_good.stat().st_mode) == 0o600
        hub.stop()

        # 3rd start: the roster broke while the hub was down
        hub.roster.write_text(BROKEN)
        hub.start()
        assert f"{hub.roster}:{BROKEN_LINE}:" in hub.text(), hub.text()[-3000:]
        assert "running on the last good roster" in hub.text()
        assert who(hub, token)[TEACH][0] == {"tier-student"}, "the last good roster, not the broken file"
        assert reachable(hub, token, S1)
        status = api(hub, token, "GET", "classroom/roster").json()
        assert f"{hub.roster}:{BROKEN_LINE}:" in status["error"]
        hub.stop()

        # 4th start: the roster file is gone
        hub.roster.unlink()
        hub.start()
        assert f"{hub.roster}:0: cannot read roster" in hub.text()
        assert who(hub, token)[S1][0] == {"tier-student", "course-c2-students"}
        assert reachable(hub, token, S1)
        hub.stop()

        # 5th start: fixed, with a promotion
        hub.roster.write_text(ROSTER_3)
        hub.start()
        groups, roles, admin = who(hub, token)[TEACH]
        assert groups == {"tier-admin"} and "classroom-admin" in roles
        assert reachable(hub, token, S1)
        assert server_pids(S1) == keep
        hub.stop()

        # broken, and no last good copy: the hub refuses, in one line
        hub.roster.write_text(BROKEN)
        last_good.unlink()
        result = subprocess.run(
            [os.path.join(BIN, "jupyterhub"), "-f", str(EXAMPLE), *hub.args],
            cwd=tmp_path,
            env=hub.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0
        lines = [line for line in (result.stdout + result.stderr).splitlines() if "Traceback" in line or str(hub.roster) in line]
        assert len(lines) == 1 and f"{hub.roster}:{BROKEN_LINE}:" in lines[0], result.stderr[-3000:]
    finally:
        hub.stop()


def test_demoted_instructor_loses_a_students_server_quickly(tmp_path, world):
    poll, cache = 1, 5  # cache: ClassroomSpawner.hub_auth_cache_max_age's default
    hub = Hub(tmp_path, world, f"--ClassroomGitHubAuthenticator.roster_poll_interval={poll}")
    hub.roster.write_text(ROSTER_1)
    try:
        hub.start()
        token = root_token(hub, world)
        start_server(hub, token, S1)
        # the instructor opens the student's server as a browser does: the
        # server's OAuth with the hub, through the proxy
        s, r, _ = oauth_login({"url": hub.url}, world, INS)
        assert r.status_code == 302
        r = confirm(s, s.get(hub.url + f"user/{S1}/lab", timeout=30))
        assert r.status_code == 200 and r.url == hub.url + f"user/{S1}/lab", hub.text()[-3000:]
        assert s.get(hub.url + f"user/{S1}/api/contents", timeout=10).status_code == 200

        hub.roster.write_text(ROSTER_1.replace(f"instructors: [{INS}]", "instructors: []\n    tas: [" + INS + "]"))
        # a generous deadline, not a speed test: well under jupyterhub's own
        # 300 s auth cache, so a server that ignored hub_auth_cache_max_age fails
        tic = time.monotonic()
        while time.monotonic() - tic < 60:
            r = s.get(hub.url + f"user/{S1}/api/contents", timeout=10, allow_redirects=False)
            if r.status_code in (302, 403):
                break
            time.sleep(0.2)
        took = time.monotonic() - tic
        assert r.status_code in (302, 403), f"still {r.status_code} after {took:.1f} s"
        print(f"access ended after {took:.1f} s (poll {poll} s, cache {cache} s)")
        # and the way back in is closed: the hub refuses a new OAuth grant
        r = confirm(s, s.get(hub.url + f"user/{S1}/lab", timeout=30))
        assert r.url != hub.url + f"user/{S1}/lab" and r.status_code == 403, r.url
        tokens = api(hub, token, "GET", f"users/{INS}/tokens").json()["api_tokens"]
        assert not [t for t in tokens if S1 in (t.get("oauth_client") or "")], tokens
    finally:
        hub.stop()
