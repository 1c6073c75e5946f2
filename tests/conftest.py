"""Shared fixtures: JupyterHub's own (real hub + real configurable-http-proxy)
plus a hub whose authenticator is classroomhub's, on a roster file."""

import asyncio
import os
import shutil
import textwrap

import pytest
from jupyterhub import orm
from jupyterhub.tests.conftest import *  # noqa: F401,F403  (app, io_loop, ...)
from jupyterhub.tests.mocking import MockHub
from jupyterhub.tests.utils import public_url
from traitlets.config import Config

from classroomhub.authenticator import ClassroomPasswordAuthenticator

pytest.register_assert_rewrite("fixtures")  # imported here before pytest loads it as a plugin
from fixtures.service import stop_managed_services, use_database  # noqa: E402

# jupyterhub's per-test clean-up is a plugin (fixtures/jupyterhub_cleanup.py),
# one level up, so that fixtures/service.py can leave it out where the
# classroom service lives for the module
del cleanup_after  # noqa: F821  (from the * import)

# the shared set-up, asked for by name (see fixtures/__init__.py)
pytest_plugins = ["fixtures.jupyterhub_cleanup", "fixtures.selection", "fixtures.accounts", "fixtures.service", "fixtures.slurm", "postgres", "browser"]

PASSWORD = "classroom-test-password"

# A roster covering every tier and course role, with two courses so that
# cross-course leaks can be tested. `admin` is the login jupyterhub's test
# helpers use for their default API token.
ROSTER = """\
users:
  admin: {tier: root}
  rooty: {tier: root}
  opal: {tier: admin}
  pia: {tier: power}
  stu: {}
courses:
  data101:
    title: Data Analytics
    instructors: [ines]
    tas: [tara]
    students: [sam, sue]
  bio202:
    title: Bioinformatics
    instructors: [ivan]
    tas: [tom]
    students: [bea, sue]
"""


def pytest_configure(config):
    if shutil.which("configurable-http-proxy") is None:
        raise pytest.UsageError(
            "configurable-http-proxy is not on PATH: run the tests through ./dev test, "
            "which installs it into proxy/node_modules"
        )


@pytest.fixture(scope="module")
def roster_file(tmp_path_factory, request):
    """The module's roster (its ROSTER global, else the default one)."""
    path = tmp_path_factory.mktemp("roster") / "roster.yaml"
    path.write_text(textwrap.dedent(getattr(request.module, "ROSTER", ROSTER)))
    return path


@pytest.fixture(scope="module")
async def app(request, roster_file, tmp_path_factory, service_world, service_database):
    """jupyterhub's MockHub (real hub, real proxy, mock single-user servers)
    with ClassroomPasswordAuthenticator on the module's roster (and, for a
    module that configures the classroom service, its users, data folder and
    database: fixtures/service.py)."""
    cfg = Config()
    cfg.JupyterHub.authenticator_class = ClassroomPasswordAuthenticator
    cfg.Authenticator.allow_all = False
    cfg.ClassroomPasswordAuthenticator.roster_path = str(roster_file)
    cfg.ClassroomPasswordAuthenticator.user_password = PASSWORD
    cfg.ClassroomPasswordAuthenticator.roster_poll_interval = 0.2
    cfg.ClassroomPasswordAuthenticator.last_good_roster_file = str(roster_file.parent / "last-good-roster.json")
    # MockHub's spawner works in /tmp/{username} by default and leaves it there
    cfg.SimpleLocalProcessSpawner.home_dir_template = str(tmp_path_factory.mktemp("homes") / "{username}")
    extra = getattr(request.module, "HUB_CONFIG", None)
    if extra:
        extra(cfg)
    if service_database is not None:
        use_database(cfg, service_database)
    hub = MockHub.instance(config=cfg)
    await hub.initialize([])
    await hub.start()
    yield hub
    hub.authenticator.stop_roster_watch()
    await stop_managed_services(hub)
    hub.log.handlers = []
    MockHub.clear_instance()
    try:
        await hub.stop()
    except Exception as e:  # pragma: no cover - best effort, as jupyterhub's fixture
        print(f"Error stopping Hub: {e}")
    await hub_shutdown_done()


async def hub_shutdown_done():
    """Wait for the last step of a hub's stop, which cancels every other task
    of the event loop: otherwise it cancels the start of the next hub in the
    same loop (a module whose tests run on two service databases)."""
    await asyncio.sleep(0)  # the step is a callback the stop scheduled
    shutdown = [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "").endswith(".shutdown_cancel_tasks")]
    if shutdown:
        try:
            await asyncio.wait(shutdown)
        except asyncio.CancelledError:  # it cancels this task too
            pass


@pytest.fixture
async def synced(app):
    """The roster applied to a database that jupyterhub's per-test cleanup
    (which deletes users and groups) may have emptied."""
    return await app.authenticator.sync_roster()


def write_roster(path, text):
    """Replace the roster atomically, as an editor or config manager would."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(textwrap.dedent(text))
    os.replace(tmp, path)


def user_scopes(app, name):
    from jupyterhub.scopes import get_scopes_for

    return get_scopes_for(orm.User.find(app.db, name))


async def login(app, name, password=PASSWORD):
    """Log in through the real login form and proxy; return the session."""
    from jupyterhub.tests.utils import AsyncSession

    base = public_url(app)
    s = AsyncSession()
    r = await s.get(base + "hub/login")
    r.raise_for_status()
    r = await s.post(
        base + "hub/login",
        data={"username": name, "password": password, "_xsrf": s.cookies["_xsrf"]},
        allow_redirects=False,
    )
    return s, r
