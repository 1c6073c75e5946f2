"""The instructors' command line: failures are one line (a redirect is never
followed, a non-JSON answer and a refused token are named), Ctrl-C exits with
130, --help shows defaults and examples, and against a real hub and classroom
service: due dates, extensions, collection with a progress bar, and a
release to students without an account reported as pending."""

import asyncio
import os
import pty
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from jupyterhub.tests.utils import public_url
from jupyterhub.utils import random_port
from tornado import httpserver, netutil, web

from classroomhub import cli
from service_hub import (
    call,
    data_dir,
    home,
    hub_config,
    material,
    system_users,
    write_tree,
)

TAG = "h7" + secrets.token_hex(2)
INES, SAM, SUE, NEW = (f"{TAG}-{n}" for n in ("ines", "sam", "sue", "new"))
# system users while the hub runs (fixtures/service.py); NEW has no system
# account: a student who never logged in yet
PEOPLE = [INES, SAM, SUE]
PORT = random_port()
DATA_DIR = data_dir(TAG)
ROSTER = f"""\
users:
  admin: {{tier: root}}
courses:
  data101:
    instructors: [{INES}]
    students: [{SAM}, {SUE}, {NEW}]
"""
COMMAND = [sys.executable, "-m", "classroomhub.cli"]
root_only = pytest.mark.root("creates system users and works as them")


def HUB_CONFIG(c):
    hub_config(c, DATA_DIR, PORT, "--ClassroomService.concurrency=1")


# -- a tiny web server standing in for a wrongly configured hub ------------------------


class Recorder(web.RequestHandler):
    def initialize(self, answer, seen):
        self.answer, self.seen = answer, seen

    async def prepare(self):
        self.seen.append((self.request.method, self.request.path))
        status, headers, body = self.answer
        if status is None:  # never answers (Ctrl-C test)
            await asyncio.sleep(3600)
        self.set_status(status)
        for name, value in headers.items():
            self.set_header(name, value)
        self.finish(body)


@pytest.fixture
def fake_hub():
    """start(status, headers, body) → (base URL, list of requests seen)."""
    stops = []

    def start(status, headers=None, body=b""):
        seen, ready = [], threading.Event()
        sockets = netutil.bind_sockets(0, "127.0.0.1")

        async def serve():
            app = web.Application([(r"/.*", Recorder, {"answer": (status, headers or {}, body), "seen": seen})])
            server = httpserver.HTTPServer(app)
            server.add_sockets(sockets)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            stops.append(lambda: loop.call_soon_threadsafe(stop.set))
            ready.set()
            await stop.wait()
            server.stop()

        threading.Thread(target=asyncio.run, args=(serve(),), daemon=True).start()
        ready.wait(10)
        return f"http://127.0.0.1:{sockets[0].getsockname()[1]}", seen

    yield start
    for stop in stops:
        stop()


def run(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_a_post_is_not_redirected_and_the_url_to_use_is_named(fake_hub, capsys):
    url, seen = fake_hub(301, {"Location": "https://hub.example.edu/hub/api/classroom/roster"})
    rc, out, err = run(["roster", "sync", "--hub-url", url, "--token", "t"], capsys)
    assert rc == 1
    assert err.strip().splitlines() == [
        f"classroomhub roster sync: {url}/hub/api/classroom/roster redirects (301) to "
        "https://hub.example.edu/hub/api/classroom/roster: use --hub-url https://hub.example.edu"
    ]
    assert seen == [("POST", "/hub/api/classroom/roster")]  # nothing repeated at the new address

    # somewhere else entirely: named, not followed
    url, seen = fake_hub(302, {"Location": "/welcome"})
    argv = ["release", "data101", "wk", "--from", "/tmp", "--hub-url", url, "--token", "t"]
    rc, out, err = run(argv, capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert f"redirects (302) to {url}/welcome (a POST is not repeated there)" in err
    assert seen == [("POST", "/services/classroom/api/courses/data101/materials/wk/releases")]


def test_a_redirect_to_the_login_page_means_the_token_was_refused(fake_hub, capsys):
    url, seen = fake_hub(302, {"Location": "/hub/login?next=%2Fservices%2Fclassroom%2Fapi%2Fcourses%2Fdata101"})
    rc, out, err = run(["status", "data101", "--hub-url", url, "--token", "t"], capsys)
    assert rc == 1
    assert err.strip().splitlines() == [
        f"classroomhub status: {url}/services/classroom/api/courses/data101: the token was not accepted"
        " (HTTP 302 to the login page): check --token"
    ]


def test_an_answer_that_is_not_json_is_one_line(fake_hub, capsys):
    url, _ = fake_hub(200, {"Content-Type": "text/html"}, b"<html><body>Welcome to nginx!</body></html>")
    rc, out, err = run(["usage", "--hub-url", url, "--token", "t"], capsys)
    assert rc == 1 and out == ""
    assert err.strip().splitlines() == [
        f"classroomhub usage: {url}/hub/api/classroom/usage: answered with text/html, not JSON:"
        " is --hub-url the hub's address (and --service-prefix the classroom service's)?"
    ]
    url, _ = fake_hub(502, {"Content-Type": "text/html"}, b"<html><h1>502 Bad Gateway</h1>\n</html>")
    rc, out, err = run(["usage", "--hub-url", url, "--token", "t"], capsys)
    assert rc == 1 and err.strip().splitlines() == [f"classroomhub usage: {url}/hub/api/classroom/usage: HTTP 502 Bad Gateway"]


def test_no_token_and_no_hub_are_one_line(capsys, monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    rc, _, err = run(["usage", "--hub-url", "http://127.0.0.1:9"], capsys)
    assert rc == 2 and err.strip().splitlines() == ["classroomhub usage: no API token: pass --token or set JUPYTERHUB_API_TOKEN"]
    port = random_port()
    rc, _, err = run(["usage", "--hub-url", f"http://127.0.0.1:{port}", "--token", "t"], capsys)
    assert rc == 1 and err.strip().splitlines() == [
        f"classroomhub usage: http://127.0.0.1:{port}/hub/api/classroom/usage: [Errno 111] Connection refused"
    ]


def test_a_file_a_command_cannot_use_is_one_line(tmp_path, capsys):
    """A broken roster and an unwritable file, raised from inside a command, reach
    the user as the one line main() makes of them (nothing is changed)."""
    roster = tmp_path / "next.yaml"
    roster.write_text("users:\n  opal: admin\n  alice: god\n  -bad: {}\ncourses:\n  c1:\n    students: [opal]\n")
    rc, out, err = run(["term-end", "--keep-roster", str(roster)], capsys)
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [  # the first error, not the warning at line 2
        f"classroomhub term-end: {roster}:3: user 'alice': unknown tier 'god' (expected one of root, admin, power,"
        f" student) (and 1 more: `classroomhub roster check {roster}` lists them)"
    ]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc, out, err = run(["generate-config", "-o", str(blocker / "conf" / "jupyterhub_config.py")], capsys)
    assert rc == 1 and err.strip().splitlines() == [f"classroomhub generate-config: {blocker / 'conf'}: Not a directory"]


def test_ctrl_c_exits_cleanly_with_130(fake_hub):
    url, seen = fake_hub(None)  # a hub that never answers
    proc = subprocess.Popen(
        [*COMMAND, "usage", "--hub-url", url, "--token", "t"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen, "the command never reached the server"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["classroomhub usage: interrupted"], err


def subcommands(parser):
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            if sub._subparsers is not None:
                yield from subcommands(sub)
            else:
                yield name, sub


def test_help_shows_defaults_and_examples():
    commands = dict(subcommands(cli.build_parser()))
    assert {"check", "sync", "usage", "release", "status", "due", "extend", "collect", "submissions", "export"} <= set(
        commands
    )
    assert {"generate-config", "systemd-unit", "demo"} <= set(commands)
    for name, parser in commands.items():
        text = parser.format_help()
        examples = text.split("examples:\n", 1)[-1]
        assert "examples:\n" in text and "classroomhub " in examples, name
    due = " ".join(commands["due"].format_help().split())
    assert "(default: 60)" in due and "(default: /services/classroom)" in due
    assert "classroomhub due data101 hw1 2026-12-04T17:00+01:00 --late 2d" in due
    result = subprocess.run([*COMMAND, "extend", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--by DURATION" in result.stdout and "examples:" in result.stdout


# -- against the real hub and classroom service -----------------------------------------





def hub_args(app, login):
    return ["--hub-url", public_url(app).rstrip("/"), "--token", app.users[login].new_api_token(note="cli")]


async def cli_run(argv, capsys):
    rc = await asyncio.to_thread(cli.main, argv)
    out, err = capsys.readouterr()
    return rc, out, err


@root_only
async def test_a_refused_token_is_one_line(app, accounts, ready, capsys):
    base = ["--hub-url", public_url(app).rstrip("/"), "--token", "not-a-token"]
    rc, out, err = await cli_run(["status", "data101", *base], capsys)
    assert rc == 1 and out == ""
    assert err.strip().splitlines() == ["classroomhub status: Authentication needed: a JupyterHub token or a hub login"]
    rc, out, err = await cli_run(["roster", "sync", *base], capsys)
    assert rc == 1 and out == ""
    assert err.strip().splitlines() == ["classroomhub roster sync: Missing or invalid credentials. (check --token and its scopes)"]


@root_only
async def test_release_reports_students_without_an_account_as_pending(app, accounts, ready, capsys):
    src = material(INES, {"one.ipynb": "1\n"})
    rc, out, err = await cli_run(["release", "data101", "wk1", "--from", src, *hub_args(app, INES)], capsys)
    assert rc == 0, err
    assert f"{NEW:<24} pending: no account yet, delivered at their first start" in out.splitlines()
    assert "1 pending (no account yet): delivered when their server first starts" in out
    assert next(line for line in out.splitlines() if line.startswith(SAM)).split()[1] == "1"  # added
    assert NEW not in err  # not reported as a failure
    r = await call(app, INES, "GET", "courses/data101/materials/wk1/releases/1")
    report = next(rep for rep in r.json()["reports"] if rep["student"] == NEW)
    assert report["pending"] and not report["ok"] and report["counts"]["failed"] == 0

    # their first start: the account exists, the spawner's sync delivers
    with system_users([NEW]):
        r = await call(app, NEW, "POST", "sync")
        assert r.status_code == 200, r.text
        assert os.path.exists(os.path.join(home(NEW), "data101", "wk1", "one.ipynb"))
        r = await call(app, INES, "GET", "courses/data101/materials/wk1/releases/1")
        report = next(rep for rep in r.json()["reports"] if rep["student"] == NEW)
        assert report["ok"] and not report["pending"]


@root_only
async def test_due_and_extend(app, accounts, ready, capsys):
    src = material(INES, {"hw.ipynb": "{}\n"})
    rc, _, err = await cli_run(["release", "data101", "hw1", "--from", src, *hub_args(app, INES)], capsys)
    assert rc == 0, err

    rc, out, err = await cli_run(["due", "data101", "hw1", "2030-01-02T10:00+01:00", "--late", "2h", *hub_args(app, INES)], capsys)
    assert rc == 0, err
    due = datetime(2030, 1, 2, 9, 0, tzinfo=timezone.utc)
    assert f"due {due.astimezone().isoformat()}, late hand-ins until {(due + timedelta(hours=2)).astimezone().isoformat()}" in out
    r = await call(app, INES, "GET", "courses/data101/assignments/hw1")
    assert (r.json()["due"], r.json()["late_seconds"]) == ("2030-01-02T09:00:00+00:00", 7200)

    # moved, without a zone (this computer's), the late window kept
    rc, out, err = await cli_run(["due", "data101", "hw1", "2030-01-03T12:30", *hub_args(app, INES)], capsys)
    assert rc == 0, err
    r = await call(app, INES, "GET", "courses/data101/assignments/hw1")
    moved = datetime(2030, 1, 3, 12, 30).astimezone()
    assert datetime.fromisoformat(r.json()["due"]) == moved and r.json()["late_seconds"] == 7200
    rc, out, _ = await cli_run(["due", "data101", "hw1", *hub_args(app, INES)], capsys)
    assert rc == 0 and f"data101/hw1: due {moved.isoformat()}" in out

    rc, out, err = await cli_run(["extend", "data101", "hw1", SAM, "--by", "2d", *hub_args(app, INES)], capsys)
    assert rc == 0, err
    assert f"{SAM}: due {(moved + timedelta(days=2)).isoformat()}" in out
    r = await call(app, INES, "GET", "courses/data101/assignments/hw1/submissions")
    rows = {row["student"]: row for row in r.json()["students"]}
    assert datetime.fromisoformat(rows[SAM]["due"]) == moved + timedelta(days=2)
    assert datetime.fromisoformat(rows[SUE]["due"]) == moved

    rc, out, err = await cli_run(["extend", "data101", "hw1", SAM, "--remove", *hub_args(app, INES)], capsys)
    assert rc == 0, err
    r = await call(app, INES, "GET", "courses/data101/assignments/hw1/submissions")
    assert datetime.fromisoformat({row["student"]: row for row in r.json()["students"]}[SAM]["due"]) == moved

    # refusals: one line with the service's message
    rc, out, err = await cli_run(["extend", "data101", "hw1", "nobody", "--by", "1d", *hub_args(app, INES)], capsys)
    assert rc == 1 and err.strip().splitlines() == ["classroomhub extend: 'nobody' is not a student of 'data101'"]
    rc, out, err = await cli_run(["due", "data101", "hw1", "2030-01-01T00:00Z", *hub_args(app, SAM)], capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "Only instructors" in err


@root_only
async def test_collect_shows_progress_while_it_runs(app, accounts, ready):
    src = material(INES, {"hw.ipynb": "{}\n"})
    r = await call(app, INES, "POST", "courses/data101/materials/hw2/releases", json={"source": src, "wait": True})
    assert r.status_code == 201, r.text
    for student in (SAM, SUE):  # enough files and bytes that each snapshot takes a while
        files = {f"f{i:04d}": "x" for i in range(9000)}
        files["big.bin"] = secrets.token_hex(32 * 1024**2)  # 64 MB
        write_tree(student, os.path.join(home(student), "data101", "hw2", "many"), files)
    r = await call(app, INES, "GET", "courses/data101/assignments/hw2/collect")
    assert r.status_code == 200 and r.json()["progress"]["running"] is False

    # a terminal, as an instructor's: the bar is redrawn as students are done
    primary, secondary = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        *COMMAND, "collect", "data101", "hw2", *hub_args(app, INES), stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary
    )
    os.close(secondary)
    output = b""
    while True:
        ready_fds = await asyncio.to_thread(select.select, [primary], [], [], 60)
        if not ready_fds[0]:
            break
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the command ended
            break
        if not chunk:
            break
        output += chunk
    rc = await asyncio.wait_for(proc.wait(), 60)
    os.close(primary)
    text = output.decode()
    assert rc == 1, text  # NEW has no account: nothing collected, said below
    bars = [part.strip() for part in text.replace("\r\n", "\n").split("\r") if "students" in part]
    assert any("0/3 students" in bar or "1/3 students" in bar or "2/3 students" in bar for bar in bars), text
    assert "[" + "#" * 30 + "] 3/3 students" in text
    lines = text.replace("\r", "\n").splitlines()
    assert next(line for line in lines if line.startswith(SAM)).split()[1] == "9002"
    assert next(line for line in lines if line.startswith(SUE)).split()[-1] == "ok"
    assert "has no system account" in next(line for line in lines if line.startswith(NEW))
