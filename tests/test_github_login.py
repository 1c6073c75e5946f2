"""GitHub login, end to end: browser-style OAuth flows through the real hub and
the real configurable-http-proxy, against the fake GitHub of fake_github.py.

Each flow goes hub/home -> hub/login -> hub/oauth_login -> GitHub's authorize
page -> hub/oauth_callback with one cookie-keeping HTTP session, as a browser
would, and then checks what the hub did: who is logged in, and the groups,
roles and admin flag in the hub's database.
"""

import asyncio
import hashlib
import html
import json
import os
import re
import stat
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from jupyterhub import orm
from jupyterhub.tests.mocking import MockHub
from jupyterhub.tests.utils import AsyncSession, public_url
from jupyterhub.utils import random_port
from traitlets.config import Config

from classroomhub.authenticator import ClassroomGitHubAuthenticator
from classroomhub.identity import IdentityStore

from conftest import write_roster
from fake_github import FakeGitHub

ROSTER = """\
users:
  rooty: {tier: root}
  opal: {tier: admin}
  sam: {}
  mallory: {}
  rena: {}
  pinned: {github_id: 4242}
blocked: [eve]
courses:
  data101:
    title: Data Analytics
    instructors: [rooty]
    students: [sam, tess]
"""

TEAM_TIERS = {"MyOrg:staff": "admin", "partnerorg": "power"}
NOT_ON_ROSTER = "is not on this hub's roster"


@pytest.fixture(scope="module")
def fake_github():
    """The module's fake GitHub; `app` starts and stops it (see there)."""
    return FakeGitHub()


@pytest.fixture(scope="module")
async def app(roster_file, fake_github, tmp_path_factory):
    """MockHub (real hub + real proxy) logging in through the fake GitHub.

    The fake is started and stopped here rather than in its own async
    fixture: stopping JupyterHub cancels every task of the event loop a
    moment later, which would cancel the teardown of a fixture torn down
    after this one. So the fake goes first, the hub last.
    """
    await fake_github.start()
    hub = None
    try:
        state = tmp_path_factory.mktemp("hub-state")
        bind_url = f"http://127.0.0.1:{random_port()}/@/space%20word/"
        callback_url = bind_url + "hub/oauth_callback"
        fake_github.register_app(fake_github.client_id, fake_github.client_secret, callback_url)

        cfg = Config()
        cfg.JupyterHub.bind_url = bind_url
        cfg.JupyterHub.authenticator_class = ClassroomGitHubAuthenticator
        cfg.Authenticator.allow_all = False
        # another case than GitHub's and the roster's, on purpose
        cfg.Authenticator.blocked_users = {"Mallory"}
        auth = cfg.ClassroomGitHubAuthenticator
        auth.roster_path = str(roster_file)
        auth.roster_poll_interval = 0.2
        auth.identity_file = str(state / "identities.json")
        # not the default (the working folder, /tmp here), where another run's copy may be
        auth.last_good_roster_file = str(state / "last-good-roster.json")
        auth.github_url = fake_github.url
        auth.client_id = fake_github.client_id
        auth.client_secret = fake_github.client_secret
        auth.oauth_callback_url = callback_url
        auth.team_tiers = TEAM_TIERS

        hub = MockHub.instance(config=cfg)
        await hub.initialize([])
        assert public_url(hub) + "hub/oauth_callback" == callback_url
        await hub.start()
        yield hub
    finally:
        await fake_github.stop()
        if hub is not None:
            if getattr(hub, "authenticator", None) is not None:
                hub.authenticator.stop_roster_watch()
            hub.log.handlers = []
            MockHub.clear_instance()
            try:
                await hub.stop()
            except Exception as e:  # best effort, as jupyterhub's own fixture
                print(f"Error stopping Hub: {e}")


@pytest.fixture
def github(app, fake_github):
    """The fake GitHub with no accounts, and a hub that has pinned nobody."""
    fake_github.reset()
    yield fake_github
    auth = app.authenticator
    if os.path.exists(auth.identity_file):
        os.unlink(auth.identity_file)
    auth.identities = IdentityStore(auth.identity_file)


class Login:
    """Outcome of one browser login: the session and the callback's response."""

    def __init__(self, session, response):
        self.session = session
        self.response = response
        self.status = response.status_code
        self.text = html.unescape(response.text)


async def github_login(app, github, login):
    """Sign in at GitHub as *login*, then go through the hub's OAuth flow."""
    github.login_as(login)
    base = public_url(app)
    s = AsyncSession()
    r = await s.get(base + "hub/home", allow_redirects=False)
    assert r.status_code == 302, r.text
    r = await s.get(_absolute(base, r.headers["Location"]))
    assert r.status_code == 200
    # the login page's "Sign in with GitHub" button
    button = re.search(r"""href=(["'])([^"']*/oauth_login[^"']*)\1>Sign in with GitHub<""", r.text)
    assert button, r.text
    r = await s.get(_absolute(base, html.unescape(button[2])), allow_redirects=False)
    assert r.status_code == 302, r.text
    authorize = r.headers["Location"]
    assert authorize.startswith(github.url + "/login/oauth/authorize?")
    r = await s.get(authorize, allow_redirects=False)
    assert r.status_code == 302, r.text
    callback = r.headers["Location"]
    assert callback.startswith(app.authenticator.oauth_callback_url + "?")
    r = await s.get(callback, allow_redirects=False)
    return Login(s, r)


def _absolute(base, location):
    if location.startswith("http"):
        return location
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}{location}"


async def logged_in_as(app, login):
    """The hub user the session is logged in as, or None."""
    r = await login.session.get(public_url(app) + "hub/api/user", allow_redirects=False)
    if r.status_code == 200:
        return r.json()["name"]
    assert r.status_code in (302, 403), r.text
    return None


async def assert_logged_in(app, login, name):
    assert login.status == 302, login.text
    # back where the browser started, logged in
    assert urlsplit(login.response.headers["Location"]).path.endswith("/hub/home")
    assert await logged_in_as(app, login) == name
    r = await login.session.get(public_url(app) + "hub/home", allow_redirects=False)
    assert r.status_code == 200


async def assert_refused(app, login, message):
    assert login.status == 403, login.text
    assert message in login.text
    assert await logged_in_as(app, login) is None


def hub_state(app, name):
    """(admin, groups, role names) of hub user *name* in the database."""
    user = orm.User.find(app.db, name)
    assert user is not None, f"no hub user {name}"
    app.db.refresh(user)
    return user.admin, sorted(g.name for g in user.groups), sorted(r.name for r in user.roles)


def pins(app):
    with open(app.authenticator.identity_file) as f:
        return {login: entry.get("github_id") for login, entry in json.load(f)["pins"].items()}


async def change_roster(app, path, text):
    """Write a new roster and wait until the hub has loaded and applied it."""
    before = app.authenticator.last_sync
    write_roster(path, text)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for _ in range(200):
        auth = app.authenticator
        if auth.roster.digest == digest and auth.last_sync is not before:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the hub did not load {path}: {app.authenticator.roster_error}")


@pytest.fixture
async def restore_roster(app, roster_file):
    yield
    if app.authenticator.roster.digest != hashlib.sha256(ROSTER.encode()).hexdigest():
        await change_roster(app, roster_file, ROSTER)


def hub_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


# -- the fake itself ------------------------------------------------------


def test_fake_github_protocol():
    """The fake answers like GitHub where the hub cannot tell us it did not."""
    with FakeGitHub() as gh:  # its own thread: this test's requests are blocking
        gh.register_app("cid", "secret", "http://127.0.0.1:1/cb")
        gh.add_user("Octo", 7, teams=[("MyOrg", f"team {i}") for i in range(5)])
        gh.login_as("octo")

        def authorize(**params):
            return requests.get(
                gh.url + "/login/oauth/authorize",
                params={"client_id": "cid", "state": "xyz", **params},
                allow_redirects=False,
            )

        assert authorize(redirect_uri="http://127.0.0.1:2/cb").status_code == 400
        r = authorize(redirect_uri="http://127.0.0.1:1/cb/sub", scope="read:org user:email")
        assert r.status_code == 302
        query = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}
        assert query["state"] == "xyz"

        def exchange(code, secret="secret"):
            return requests.post(
                gh.url + "/login/oauth/access_token",
                data={"client_id": "cid", "client_secret": secret, "code": code},
                headers={"Accept": "application/json"},
            ).json()

        assert exchange(query["code"], "wrong")["error"] == "incorrect_client_credentials"
        token = exchange(query["code"])
        assert token["token_type"] == "bearer" and token["scope"] == "read:org,user:email"
        assert exchange(query["code"])["error"] == "bad_verification_code"  # single use

        def api(path, token=token["access_token"]):
            return requests.get(gh.url + "/api/v3" + path, headers={"Authorization": f"token {token}"})

        assert api("/user").json()["login"] == "Octo"
        assert [e["primary"] for e in api("/user/emails").json()] == [True]
        bad = api("/user", token="nope")
        assert bad.status_code == 401 and bad.json()["message"] == "Bad credentials"
        gh.max_per_page = 2
        page = api("/user/teams?per_page=100")
        assert [t["slug"] for t in page.json()] == ["team-0", "team-1"]
        assert 'rel="next"' in page.headers["Link"]
        last = api("/user/teams?per_page=2&page=3")
        assert [t["name"] for t in last.json()] == ["team 4"] and "Link" not in last.headers
        assert api("/orgs/myorg/members/octo").status_code == 204
        assert api("/orgs/otherorg/members/octo").status_code == 404
        assert api("/orgs/MyOrg/teams/team-3/members/OCTO").status_code == 204
        assert api("/orgs/MyOrg/teams/team-9/members/octo").status_code == 404


# -- who gets in ----------------------------------------------------------


async def test_roster_user_logs_in(app, github):
    github.add_user("sam", 101, name="Sam Student")
    login = await github_login(app, github, "sam")
    await assert_logged_in(app, login, "sam")
    assert hub_state(app, "sam") == (False, ["course-data101-students", "tier-student"], ["user"])


async def test_non_roster_user_refused(app, github):
    github.add_user("stranger", 102)
    login = await github_login(app, github, "stranger")
    await assert_refused(app, login, f"stranger {NOT_ON_ROSTER}")
    assert orm.User.find(app.db, "stranger") is None
    assert not os.path.exists(app.authenticator.identity_file)  # nobody pinned


async def test_mixed_case_login(app, github):
    github.add_user("SaM", 101)
    login = await github_login(app, github, "SaM")
    await assert_logged_in(app, login, "sam")
    assert orm.User.find(app.db, "SaM") is None
    assert hub_state(app, "sam")[1] == ["course-data101-students", "tier-student"]
    assert pins(app) == {"sam": 101}


@pytest.mark.parametrize(
    "github_login_name, github_id, why",
    [
        ("EVE", 103, "listed under blocked: in the roster"),
        ("mALLory", 104, "in Authenticator.blocked_users as 'Mallory'"),
    ],
)
async def test_blocked_user_refused(app, github, caplog, github_login_name, github_id, why):
    # a team that maps to a tier does not get a blocked person in either
    github.add_user(github_login_name, github_id, teams=[("MyOrg", "staff")])
    login = await github_login(app, github, github_login_name)
    await assert_refused(app, login, app.authenticator.custom_403_message)
    name = github_login_name.lower()
    assert NOT_ON_ROSTER not in login.text
    assert f"User {name!r} blocked. Stop authentication" in hub_warnings(caplog), why
    assert orm.User.find(app.db, name) is None


# -- identities -----------------------------------------------------------


async def test_first_login_pins_github_id(app, github, caplog):
    github.add_user("rena", 201)
    login = await github_login(app, github, "rena")
    await assert_logged_in(app, login, "rena")
    path = app.authenticator.identity_file
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert pins(app) == {"rena": 201}

    # Rena renames her GitHub account; someone else registers "rena"
    github.rename("rena", "rena-phd")
    github.add_user("rena", 999)
    login = await github_login(app, github, "rena")
    await assert_refused(app, login, "The GitHub account rena is not the one this hub knows as rena")
    assert (
        "Refusing GitHub account rena (id 999): hub account rena is pinned to GitHub id 201"
        in hub_warnings(caplog)
    )
    assert pins(app) == {"rena": 201}


async def test_roster_github_id_pins(app, github):
    github.add_user("pinned", 5000)  # not the account the roster names
    github.add_user("pinned-elsewhere", 4242)
    login = await github_login(app, github, "pinned")
    await assert_refused(app, login, "The GitHub account pinned is not the one this hub knows as pinned")
    assert not os.path.exists(app.authenticator.identity_file)  # the impostor is not pinned

    login = await github_login(app, github, "pinned-elsewhere")
    await assert_logged_in(app, login, "pinned")
    assert orm.User.find(app.db, "pinned-elsewhere") is None
    assert pins(app) == {"pinned": 4242}


async def test_renamed_account_keeps_hub_account(app, github, caplog, roster_file, restore_roster):
    github.add_user("rena", 201)
    await assert_logged_in(app, await github_login(app, github, "rena"), "rena")
    github.rename("rena", "Rena-PhD")

    login = await github_login(app, github, "Rena-PhD")
    await assert_logged_in(app, login, "rena")
    assert orm.User.find(app.db, "rena-phd") is None
    assert pins(app) == {"rena": 201}
    assert any("is pinned to hub account rena" in m for m in hub_warnings(caplog))

    # only as long as the roster lists the original account
    await change_roster(app, roster_file, ROSTER.replace("  rena: {}\n", ""))
    login = await github_login(app, github, "Rena-PhD")
    await assert_refused(app, login, f"rena-phd {NOT_ON_ROSTER}")


# -- GitHub teams and organizations ---------------------------------------


async def test_team_tiers_request_read_org(app, github):
    github.add_user("tia", 301, teams=[("MyOrg", "staff")])
    login = await github_login(app, github, "tia")
    await assert_logged_in(app, login, "tia")
    assert "read:org" in github.authorizations[-1]["scope"].split()
    assert github.requested("/api/v3/user/teams")
    # not on the roster: admitted with the team's tier only
    assert hub_state(app, "tia") == (False, ["tier-admin"], ["classroom-admin", "user"])

    # membership is checked again at each login
    github.find("tia").teams.clear()
    login = await github_login(app, github, "tia")
    await assert_refused(app, login, f"tia {NOT_ON_ROSTER}")


async def test_org_tier_admits_org_member(app, github):
    github.add_user("olly", 302, orgs=["PartnerOrg"])
    login = await github_login(app, github, "olly")
    await assert_logged_in(app, login, "olly")
    assert github.requested("/api/v3/orgs/partnerorg/members/olly")
    assert hub_state(app, "olly") == (False, ["tier-power"], ["user"])


async def test_team_tier_found_on_a_later_page(app, github):
    # tess is a student of data101 through the course list only
    teams = [("otherorg", f"team {i}") for i in range(4)] + [("myorg", "Staff")]
    github.add_user("tess", 303, teams=teams)
    github.max_per_page = 2
    login = await github_login(app, github, "tess")
    await assert_logged_in(app, login, "tess")
    assert len(github.requested("/api/v3/user/teams")) == 3
    assert hub_state(app, "tess") == (
        False,
        ["course-data101-students", "tier-admin"],
        ["classroom-admin", "user"],
    )


async def test_roster_tier_kept_when_higher(app, github):
    github.add_user("opal", 304, orgs=["partnerorg"])  # partnerorg maps to power
    await assert_logged_in(app, await github_login(app, github, "opal"), "opal")
    assert hub_state(app, "opal") == (False, ["tier-admin"], ["classroom-admin", "user"])


async def test_unmapped_team_member_refused(app, github):
    github.add_user("nomo", 305, teams=[("myorg", "alumni")], orgs=["someorg"])
    login = await github_login(app, github, "nomo")
    await assert_refused(app, login, f"nomo {NOT_ON_ROSTER}")
    assert orm.User.find(app.db, "nomo") is None


# -- roster changes -------------------------------------------------------


async def test_demotion_on_relogin(app, github, roster_file, restore_roster):
    github.add_user("rooty", 401)
    await assert_logged_in(app, await github_login(app, github, "rooty"), "rooty")
    assert hub_state(app, "rooty") == (
        True,
        ["course-data101-instructors", "tier-root"],
        ["admin", "course-data101-instructor", "user"],
    )

    demoted = ROSTER.replace("rooty: {tier: root}", "rooty: {tier: power}").replace(
        "instructors: [rooty]", "instructors: [opal]"
    )
    await change_roster(app, roster_file, demoted)
    await assert_logged_in(app, await github_login(app, github, "rooty"), "rooty")
    assert hub_state(app, "rooty") == (False, ["tier-power"], ["user"])

    await change_roster(app, roster_file, demoted.replace("  rooty: {tier: power}\n", ""))
    login = await github_login(app, github, "rooty")
    await assert_refused(app, login, f"rooty {NOT_ON_ROSTER}")
    assert hub_state(app, "rooty") == (False, [], [])
