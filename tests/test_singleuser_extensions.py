"""The default single-user environment's JupyterLab extensions on a real
server: a real hub and proxy, ClassroomSpawner, a real system user in a real
cgroup v1 group, a real kernel driven over the server's websocket.

- jupyter-resource-usage's ``/api/metrics/v1`` (what JupyterLab's status bar
  shows) against the cgroup the limits are enforced on: the limits shown are
  the tier's, and the memory and CPU shown follow what the cgroup charges.
- jupyterlab-git's server extension commits in a repository the student
  made, as the student, and pushes to a remote that wants a login and a
  token (as GitHub over HTTPS), without keeping the token.
"""

import asyncio
import base64
import json
import os
import pwd
import secrets
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from jupyterhub.tests.utils import api_request, public_url
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from classroomhub.spawner import ClassroomSpawner

from browser import TIMEOUT_MS
from conftest import PASSWORD
from fixtures.servers import cgroup_v1_unavailable, classroom_spawner_config, remove_spawned

TAG = "su" + secrets.token_hex(2)
STUDENT = f"{TAG}-stu"
CGROUP_PARENT = f"su-{TAG}"
MiB = 1024**2
# room for the server (~130 MiB), a kernel (~50 MiB) and the allocation
MEM_LIMIT = 768 * MiB
CPU_LIMIT = 0.5
ALLOCATED = 200 * MiB

ROSTER = f"""\
users:
  admin: {{tier: root}}
  {STUDENT}: {{}}
"""


_skip = cgroup_v1_unavailable(CGROUP_PARENT)
# what runs on a real server; the spawner's arguments are checked anywhere
real_server = pytest.mark.skipif(_skip is not None, reason=_skip or "")


def HUB_CONFIG(c):
    classroom_spawner_config(c, CGROUP_PARENT)
    c.ClassroomSpawner.tier_settings = {
        "student": {"mem_limit": MEM_LIMIT, "cpu_limit": CPU_LIMIT, "idle_timeout": 0, "max_age": 0},
    }


@pytest.fixture(scope="module")
def remove_test_user_and_cgroups():
    yield
    remove_spawned([STUDENT], CGROUP_PARENT)


@pytest.fixture(autouse=True)
def cleanup_after():
    """Replaces jupyterhub's per-test cleanup, which stops every server after
    each test: this module's tests share one server, stopped by its fixture."""
    yield


@pytest.fixture(scope="module")
async def server(app, remove_test_user_and_cgroups):
    """The student's running server, their token, and their spawner."""
    await app.authenticator.sync_roster()
    r = await api_request(app, f"users/{STUDENT}/server", method="post")
    assert r.status_code in (201, 202), r.text
    spawner = app.users[STUDENT].spawner
    deadline = time.monotonic() + 60
    while not spawner.ready:
        assert time.monotonic() < deadline, f"{STUDENT}'s server not ready in 60 s"
        await asyncio.sleep(0.1)
    token = app.users[STUDENT].new_api_token(note="singleuser extensions test")
    try:
        yield {"url": public_url(app, app.users[STUDENT]), "token": token, "spawner": spawner}
    finally:
        r = await api_request(app, f"users/{STUDENT}/server", method="delete")
        deadline = time.monotonic() + 30
        while spawner.active and time.monotonic() < deadline:
            await asyncio.sleep(0.1)


async def call(server, method, path, **kwargs):
    """A request to the student's server through the proxy, with their token.
    In a thread: the server asks this same hub (our event loop) about the token."""
    headers = {"Authorization": f"token {server['token']}"}
    return await asyncio.to_thread(
        requests.request, method, server["url"] + path, headers=headers, timeout=60, **kwargs
    )


class Kernel:
    """A kernel of the student's server, driven over the server's websocket
    (``/api/kernels/<id>/channels``) as JupyterLab drives it."""

    def __init__(self, server, kernel_id, ws):
        self.server, self.id, self.ws = server, kernel_id, ws
        self.session = uuid.uuid4().hex

    @classmethod
    async def start(cls, server):
        r = await call(server, "POST", "api/kernels", json={"name": "python3"})
        assert r.status_code == 201, r.text
        kernel_id = r.json()["id"]
        url = server["url"].replace("http", "ws", 1) + f"api/kernels/{kernel_id}/channels"
        request = HTTPRequest(url, headers={"Authorization": f"token {server['token']}"})
        kernel = cls(server, kernel_id, await websocket_connect(request))
        await kernel.wait_ready()
        return kernel

    async def wait_ready(self, timeout=60):
        """Ask for kernel_info until the kernel answers, as jupyter_client's
        wait_for_ready does (a request sent while it starts may get no reply)."""
        deadline = time.monotonic() + timeout
        while True:
            msg_id = await self.send("kernel_info_request", {})
            try:
                await self.reply(msg_id, timeout=2)
                return
            except (asyncio.TimeoutError, AssertionError):
                assert time.monotonic() < deadline, f"kernel {self.id} not ready in {timeout} s"

    async def send(self, msg_type, content):
        """Send a shell request; return its message id."""
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "username": STUDENT,
            "session": self.session,
            "date": datetime.now(timezone.utc).isoformat(),
            "version": "5.3",
        }
        await self.ws.write_message(
            json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell"})
        )
        return msg_id

    async def execute(self, code):
        """Send *code* for execution; return the request's message id."""
        content = {"code": code, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False}
        return await self.send("execute_request", content)

    async def reply(self, msg_id, timeout=60):
        """Wait for the reply to *msg_id* and the kernel's idle status after it
        (they come on different channels, in either order): (reply status,
        what it printed)."""
        output, status, idle = [], None, False
        deadline = time.monotonic() + timeout
        while status is None or not idle:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no reply to {msg_id} in {timeout} s"
            raw = await asyncio.wait_for(self.ws.read_message(), remaining)
            assert raw is not None, "the kernel's websocket closed"
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                output.append(msg["content"]["text"])
            elif kind == "error":
                output.append("\n".join(msg["content"]["traceback"]))
            elif kind.endswith("_reply"):
                status = msg["content"]["status"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return status, "".join(output)

    async def run(self, code, timeout=60):
        status, output = await self.reply(await self.execute(code), timeout)
        assert status == "ok", output
        return output

    async def shutdown(self):
        self.ws.close()
        await call(self.server, "DELETE", f"api/kernels/{self.id}")


def memory_folder(spawner):
    """The server's cgroup v1 memory folder (layout: classroomhub.spawner.cgroups)."""
    return next(d for d in spawner.backend.group_dirs(spawner.group_key) if os.path.exists(os.path.join(d, "memory.stat")))


def cgroup_memory(spawner):
    """What the limit is enforced on: usage (memory.usage_in_bytes, read as
    the spawner reads it), its anonymous and page-cache parts, and the limit."""
    folder = memory_folder(spawner)
    read = lambda name: open(os.path.join(folder, name)).read()
    stat = dict(line.split() for line in read("memory.stat").splitlines())
    return {
        "usage": spawner.backend.usage(spawner.group_key).mem_bytes,
        "anon": int(stat["total_rss"]),
        "cache": int(stat["total_cache"]),
        "limit": int(read("memory.limit_in_bytes")),
    }


async def metrics(server):
    """What JupyterLab's indicator polls: jupyter-resource-usage's endpoint."""
    r = await call(server, "GET", "api/metrics/v1")
    assert r.status_code == 200, r.text
    return r.json()


#: what a forked server's PSS may show beyond its cgroup's charge: its share
#: of the spawn template's pages (measured: 47-49 MiB)
TEMPLATE_SHARE = 80 * MiB


def mib(n):
    return f"{n / MiB:.1f} MiB"


@real_server
async def test_memory_shown_follows_the_cgroup_against_the_tiers_limit(server):
    spawner = server["spawner"]
    kernel = await Kernel.start(server)
    try:
        await kernel.run("x = 1")
        before, group_before = await metrics(server), cgroup_memory(spawner)
        # bytes * n writes every page: all of it is resident
        await kernel.run(f"block = b'\\x01' * {ALLOCATED}")
        after, group_after = await metrics(server), cgroup_memory(spawner)
    finally:
        await kernel.shutdown()
    for label, shown, group in (("before", before, group_before), ("after", after, group_after)):
        print(
            f"\n{label} {mib(ALLOCATED)}: resource-usage rss {mib(shown['rss'])} pss {mib(shown['pss'])}"
            f" | cgroup usage {mib(group['usage'])} (anon {mib(group['anon'])}, cache {mib(group['cache'])})"
            f" | limit shown {mib(shown['limits']['memory']['rss'])}, cgroup {mib(group['limit'])}"
        )

    # the limit shown is the tier's, which is the cgroup's
    assert after["limits"]["memory"]["rss"] == MEM_LIMIT == group_after["limit"]
    assert after["limits"]["memory"]["warn"] is False  # far from the limit
    # what the kernel allocated shows in full, as it is charged to the cgroup
    for grown in (after["pss"] - before["pss"], after["rss"] - before["rss"], group_after["usage"] - group_before["usage"]):
        assert 0.9 * ALLOCATED < grown < 1.1 * ALLOCATED, (mib(grown), before, after, group_before, group_after)
    # JupyterLab shows PSS (shared pages split between the processes sharing
    # them); the cgroup charges each page once, plus page cache: close. A
    # server forked from the spawn template also shows its share of the
    # template's pages, which are charged to the hub's cgroup, not the server's
    extra = after["pss"] - group_after["usage"]
    if spawner._template_child is None:
        assert abs(extra) < 0.1 * group_after["usage"], (after, group_after)
    else:
        assert -0.1 * group_after["usage"] < extra < TEMPLATE_SHARE, (mib(extra), after, group_after)
    # RSS counts the pages the server and its kernel share once per process
    assert after["rss"] > after["pss"]


def cgroup_cpu_seconds(spawner):
    return spawner.backend.usage(spawner.group_key).cpu_seconds  # cpuacct.usage


@real_server
async def test_cpu_shown_is_the_cgroups_against_the_tiers_cpu_limit(server):
    spawner = server["spawner"]
    kernel = await Kernel.start(server)
    try:
        await kernel.run("x = 1")
        await metrics(server)  # resource-usage measures CPU between two polls
        await asyncio.sleep(1)
        idle = await metrics(server)
        busy = await kernel.execute("import time\nt = time.time()\nwhile time.time() - t < 4: pass")
        await asyncio.sleep(0.5)
        await metrics(server)
        cpu_before, t_before = cgroup_cpu_seconds(spawner), time.monotonic()
        await asyncio.sleep(2)
        shown, cpu_after, t_after = await metrics(server), cgroup_cpu_seconds(spawner), time.monotonic()
        await kernel.reply(busy)
    finally:
        await kernel.shutdown()
    cores = (cpu_after - cpu_before) / (t_after - t_before)
    print(
        f"\nidle: resource-usage {idle['cpu_percent']}% | busy: resource-usage {shown['cpu_percent']}%,"
        f" cgroup {100 * cores:.1f}% | limit shown {shown['limits']['cpu']['cpu']} cores, tier {CPU_LIMIT}"
    )
    # the CPU indicator is on, against the tier's limit (JupyterLab draws
    # cpu_percent / 100 against it, in cores)
    assert shown["limits"]["cpu"]["cpu"] == CPU_LIMIT
    # resource-usage's own warning compares percent with cores: it would
    # flash at 1 % of a core, so the spawner turns it off
    assert "warn" not in idle["limits"]["cpu"], idle
    # a busy kernel shows what the cgroup charged, held by the quota
    assert abs(shown["cpu_percent"] / 100 - cores) < 0.15, (shown, cores)
    assert shown["cpu_percent"] / 100 < CPU_LIMIT + 0.1, shown



def test_the_hubs_own_resource_display_options_win():
    """An option given twice makes jupyter-resource-usage fail to load: the
    spawner adds its own only where the hub's Spawner.args do not set them."""
    args = ClassroomSpawner().get_args()
    assert "--ResourceUseDisplay.track_cpu_percent=True" in args
    assert "--ResourceUseDisplay.cpu_warning_threshold=0" in args
    args = ClassroomSpawner(args=["--ResourceUseDisplay.track_cpu_percent=False"]).get_args()
    assert [a for a in args if a.startswith("--ResourceUseDisplay.track_cpu_percent")] == [
        "--ResourceUseDisplay.track_cpu_percent=False"
    ]
    assert "--ResourceUseDisplay.cpu_warning_threshold=0" in args


@real_server
async def test_jupyterlab_shows_both_to_the_student(server, browser):
    """The extensions' JupyterLab parts, in the student's browser: memory and
    CPU against the limit in the status bar, and the git panel."""
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = await context.new_page()
        await page.goto(server["url"] + "lab")
        await page.fill("#username_input", STUDENT)
        await page.fill("#password_input", PASSWORD)
        await page.click("#login_submit")
        # e.g. "CPU: 2.00 % | Mem: 158.97 / 768.00 MB" (MiB, labelled MB)
        usage = '[title="Current resource usage"] >> text=/CPU: +[0-9.]+ % [|] Mem: +[0-9.]+ \\/ 768\\.00 MB/'
        await page.wait_for_selector(usage)
        await page.click('.jp-SideBar [data-id="jp-git-sessions"]')
        await page.wait_for_selector("text=Initialize a Repository")  # the home is no repository
        await page.wait_for_selector("text=Clone a Repository")
    finally:
        await context.close()

class _GitHTTP(BaseHTTPRequestHandler):
    """Smart HTTP for `git http-backend`, behind HTTP Basic auth."""

    def do_GET(self):
        self._serve()

    def do_POST(self):
        self._serve()

    def log_message(self, *args):
        pass

    def _serve(self):
        login, token, root = self.server.account
        expected = "Basic " + base64.b64encode(f"{login}:{token}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": login,  # lets git-receive-pack (push) in
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, payload = re.split(rb"\r?\n\r?\n", out, maxsplit=1)
        headers = [line.split(": ", 1) for line in head.decode().splitlines()]
        status = next((int(v.split()[0]) for k, v in headers if k.lower() == "status"), 200)
        self.send_response(status)
        for key, value in headers:
            if key.lower() != "status":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@contextmanager
def git_remote(login, token):
    """An empty repository served over HTTP on 127.0.0.1 that takes *login*
    and *token* the way GitHub's HTTPS remotes take a login and a personal
    access token; yields (its URL, its folder)."""
    root = tempfile.mkdtemp(prefix=f"{TAG}-remote-")
    subprocess.run(["git", "init", "--quiet", "--bare", os.path.join(root, "work.git")], check=True)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _GitHTTP)
    httpd.account = (login, token, root)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/work.git", os.path.join(root, "work.git")
    finally:
        httpd.shutdown()
        httpd.server_close()
        shutil.rmtree(root, ignore_errors=True)


async def git(server, path, action, body=None):
    """jupyterlab-git's REST call, as its panel makes it: POST /git/<path>/<action>."""
    r = await call(server, "POST", f"git/{path}/{action}", json=body or {})
    return r.status_code, r.json()


@real_server
async def test_git_panel_works_on_the_students_repository_as_the_student(server):
    assert shutil.which("git"), "jupyterlab-git needs the git binary on the servers' PATH"
    entry = pwd.getpwnam(STUDENT)
    # once per person, as docs/jupyterlab.md says (in a terminal; a kernel here)
    kernel = await Kernel.start(server)
    try:
        await kernel.run(
            "import subprocess\n"
            "subprocess.run(['git', 'config', '--global', 'user.name', 'Stu Dent'], check=True)\n"
            "subprocess.run(['git', 'config', '--global', 'user.email', 'stu@example.org'], check=True)"
        )
    finally:
        await kernel.shutdown()
    # a folder and a file from JupyterLab's file browser, then the git panel
    assert (await call(server, "PUT", "api/contents/work", json={"type": "directory"})).status_code == 201
    r = await call(server, "PUT", "api/contents/work/notes.md", json={"type": "file", "format": "text", "content": "# Week 1\n"})
    assert r.status_code == 201, r.text
    code, body = await git(server, "work", "init")
    assert code == 200, body
    code, body = await git(server, "work", "status")
    assert code == 200 and [(f["to"], f["x"], f["y"]) for f in body["files"]] == [("notes.md", "?", "?")], body
    assert (await git(server, "work", "add_all_untracked"))[0] == 200
    code, body = await git(server, "work", "commit", {"commit_msg": "Week 1 notes"})
    assert code == 200, body
    code, body = await git(server, "work", "log", {"history_count": 10})
    assert code == 200, body
    assert [(c["commit_msg"], c["author"]) for c in body["commits"]][0] == ("Week 1 notes", "Stu Dent")
    assert (await git(server, "work", "status"))[1]["files"] == []
    # git ran as the student: the repository is theirs
    for name in ("work/.git", "work/.git/index", ".gitconfig"):
        assert os.stat(os.path.join(entry.pw_dir, name)).st_uid == entry.pw_uid, name

    # sync with a remote that wants a login and a token, as GitHub over HTTPS
    token = secrets.token_hex(20)
    with git_remote(STUDENT, token) as (url, remote_dir):
        code, body = await git(server, "work", "remote/add", {"name": "origin", "url": url})
        assert code == 201, body
        code, body = await git(server, "work", "push", {"remote": "origin"})
        assert code == 500, body  # no credentials, no prompt: refused, not hung
        code, body = await git(server, "work", "push", {"remote": "origin", "auth": {"username": STUDENT, "password": token}})
        assert code == 200, body
        pushed = subprocess.run(
            ["git", "--git-dir", remote_dir, "log", "--format=%s", "HEAD"], capture_output=True, text=True, check=True
        ).stdout
        assert pushed.splitlines()[0] == "Week 1 notes", pushed
    # the token was used, not stored in the student's files
    for folder, _, files in os.walk(entry.pw_dir):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    assert token.encode() not in f.read(), path
