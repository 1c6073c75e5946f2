"""What the benchmarks share: generated notebooks, the system users a run
creates (and only those it removes), a run's folder and its clean-up on
SIGTERM, number formatting."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile

from classroomhub.spawner.users import ensure_system_user

COMMENT = "classroomhub benchmark user"

WORDS = (
    "the data frame column index value mean median variance sample model fit predict "
    "train test split plot figure axis label legend import numpy pandas matplotlib "
    "return def for in if else while print len range list dict tuple set string "
    "regression classification cluster feature vector matrix gradient loss error "
    "exercise question answer hint note solution week lecture homework students"
).split()


def words(rng, n):
    return " ".join(rng.choices(WORDS, k=n))


def make_cell(rng, number, figure_bytes=(2_000, 40_000)):
    kind = rng.random()
    if kind < 0.35:
        lines = [f"## {words(rng, 4).title()}\n"] + [words(rng, rng.randint(8, 25)) + "\n" for _ in range(rng.randint(2, 12))]
        return {"cell_type": "markdown", "id": f"c{number:04d}", "metadata": {}, "source": lines}
    source = [f"{words(rng, 1)}_{i} = {words(rng, 1)}({rng.random():.6f})\n" for i in range(rng.randint(2, 15))]
    cell = {"cell_type": "code", "execution_count": number, "id": f"c{number:04d}", "metadata": {}, "source": source}
    if kind < 0.85:
        text = [f"{rng.random():.8f} {words(rng, 6)}\n" for _ in range(rng.randint(1, 40))]
        cell["outputs"] = [{"name": "stdout", "output_type": "stream", "text": text}]
    else:  # a figure: base64 of incompressible bytes, as a PNG would be
        png = base64.b64encode(rng.randbytes(rng.randint(*figure_bytes))).decode()
        cell["outputs"] = [
            {
                "data": {"image/png": png, "text/plain": ["<Figure size 640x480 with 1 Axes>"]},
                "metadata": {},
                "output_type": "display_data",
            }
        ]
    return cell


def make_notebook(rng, target_bytes, figure_bytes=(2_000, 40_000)):
    """An nbformat-4 notebook of about *target_bytes* (the last cell overshoots)."""
    cells, size = [], 0
    while size < target_bytes:
        cell = make_cell(rng, len(cells) + 1, figure_bytes)
        size += len(json.dumps(cell, indent=1))
        cells.append(cell)
    nb = {
        "cells": cells,
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(nb, indent=1) + "\n"


class Users:
    """System users this run created (only those are ever removed)."""

    def __init__(self):
        self.made = []

    def create(self, login):
        entry, created = ensure_system_user(login, skeleton="", comment=COMMENT)
        if not created:
            raise RuntimeError(f"{login} already exists; not ours to use")
        self.made.append(login)
        return entry

    def remove_all(self):
        for login in reversed(self.made):
            # processes of a user this run created (a worker cut off by Ctrl-C)
            subprocess.run(["pkill", "-KILL", "-u", login], check=False)
            result = subprocess.run(["userdel", "--remove", login], capture_output=True, text=True)
            if result.returncode != 0 and "does not exist" not in result.stderr:
                print(f"   cleanup: userdel {login}: {result.stderr.strip()}", file=sys.stderr)
        self.made.clear()


def stop_hub(proc, timeout):
    """Stop a ``jupyterhub`` process as Ctrl-C does (it stops its proxy and
    services), killing it if it is not gone within *timeout* seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def interrupt_on_sigterm():
    """SIGTERM (a CI timeout, ``kill``) stops the run as Ctrl-C does, so
    that its ``finally`` blocks still remove what it made."""

    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)


def shared_folder(tag):
    """The run's new folder in /tmp, 0711: reachable by workers running as
    students (and by students themselves), unlike a 0700 one."""
    root = tempfile.mkdtemp(prefix=f"classroomhub-{tag}-")
    os.chmod(root, 0o711)
    return root


def ms(seconds):
    return f"{seconds * 1e3:9.1f}"


def secs(seconds):
    return f"{seconds:8.2f}"
