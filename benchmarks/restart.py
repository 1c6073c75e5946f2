"""Hub restart benchmark: restart-to-ready with N servers left running.

A real ``jupyterhub`` process (ClassroomPasswordAuthenticator on a roster of
N people, ClassroomSpawner running real ``jupyterhub-singleuser`` servers as
real system users, ``cleanup_servers = False``, SQLite, a real
configurable-http-proxy). Measured: the time from starting the hub process
until it answers ``/hub/api`` *and* every running server answers through the
proxy (``/user/NAME/api/status`` with a service token, which each server
checks with the hub). Baseline, same hub and same run: its start with no
server running. Medians of 3 each; the ratio is with-servers / baseline.

Needs root and writable cgroup v1 controllers. Creates system users
``h1b<hex>-NN`` and cgroups under ``bench-h1-<hex>``; removes them, the
servers, the hub and the proxy on exit, also after an error or Ctrl-C::

    PATH=$PWD/.venv/bin:$PWD/proxy/node_modules/.bin:$PATH python benchmarks/restart.py
    ... python benchmarks/restart.py --quick       # 5 servers
    ... python benchmarks/restart.py -n 80

Ends with one line per target (PASS/MISS).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, os.path.dirname(__file__))
from _common import Users, secs, stop_hub  # noqa: E402

from classroomhub.demo import free_ports  # noqa: E402
from classroomhub.spawner import EnforcementUnavailable, detect  # noqa: E402

TARGET_RATIO = 2.0  # restart with N servers <= 2x a start with none

CONFIG = """\
import os
c.JupyterHub.bind_url = {url!r}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.ConfigurableHTTPProxy.pid_file = {state!r} + "/proxy.pid"
c.JupyterHub.db_url = "sqlite:///" + {state!r} + "/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = {state!r} + "/cookie_secret"
c.JupyterHub.cleanup_servers = False
c.JupyterHub.authenticator_class = "classroom-password"
c.ClassroomPasswordAuthenticator.roster_path = {state!r} + "/roster.yaml"
c.ClassroomPasswordAuthenticator.user_password = {password!r}
c.JupyterHub.spawner_class = "classroom"
c.ClassroomSpawner.cgroup_parent = {cgroup_parent!r}
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.http_timeout = 120
c.Spawner.start_timeout = 300
c.JupyterHub.services = [{{"name": "bench", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "bench", "scopes": ["admin:servers", "access:servers", "read:users"], "services": ["bench"]}}
]
"""


class Bench:
    def __init__(self, n, tag):
        self.n = n
        self.tag = tag
        self.logins = [f"h1b{tag}-{i:02d}" for i in range(n)]
        self.state = tempfile.mkdtemp(prefix=f"h1-restart-{tag}-")
        os.chmod(self.state, 0o700)
        self.token = secrets.token_hex(24)
        port, hub_port, proxy_api_port = free_ports(3)
        self.url = f"http://127.0.0.1:{port}/"
        self.cgroup_parent = f"bench-h1-{tag}"
        bin_dir = os.path.dirname(sys.executable)
        proxy = os.environ.get("CLASSROOMHUB_PROXY") or shutil.which("configurable-http-proxy")
        Path(self.state, "roster.yaml").write_text("users:\n" + "".join(f"  {u}: {{}}\n" for u in self.logins))
        self.config = Path(self.state, "jupyterhub_config.py")
        self.config.write_text(
            CONFIG.format(
                url=self.url,
                hub_port=hub_port,
                proxy_api_port=proxy_api_port,
                proxy=os.path.abspath(proxy),
                state=self.state,
                password=secrets.token_hex(12),
                cgroup_parent=self.cgroup_parent,
                singleuser=os.path.join(bin_dir, "jupyterhub-singleuser"),
                token=self.token,
            )
        )
        self.proc = None
        self.log = open(os.path.join(self.state, "hub.log"), "ab")
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {self.token}"

    def start(self, servers=()):
        """Start the hub; seconds until /hub/api and every one of *servers* answers."""
        tic = time.perf_counter()
        self.proc = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "jupyterhub"), "-f", str(self.config)],
            cwd=self.state,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self._until(lambda: self._answers(self.url + "hub/api/"), "the hub")
        waiting = set(servers)
        while waiting:
            waiting = {u for u in waiting if not self._answers(self.url + f"user/{u}/api/status")}
            if waiting:
                self._check_alive()
                time.sleep(0.05)
        return time.perf_counter() - tic

    def _answers(self, url):
        try:
            r = self.http.get(url, timeout=5, allow_redirects=False)
        except requests.RequestException:
            return False
        return r.status_code == 200

    def _check_alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"the hub exited; see {self.state}/hub.log")

    def _until(self, condition, what, timeout=300):
        deadline = time.monotonic() + timeout
        while not condition():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready in {timeout} s; see {self.state}/hub.log")
            time.sleep(0.05)

    def stop(self):
        stop_hub(self.proc, timeout=60)

    def spawn_all(self):
        def spawn(login):
            r = self.http.post(self.url + f"hub/api/users/{login}/server", timeout=300)
            if r.status_code not in (201, 202):
                raise RuntimeError(f"spawn {login}: {r.status_code} {r.text}")
            self._until(lambda: self._answers(self.url + f"user/{login}/api/status"), f"server of {login}")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(spawn, self.logins))

    def stop_all(self):
        for login in self.logins:
            self.http.delete(self.url + f"hub/api/users/{login}/server", timeout=60)

    def cleanup(self, users):
        self.stop()
        users.remove_all()
        try:
            backend, _ = detect("auto", self.cgroup_parent)
            backend.remove_parent()
        except (EnforcementUnavailable, OSError) as e:
            print(f"   cleanup: cgroups: {e}", file=sys.stderr)
        self.log.close()
        shutil.rmtree(self.state, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=40, help="servers left running (default 40)")
    parser.add_argument("--quick", action="store_true", help="5 servers")
    parser.add_argument("--repeat", type=int, default=3, help="starts measured of each kind (default 3)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/restart.py needs root: it runs servers as system users")
    n = 5 if args.quick else args.n
    bench = Bench(n, secrets.token_hex(2))
    users = Users()
    try:
        for login in bench.logins:
            users.create(login)
        print(f"restart-to-ready, {n} servers left running vs none; {args.repeat} starts each")
        baseline = []
        for _ in range(args.repeat):
            baseline.append(bench.start())
            bench.stop()
        bench.start()
        tic = time.perf_counter()
        bench.spawn_all()
        print(f"   ({n} servers started in {time.perf_counter() - tic:.1f} s)")
        bench.stop()
        restarts = []
        for _ in range(args.repeat):
            restarts.append(bench.start(bench.logins))
            bench.stop()
        bench.start()
        bench.stop_all()
        bench.stop()
        base, ours = statistics.median(baseline), statistics.median(restarts)
        ratio = ours / base
        print(f"   start, no servers       median {secs(base)} s  (runs: {', '.join(f'{t:.2f}' for t in baseline)})")
        print(f"   restart, {n:3d} servers     median {secs(ours)} s  (runs: {', '.join(f'{t:.2f}' for t in restarts)})")
        print(f"   ratio {ratio:.2f}x")
        verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
        print(f"{verdict} restart with {n} running servers <= {TARGET_RATIO:.1f}x a start with none: {ratio:.2f}x")
    finally:
        bench.cleanup(users)


if __name__ == "__main__":
    main()
