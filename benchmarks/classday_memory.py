"""Where a student's memory goes: the sizing figures of docs/operations.md.

Starts real jupyter servers (the hub's environment, as a system user made
for the run, no hub: ``jupyter server`` with the same server extensions the
single-user server loads) and reads each process's ``/proc/PID/smaps_rollup``:

- RSS: every page the process maps (what ``ps`` and the psutil watchdog see);
- PSS: shared pages divided among the processes sharing them (what all
  servers together cost: the sum of PSS over every process is the memory
  in use);
- private (``Private_Clean + Private_Dirty``): what one more student adds,
  however many run (pages nobody else maps).

Figures, medians of ``--repeat`` servers started one after the other:

a. an idle server with every installed extension, after JupyterLab's page was
   served once; then the same server with one extension left out at a time
   (``ServerApp.jpserver_extensions``) and with none (plain jupyter_server):
   what each extension costs;
b. a kernel: idle right after it starts, after ``import numpy, pandas``, and
   after each cell of the class day's menu (benchmarks/classday.py), the
   trace's cells as they are (each frees its frame) and as a student who keeps
   a tenth of each frame until the next cell (``--kept-fraction 0.1``); with
   and without glibc's
   ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` (which stop the
   allocator from keeping freed frames' pages).

Needs root (it makes one system user ``cdm<hex>`` and removes it)::

    PATH=$PWD/.venv/bin:$PATH python benchmarks/classday_memory.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import uuid

import psutil
import requests
import websocket

sys.path.insert(0, os.path.dirname(__file__))
from _common import Users  # noqa: E402
from classday import MENU, cell_code  # noqa: E402

from classroomhub.demo import free_ports  # noqa: E402

MiB = 2**20
#: glibc: hand freed blocks over 1 MiB back at once (a fixed threshold also
#: stops glibc from raising it after the first large free) and trim the heap
#: above 16 MiB free
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 * MiB), "MALLOC_TRIM_THRESHOLD_": str(16 * MiB)}


def rollup(pid):
    """{'rss','pss','private'} in bytes of *pid* (smaps_rollup, kB lines)."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return {
        "rss": fields.get("Rss", 0),
        "pss": fields.get("Pss", 0),
        "private": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def extensions():
    """Names of the server extensions enabled in the hub's environment."""
    out = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "jupyter"), "server", "extension", "list"],
        capture_output=True,
        text=True,
    )
    names = []
    for line in (out.stdout + out.stderr).splitlines():
        parts = line.split()
        if len(parts) >= 2 and "enabled" in parts[1] and not line.startswith(" " * 5):
            names.append(parts[0])
    return names


class Server:
    """One ``jupyter server`` as *user*, with some extensions left out."""

    def __init__(self, user, home, disabled=(), env=None, all_off=None):
        self.port = free_ports(1)[0]
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}/"
        config = {"ServerApp": {"jpserver_extensions": {name: False for name in (all_off or disabled)}}}
        self.config = os.path.join(home, f"config-{self.port}.json")
        with open(self.config, "w") as f:
            json.dump(config, f)
        os.chmod(self.config, 0o644)
        jupyter = os.path.join(os.path.dirname(sys.executable), "jupyter")
        self.proc = subprocess.Popen(
            [jupyter, "server", f"--config={self.config}", "--ip=127.0.0.1", f"--port={self.port}",
             f"--IdentityProvider.token={self.token}", "--no-browser", f"--ServerApp.root_dir={home}",
             "--KernelManager.transport=ipc"],
            cwd=home,
            user=user,
            env={"HOME": home, "PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin", **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {self.token}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.http.get(self.url + "api/status", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("jupyter server did not start")
            time.sleep(0.2)
        self.http.get(self.url + "lab", timeout=60)  # JupyterLab's page handlers, once
        self.ws = None

    def start_kernel(self):
        kernel = self.http.post(self.url + "api/kernels", json={"name": "python3"}, timeout=60).json()
        self.ws = websocket.create_connection(
            self.url.replace("http", "ws", 1) + f"api/kernels/{kernel['id']}/channels?session_id={uuid.uuid4().hex}",
            header=[f"Authorization: token {self.token}"],
            timeout=120,
        )
        self.execute("1")
        children = psutil.Process(self.proc.pid).children(recursive=True)
        return children[0].pid

    def execute(self, code):
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "username": "m", "session": "s", "msg_type": "execute_request", "version": "5.3"}
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}
        self.ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell"}))
        reply = idle = False
        while not (reply and idle):
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            reply = reply or kind == "execute_reply"
            idle = idle or (kind == "status" and msg["content"].get("execution_state") == "idle")

    def stop(self):
        if self.ws is not None:
            self.ws.close()
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            child.kill()
        self.proc.terminate()
        self.proc.wait(30)
        os.unlink(self.config)


def median_of(samples):
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


def show(label, m):
    print(f"  {label:58s} {m['rss'] / MiB:7.1f} {m['pss'] / MiB:7.1f} {m['private'] / MiB:8.1f}", flush=True)


def header(title):
    print(f"\n{title}\n  {'':58s} {'RSS':>7s} {'PSS':>7s} {'private':>8s}  (MiB, medians)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: the servers run as a system user")
    users = Users()
    atexit.register(users.remove_all)
    login = f"cdm{secrets.token_hex(3)}"
    entry = users.create(login)
    home = entry.pw_dir
    names = extensions()
    print(f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}; server extensions: {', '.join(names)}")

    header("a. an idle jupyter server (JupyterLab's page served once)")
    variants = [("every extension (as the hub starts it)", ())]
    variants += [(f"without {name}", (name,)) for name in names if name != "jupyterlab"]
    variants += [("plain jupyter_server (no extension)", tuple(names))]
    for label, disabled in variants:
        samples = []
        for _ in range(args.repeat):
            server = Server(login, home, disabled=disabled)
            time.sleep(1)
            samples.append(rollup(server.proc.pid))
            server.stop()
        show(label, median_of(samples))

    for env_label, env in (("glibc defaults", {}), ("MALLOC_MMAP_THRESHOLD_=1M, MALLOC_TRIM_THRESHOLD_=16M", MALLOC_ENV)):
        for keep in (False, True):
            header(f"b. a kernel, {env_label}; cells {'keep a tenth of the frame' if keep else 'as in the trace (frame freed)'}")
            stages = {}
            for _ in range(args.repeat):
                server = Server(login, home, env=env)
                kernel = server.start_kernel()
                stages.setdefault("idle, just started", []).append(rollup(kernel))
                server.execute("import numpy, pandas")
                stages.setdefault("after import numpy, pandas", []).append(rollup(kernel))
                for k in range(len(MENU)):
                    server.execute(cell_code(k, 0.1 if keep else 0.0))
                    if k in (2, len(MENU) - 1):
                        stages.setdefault(f"after menu cells 0-{k} ({sum(m for m, _ in MENU[: k + 1])} MB made)", []).append(
                            rollup(kernel)
                        )
                stages.setdefault("the server, with this kernel", []).append(rollup(server.proc.pid))
                server.stop()
            for label, samples in stages.items():
                show(label, median_of(samples))


if __name__ == "__main__":
    main()
