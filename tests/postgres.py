"""A private PostgreSQL server for the test run, from Debian's packages.

``postgres_url`` (session-scoped) makes a fresh cluster in a temporary folder
owned by the ``postgres`` system user (PostgreSQL refuses to run as root),
listening on 127.0.0.1 on a free port and on a unix socket in that folder
only, with one database ``classroom``; it yields an SQLAlchemy URL and
stops the server and removes the folder at the end, failed tests or not.

A plugin (tests/conftest.py's ``pytest_plugins``): a test asks for
``postgres_url`` by name, so every module shares the one server.
``./dev test`` installs Debian's ``postgresql`` when it is missing; as root
without it the fixture fails (PostgreSQL support must not go untested
silently), as another user it skips.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

PG_USER = "postgres"
DATABASE = "classroom"
#: the URL of the running server, for code that cannot take a fixture
#: (a module's HUB_CONFIG, called by the `app` fixture)
current_url = None


def find_bindir():
    """The newest /usr/lib/postgresql/<version>/bin that has initdb, or None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def version(path):
        v = path.split("/")[-3]
        return int(v) if v.isdigit() else 0

    return os.path.dirname(max(found, key=version)) if found else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid):
    """Whether process *pid* exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


class PostgresServer:
    def __init__(self, bindir, base):
        self.bindir = bindir
        self.base = base
        self.data = os.path.join(base, "data")
        self.sockets = os.path.join(base, "run")
        self.log = os.path.join(base, "server.log")
        self.password = secrets.token_hex(16)
        self.port = None

    def run(self, *args, **kwargs):
        """Run a PostgreSQL program as the postgres user; raise with its output."""
        account = pwd.getpwnam(PG_USER)
        env = {"PATH": "/usr/bin:/bin", "HOME": self.base, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        result = subprocess.run(
            [os.path.join(self.bindir, args[0]), *args[1:]],
            user=account.pw_uid,
            group=account.pw_gid,
            extra_groups=[],
            env=env,
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=120,
            **kwargs,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}{self.tail()}")
        return result

    def tail(self):
        try:
            with open(self.log) as f:
                return "\nserver log:\n" + "".join(f.readlines()[-20:])
        except OSError:
            return ""

    def start(self):
        account = pwd.getpwnam(PG_USER)
        os.makedirs(self.sockets)
        pwfile = os.path.join(self.base, "pwfile")
        with open(pwfile, "w") as f:
            f.write(self.password + "\n")
        for path in (self.base, self.sockets, pwfile):
            os.chown(path, account.pw_uid, account.pw_gid)
        # TCP needs the password (students' accounts share this machine);
        # the socket (0700 folder) is the postgres user's only
        self.run(
            "initdb", "--pgdata", self.data, "--username", PG_USER, "--pwfile", pwfile,
            "--auth-host", "scram-sha-256", "--auth-local", "peer",
            "--encoding", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        os.unlink(pwfile)
        for _ in range(5):  # another process may take the free port before the server does
            self.port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.sockets} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self.run("pg_ctl", "start", "--pgdata", self.data, "--log", self.log, "--wait", "--timeout", "60", "--options", options)
            except RuntimeError:
                if "could not bind" in self.tail() and self.postmaster_pid() is None:
                    continue
                raise
            break
        self.run(
            "psql", "--no-psqlrc", "--quiet", "--host", self.sockets, "--port", str(self.port),
            "--username", PG_USER, "--dbname", "postgres", "--set", "ON_ERROR_STOP=1",
            "--command", f"CREATE DATABASE {DATABASE}",
        )  # fmt: skip

    @property
    def url(self):
        return f"postgresql+psycopg://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def processes(self):
        """The live processes of this server (they all work in its data folder)."""
        pids = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and os.readlink(f"/proc/{entry}/cwd") == self.data and alive(entry):
                    pids.append(int(entry))
            except OSError:
                pass
        return pids

    def stop(self):
        try:
            if self.postmaster_pid() is not None:
                try:
                    self.run("pg_ctl", "stop", "--pgdata", self.data, "--mode", "immediate", "--wait")
                except (RuntimeError, subprocess.TimeoutExpired):
                    pass
            # pg_ctl returns once the pid file is gone, a moment before the last
            # process; kill what is left after a while
            deadline = time.monotonic() + 10
            while (pids := self.processes()) and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url():
    """An SQLAlchemy URL of a private, empty PostgreSQL database for this test run."""
    global current_url
    bindir = find_bindir()
    if bindir is None:
        message = (
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "install Debian's server with `apt-get install postgresql`, or run the tests through ./dev test, "
            "which installs it"
        )
        if os.geteuid() == 0:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    if os.geteuid() != 0:
        pytest.skip("needs root: runs a private PostgreSQL server as the postgres system user")
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        pytest.fail(f"no {PG_USER!r} system user: is Debian's postgresql package installed?", pytrace=False)
    server = PostgresServer(bindir, tempfile.mkdtemp(prefix="classroomhub-postgres-"))
    try:
        server.start()
        current_url = server.url
        yield server.url
    finally:
        current_url = None
        server.stop()
