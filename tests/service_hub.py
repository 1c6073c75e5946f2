"""Shared by the classroom service's test modules: the managed service next
to MockHub, and requests to it through the proxy.

A module sets TAG'd logins (``PEOPLE``) and a data folder (``DATA_DIR``) and
calls :func:`hub_config` from its ``HUB_CONFIG``; the fixtures (``ready``,
the users, the data folder, the database, the per-test clean-up left out)
are fixtures/service.py's.
"""

import asyncio
import os
import pwd
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import requests
import sqlalchemy
from jupyterhub.tests.utils import public_url

from classroomhub.service.hubconfig import add_classroom_service
from fixtures.accounts import system_users, write_tree  # noqa: F401  (modules import them from here too)


def data_dir(tag):
    """Where the service keeps its data (made by :func:`service_world`); not
    below pytest's 0700 tmp_path: workers running as students must reach it."""
    return os.path.join(tempfile.gettempdir(), f"classroomhub-{tag}-service")


def hub_config(c, data_dir, port, *args):
    """The service as the example config adds it, with a short hub cache."""
    add_classroom_service(c, data_dir=data_dir, port=port, args=["--ClassroomService.hub_cache_seconds=0.2", *args])


@contextmanager
def service_world(logins, folder):
    """The users and the service's data folder, for a module's lifetime."""
    # made again when a module's tests run again on another database
    os.makedirs(folder, exist_ok=True)
    os.chmod(folder, 0o711)
    try:
        with system_users(logins):
            yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def service_rows(folder, sql, **params):
    """What *sql* reads from the service's own database (SQLite in its data *folder*)."""
    engine = sqlalchemy.create_engine(f"sqlite:///{folder}/db/classroom.sqlite")
    try:
        with engine.connect() as db:
            return db.execute(sqlalchemy.text(sql), params).all()
    finally:
        engine.dispose()


def soon(seconds):
    """The time *seconds* from now (a past one if negative), as a due date."""
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


def service_url(app, path=""):
    return public_url(app) + "services/classroom/" + path


async def call(app, login, method, path, **kwargs):
    """An API request through the proxy, with *login*'s own hub token (None: no token)."""
    token = app.users[login].new_api_token(note="test") if login else None
    headers = {"Authorization": f"token {token}"} if token else {}
    url = service_url(app, "api/" + path)
    return await asyncio.to_thread(requests.request, method, url, headers=headers, timeout=60, **kwargs)


async def release(app, who, material_name, **body):
    """A release of *material_name* in course data101, as *who*, through the API."""
    return await call(app, who, "POST", f"courses/data101/materials/{material_name}/releases", json=body)


def home(login):
    return pwd.getpwnam(login).pw_dir


def material(owner, files):
    """A new folder in *owner*'s home with *files*, theirs."""
    return write_tree(owner, os.path.join(home(owner), "m-" + secrets.token_hex(3)), files)


def read(path):
    with open(path) as f:
        return f.read()
