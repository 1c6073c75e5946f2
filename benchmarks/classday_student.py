"""The class day's students (benchmarks/classday.py): one person in a
browser, logging in through the hub's form, opening JupyterLab through the
server's OAuth redirect, running cells over a kernel's websocket and saving
notebooks through the contents API."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone

import requests
import websocket


class Student:
    """One person in a browser: cookies, a tab on their server, one kernel."""

    def __init__(self, url, login, password, log):
        self.url, self.login, self.password, self.log = url, login, password, log
        self.http = requests.Session()
        self.ws = None
        self.session_id = uuid.uuid4().hex
        self.cells = []  # the notebook's cells as saved
        self.saved = None  # the notebook the server last acknowledged
        self.handed_in = None
        self.kernel_deaths = 0
        self.events = []  # (what, detail)

    def note(self, what, detail=""):
        self.events.append((what, detail))
        self.log(f"{self.login}: {what} {detail}")

    def login_form(self):
        r = self.http.get(self.url + "hub/login", timeout=60)
        r.raise_for_status()
        r = self.http.post(
            self.url + "hub/login",
            data={"username": self.login, "password": self.password, "_xsrf": self.http.cookies.get("_xsrf", path="/hub/")},
            allow_redirects=False,
            timeout=120,
        )
        if r.status_code != 302:
            raise RuntimeError(f"login: {r.status_code}")

    def spawn(self, timeout=300):
        """Seconds from /hub/spawn until the lab page opens (through OAuth)."""
        tic = time.perf_counter()
        self.http.get(self.url + "hub/spawn", timeout=timeout)
        self.wait_progress(timeout)
        lab = self.url + f"user/{self.login}/lab"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                r = self.http.get(lab, timeout=60)
                if r.status_code == 200 and r.url.split("?")[0] == lab:
                    return time.perf_counter() - tic
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"server not ready in {timeout} s")

    def wait_progress(self, timeout):
        """Follow the spawn's progress events until ready, as the spawn page does."""
        url = self.url + f"hub/api/users/{self.login}/server/progress"
        xsrf = self.http.cookies.get("_xsrf", path="/hub/") or ""
        with self.http.get(url, stream=True, timeout=timeout, headers={"X-XSRFToken": xsrf}) as r:
            if r.status_code != 200:
                return  # the lab page's own polling decides
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event.get("ready"):
                        return
                    if event.get("failed"):
                        raise RuntimeError(f"spawn failed: {event.get('message')}")

    def _xsrf(self):
        for cookie in self.http.cookies:
            if cookie.name == "_xsrf" and cookie.path.startswith(f"/user/{self.login}"):
                return cookie.value
        return ""

    def _api(self, method, path, **kw):
        r = self.http.request(
            method, self.url + f"user/{self.login}/api/{path}", headers={"X-XSRFToken": self._xsrf()}, timeout=120, **kw
        )
        r.raise_for_status()
        return r

    def start_kernel(self):
        kernel = self._api("POST", "kernels", json={"name": "python3"}).json()
        ws_url = self.url.replace("http", "ws", 1) + f"user/{self.login}/api/kernels/{kernel['id']}/channels"
        cookies = "; ".join(f"{c.name}={c.value}" for c in self.http.cookies if c.path.startswith(f"/user/{self.login}"))
        self.ws = websocket.create_connection(
            f"{ws_url}?session_id={self.session_id}&_xsrf={self._xsrf()}",
            cookie=cookies,
            header=[f"X-XSRFToken: {self._xsrf()}"],
            # the server answers once the kernel is up; a browser waits (and
            # retries), so a slow kernel start on a loaded machine is no failure
            timeout=300,
        )

    def execute(self, code, timeout):
        """(seconds, status, stdout) of one cell; status ok, error, killed or timeout."""
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "username": self.login,
            "session": self.session_id,
            "msg_type": "execute_request",
            "version": "5.3",
            "date": datetime.now(timezone.utc).isoformat(),
        }
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}
        message = {"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": "shell", "buffers": []}
        tic = time.perf_counter()
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        reply, idle, out, status = None, False, [], "ok"
        while not (reply and idle):
            left = deadline - time.monotonic()
            if left <= 0:
                return time.perf_counter() - tic, "timeout", "".join(out)
            self.ws.settimeout(left)
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            kind = msg.get("msg_type") or msg["header"]["msg_type"]
            state = msg.get("content", {}).get("execution_state")
            if kind == "status" and state in ("restarting", "autorestarting", "dead"):
                self.kernel_deaths += 1
                return time.perf_counter() - tic, "killed", "".join(out)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if kind == "execute_reply":
                reply = msg
                status = msg["content"].get("status", "error")
            elif kind == "status" and state == "idle":
                idle = True
            elif kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                out.append(f"{msg['content']['ename']}: {msg['content']['evalue']}\n")
        return time.perf_counter() - tic, status, "".join(out)

    def notebook(self):
        return {
            "cells": self.cells,
            "metadata": {"classday": {"student": self.login}, "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }

    def record(self, code, output):
        n = len(self.cells) + 1
        outputs = [{"output_type": "stream", "name": "stdout", "text": output}] if output else []
        self.cells.append({"cell_type": "code", "execution_count": n, "id": f"c{n}", "metadata": {}, "outputs": outputs, "source": code})

    def save(self, name):
        nb = self.notebook()
        self._api("PUT", f"contents/{name}", json={"type": "notebook", "format": "json", "content": nb})
        return json.loads(json.dumps(nb))

    def close(self):
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass


def comparable(nb):
    """A notebook's content as the comparison sees it (sources and outputs, joined)."""

    def text(v):
        return "".join(v) if isinstance(v, list) else v

    return (
        nb.get("metadata", {}).get("classday"),
        [(text(c["source"]), [text(o.get("text", "")) for o in c.get("outputs", [])]) for c in nb["cells"]],
    )

