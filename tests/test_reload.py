"""Hot reload: roster edits take effect on a running hub by the background
watcher alone (no login, no restart), and really revoke. How soon is the
watcher's poll interval (0.2 s here); the tests wait with a deadline that
holds on a loaded machine, not a measure of speed."""

import asyncio
import json
import shutil
import sys
import time

import pytest
from jupyterhub import orm
from jupyterhub.tests.utils import api_request, public_host, public_url

from conftest import ROSTER, login, user_scopes, write_roster

DEADLINE = 30.0  # seconds: a generous wait for the watcher, not a speed test


@pytest.fixture
async def roster(app, synced, roster_file):
    """Edit the roster in a test; the original is restored afterwards."""
    yield roster_file
    write_roster(roster_file, ROSTER)
    auth = app.authenticator
    await wait_for(lambda: auth.roster.digest == _digest(ROSTER) and auth.roster_error is None)


def _digest(text):
    import hashlib
    import textwrap

    return hashlib.sha256(textwrap.dedent(text).encode()).hexdigest()


async def wait_for(condition, timeout=DEADLINE):
    """Poll until *condition()* is true; fail after *timeout* seconds."""
    tic = time.monotonic()
    while not condition():
        if time.monotonic() - tic > timeout:
            raise AssertionError(f"not true after {timeout}s")
        await asyncio.sleep(0.05)


def groups_of(app, name):
    app.db.expire_all()
    return {g.name for g in orm.User.find(app.db, name).groups}


def edit(path, old, new):
    text = path.read_text()
    assert old in text
    write_roster(path, text.replace(old, new))


async def test_promote(app, roster):
    token = orm.User.find(app.db, "stu").new_api_token(scopes=["inherit"])
    headers = {"Authorization": f"token {token}"}
    assert (await api_request(app, "users", headers=headers)).status_code == 403
    edit(roster, "stu: {}", "stu: {tier: admin}")
    await wait_for(lambda: "tier-admin" in groups_of(app, "stu"))
    assert "admin-ui" in user_scopes(app, "stu")
    # the token the user already had now carries the new rights
    assert (await api_request(app, "users", headers=headers)).status_code == 200


async def test_demote_admin_and_root(app, roster):
    assert "admin-ui" in user_scopes(app, "opal")
    assert orm.User.find(app.db, "rooty").admin
    edit(roster, "opal: {tier: admin}", "opal: {tier: student}")
    edit(roster, "rooty: {tier: root}", "rooty: {tier: power}")
    await wait_for(lambda: "tier-power" in groups_of(app, "rooty") and "tier-student" in groups_of(app, "opal"))
    rooty = orm.User.find(app.db, "rooty")
    assert not rooty.admin
    assert "admin" not in {r.name for r in rooty.roles}
    assert "admin:users" not in user_scopes(app, "rooty")
    assert "admin-ui" not in user_scopes(app, "opal")
    assert "classroom-admin" not in {r.name for r in orm.User.find(app.db, "opal").roles}


async def test_course_change_moves_groups(app, roster):
    edit(roster, "students: [sam, sue]", "students: [sue, newbie]")
    await wait_for(lambda: orm.User.find(app.db, "newbie") is not None)
    assert "course-data101-students" in groups_of(app, "newbie")
    assert groups_of(app, "sam") == set()  # sam is no longer on the roster at all
    assert not orm.User.find(app.db, "sam").roles


async def test_remove_revokes_everything(app, roster):
    session, r = await login(app, "stu")
    assert r.status_code == 302
    home = await session.get(public_url(app) + "hub/home", allow_redirects=False)
    assert home.status_code == 200
    token = orm.User.find(app.db, "stu").new_api_token(scopes=["inherit"])
    started = await api_request(app, "users", "stu", "server", method="post")
    assert started.status_code in (201, 202)
    user = app.users["stu"]
    await wait_for(lambda: user.spawner.ready, timeout=30)

    edit(roster, "  stu: {}\n", "")
    await wait_for(lambda: not user.spawner.active and not orm.User.find(app.db, "stu").api_tokens)
    stu = orm.User.find(app.db, "stu")
    assert not stu.groups and not stu.roles and not stu.admin
    # the API token is gone
    r = await api_request(app, "user", headers={"Authorization": f"token {token}"})
    assert r.status_code == 403
    # the browser session is over
    home = await session.get(public_url(app) + "hub/home", allow_redirects=False)
    assert home.status_code == 302 and "login" in home.headers["location"]
    # and logging in again is refused, saying why
    _, r = await login(app, "stu")
    assert r.status_code == 403
    assert "not on this hub" in r.text


async def test_broken_roster_keeps_last_good(app, roster, caplog):
    good_digest = app.authenticator.roster.digest
    write_roster(roster, ROSTER.replace("  stu: {}\n", "  stu: {}\n  eve: {tier: god}\n"))
    await wait_for(lambda: app.authenticator.roster_error is not None)
    assert "unknown tier 'god'" in app.authenticator.roster_error
    assert f"{roster}:" in app.authenticator.roster_error
    assert app.authenticator.roster.digest == good_digest
    # the hub still admits the people of the last good roster
    _, r = await login(app, "stu")
    assert r.status_code == 302
    assert "keeping the last good roster" in caplog.text


async def test_roster_api(app, roster):
    r = await api_request(app, "classroom", "roster")  # as the root-tier 'admin'
    assert r.status_code == 200
    status = r.json()
    assert status["people"] == 12 and status["courses"] == ["bio202", "data101"]
    assert status["error"] is None
    # admin tier cannot see or apply the roster; it is root's
    token = orm.User.find(app.db, "opal").new_api_token(scopes=["inherit"])
    r = await api_request(app, "classroom", "roster", method="post", headers={"Authorization": f"token {token}"})
    assert r.status_code == 403
    write_roster(roster, "users: [\n")
    r = await api_request(app, "classroom", "roster", method="post")
    assert r.status_code == 422
    assert "invalid YAML" in r.json()["error"]


async def test_cli_sync_applies_now(app, roster):
    # stop the watcher so only the CLI can apply the change
    app.authenticator.stop_roster_watch()
    try:
        edit(roster, "pia: {tier: power}", "pia: {tier: admin}")
        token = orm.User.find(app.db, "admin").new_api_token(scopes=["inherit"])
        hub_url = public_host(app) + app.base_url.rstrip("/")
        cmd = shutil.which("classroomhub") or sys.executable
        args = ["roster", "sync", "--hub-url", hub_url, "--token", token]
        if cmd == sys.executable:
            args = ["-m", "classroomhub.cli", *args]
        proc = await asyncio.create_subprocess_exec(
            cmd, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert "1 changed" in out.decode()
        assert "tier-admin" in groups_of(app, "pia")
    finally:
        app.authenticator.start_roster_watch()


def test_status_is_json_serializable(app):
    json.dumps(app.authenticator.last_sync.to_dict())
