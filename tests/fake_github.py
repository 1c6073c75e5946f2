"""A fake GitHub (OAuth web flow + the REST API calls oauthenticator makes).

It speaks over real HTTP on 127.0.0.1 so the hub under test uses its normal
code paths: point ``GitHubOAuthenticator.github_url`` at :attr:`FakeGitHub.url`
and the API is found at ``<url>/api/v3``, as for GitHub Enterprise Server.

Tests register accounts and pick who "approves" the next authorization::

    gh = FakeGitHub()
    await gh.start()                      # or gh.start_thread() for sync code
    gh.register_app("id", "secret", callback_url)
    gh.add_user("Sam", 101, teams=[("myorg", "staff")], orgs=["myorg"])
    gh.login_as("sam")                    # logins are case-insensitive
    ...
    await gh.stop()

Behaviour follows GitHub's documented responses: single-use codes bound to
the client and redirect URI, errors from the token endpoint as a 200 JSON
body with ``error``/``error_description``, granted scopes comma-separated,
``401 {"message": "Bad credentials"}`` for unknown tokens, ``Link`` headers
for pagination, 204/404 for membership checks.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from tornado import httpserver, netutil, web
from tornado.httputil import url_concat

DOCS = "https://docs.github.com/rest"
# scopes that let a token see private org and team membership
ORG_READ_SCOPES = {"read:org", "write:org", "admin:org", "repo", "user"}


@dataclass
class Account:
    login: str
    id: int
    name: str = ""
    email: str | None = None  # the public email; None if private
    emails: list = field(default_factory=list)
    orgs: set = field(default_factory=set)  # lower-case org logins
    teams: list = field(default_factory=list)  # [(org, team name)]

    def profile(self):
        return {
            "login": self.login,
            "id": self.id,
            "node_id": base64.b64encode(f"04:User{self.id}".encode()).decode(),
            "type": "User",
            "name": self.name or None,
            "email": self.email,
        }


def slugify(team):
    return "-".join(team.lower().split())


class FakeGitHub:
    def __init__(self, client_id="classroomhub-test-client", client_secret=None):
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_hex(20)
        self.clients = {}  # client_id -> (secret, callback URL or None)
        self.accounts = {}  # id -> Account
        self.codes = {}  # code -> (account id, client_id, redirect_uri, scopes)
        self.tokens = {}  # token -> (account id, scopes)
        self.approver = None  # id of the account that approves the next authorization
        self.max_per_page = 100
        self.requests = []  # (method, path, query) of every request, for assertions
        self.authorizations = []  # query arguments of each /login/oauth/authorize
        self.url = None
        self._server = None
        self._thread = None
        self.register_app(self.client_id, self.client_secret)

    # -- test API -----------------------------------------------------------

    def register_app(self, client_id, client_secret, callback_url=None):
        """Register an OAuth app; *callback_url* restricts redirect URIs like GitHub's
        "Authorization callback URL" (same origin, same path or below it)."""
        self.clients[client_id] = (client_secret, callback_url)

    def add_user(self, login, id, *, name="", email=None, teams=(), orgs=()):
        """Create an account. *login* must be free (case-insensitively), *id* unused."""
        if self.find(login):
            raise ValueError(f"login {login!r} is taken")
        if id in self.accounts:
            raise ValueError(f"account id {id} exists ({self.accounts[id].login})")
        orgs = {o.lower() for o in orgs} | {org.lower() for org, _ in teams}
        emails = [{"email": email or f"{login.lower()}@users.example", "primary": True,
                   "verified": True, "visibility": "public" if email else None}]
        account = Account(login, id, name, email, emails, orgs, list(teams))
        self.accounts[id] = account
        return account

    def find(self, login):
        login = login.lower()
        return next((a for a in self.accounts.values() if a.login.lower() == login), None)

    def rename(self, old, new):
        """Rename an account: same id, new login; the old login becomes free."""
        account = self.find(old)
        if account is None:
            raise KeyError(old)
        if self.find(new) not in (None, account):
            raise ValueError(f"login {new!r} is taken")
        account.login = new
        return account

    def login_as(self, login):
        """The account signed in at GitHub, which approves the next authorization."""
        if login is None:
            self.approver = None
            return
        account = self.find(login)
        if account is None:
            raise KeyError(f"no fake GitHub account {login!r}")
        self.approver = account.id

    def reset(self):
        """Forget accounts, codes, tokens and recorded requests (keep the apps)."""
        self.accounts.clear()
        self.codes.clear()
        self.tokens.clear()
        self.requests.clear()
        self.authorizations.clear()
        self.approver = None
        self.max_per_page = 100

    def requested(self, path):
        """Recorded requests to *path* (a path below the server root)."""
        return [r for r in self.requests if r[1] == path]

    # -- running ------------------------------------------------------------

    def make_app(self):
        return web.Application(
            [
                (r"/login/oauth/authorize", AuthorizeHandler),
                (r"/login/oauth/access_token", AccessTokenHandler),
                (r"/api/v3/user", UserHandler),
                (r"/api/v3/user/emails", EmailsHandler),
                (r"/api/v3/user/teams", TeamsHandler),
                (r"/api/v3/orgs/([^/]+)/members/([^/]+)", OrgMemberHandler),
                (r"/api/v3/orgs/([^/]+)/teams/([^/]+)/members/([^/]+)", TeamMemberHandler),
                (r"/api/v3/.*", NotFoundHandler),
            ],
            github=self,
            default_handler_class=NotFoundHandler,
        )

    async def start(self):
        """Listen on a free port of 127.0.0.1, served by the running event loop."""
        sockets = netutil.bind_sockets(0, "127.0.0.1")
        self._server = httpserver.HTTPServer(self.make_app())
        self._server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        return self

    async def stop(self):
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._server = None

    def start_thread(self):
        """Serve from a background thread with its own event loop, for tests whose
        own loop is blocked (synchronous HTTP clients, subprocess hubs)."""
        ready = threading.Event()
        self._stop_event = None

        async def serve():
            await self.start()
            self._loop = asyncio.get_running_loop()
            self._stop_event = asyncio.Event()
            ready.set()
            await self._stop_event.wait()
            await self.stop()

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake GitHub did not start")
        return self

    def stop_thread(self):
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join(10)
            self._thread = None

    async def __aenter__(self):
        return await self.start()

    async def __aexit__(self, *exc):
        await self.stop()

    def __enter__(self):
        return self.start_thread()

    def __exit__(self, *exc):
        self.stop_thread()


class FakeHandler(web.RequestHandler):
    @property
    def github(self) -> FakeGitHub:
        return self.settings["github"]

    def prepare(self):
        self.github.requests.append((self.request.method, self.request.path, self.request.query))

    def check_xsrf_cookie(self):
        pass

    def send_json(self, model, status=200):
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(model))

    def fail(self, status, message):
        self.send_json({"message": message, "documentation_url": DOCS, "status": str(status)}, status)

    def write_error(self, status_code, **kwargs):
        self.fail(status_code, self._reason)


class NotFoundHandler(FakeHandler):
    def get(self, *args):
        self.fail(404, "Not Found")


class AuthorizeHandler(FakeHandler):
    """The page where the signed-in account approves the app: approve at once."""

    def get(self):
        args = {k: self.get_argument(k) for k in self.request.arguments}
        self.github.authorizations.append(args)
        client = self.github.clients.get(args.get("client_id"))
        if client is None:
            raise web.HTTPError(404, reason="unknown client_id")
        callback = client[1]
        redirect_uri = args.get("redirect_uri") or callback
        if not redirect_uri or not _uri_allowed(redirect_uri, callback):
            # GitHub shows an error page here rather than redirecting anywhere
            raise web.HTTPError(400, reason="The redirect_uri is not associated with this application.")
        if self.github.approver not in self.github.accounts:
            raise web.HTTPError(401, reason="no fake GitHub account is signed in (use login_as)")
        code = secrets.token_hex(10)
        scopes = _normalize_scopes(args.get("scope", "").replace(",", " ").split())
        self.github.codes[code] = (self.github.approver, args["client_id"], redirect_uri, scopes)
        params = {"code": code}
        if "state" in args:
            params["state"] = args["state"]
        self.redirect(url_concat(redirect_uri, params))


class AccessTokenHandler(FakeHandler):
    def post(self):
        client_id = self.get_body_argument("client_id", None)
        client_secret = self.get_body_argument("client_secret", None)
        basic = self.request.headers.get("Authorization", "")
        if basic.lower().startswith("basic "):
            client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
        client = self.github.clients.get(client_id)
        if client is None or not secrets.compare_digest(client[0], client_secret or ""):
            return self.token_error("incorrect_client_credentials",
                                    "The client_id and/or client_secret passed are incorrect.")
        # codes are single-use: popped even if the rest of the request is wrong
        grant = self.github.codes.pop(self.get_body_argument("code", ""), None)
        if grant is None or grant[1] != client_id:
            return self.token_error("bad_verification_code", "The code passed is incorrect or expired.")
        account_id, _, redirect_uri, scopes = grant
        sent_uri = self.get_body_argument("redirect_uri", None)
        if sent_uri is not None and sent_uri != redirect_uri:
            return self.token_error("redirect_uri_mismatch",
                                    "The redirect_uri MUST match the registered callback URL for this application.")
        token = "gho_" + secrets.token_hex(18)
        self.github.tokens[token] = (account_id, scopes)
        self.token_reply({"access_token": token, "token_type": "bearer", "scope": ",".join(scopes)})

    def token_error(self, error, description):
        # GitHub answers token errors with status 200
        self.token_reply({"error": error, "error_description": description,
                          "error_uri": "https://docs.github.com/apps/oauth-apps"})

    def token_reply(self, model):
        if "json" in self.request.headers.get("Accept", ""):
            self.send_json(model)
        else:
            self.set_header("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")
            self.finish(urlencode(model))


class APIHandler(FakeHandler):
    """Authenticated REST API: ``Authorization: Bearer|token <access token>``."""

    def prepare(self):
        super().prepare()
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        if not token:
            return self.fail(401, "Requires authentication")
        grant = self.github.tokens.get(token.strip()) if scheme.lower() in ("bearer", "token") else None
        if grant is None or grant[0] not in self.github.accounts:
            return self.fail(401, "Bad credentials")
        self.account = self.github.accounts[grant[0]]
        self.scopes = set(grant[1])
        self.set_header("X-OAuth-Scopes", ", ".join(grant[1]))

    def can_read_orgs(self):
        return bool(self.scopes & ORG_READ_SCOPES)


class UserHandler(APIHandler):
    def get(self):
        self.send_json(self.account.profile())


class EmailsHandler(APIHandler):
    def get(self):
        if not self.scopes & {"user", "user:email"}:
            return self.fail(404, "Not Found")
        self.send_json(self.account.emails)


class TeamsHandler(APIHandler):
    def get(self):
        if not self.can_read_orgs():
            return self.fail(403, "Resource not accessible by integration")
        teams = [
            {"id": 1000 + i, "slug": slugify(team), "name": team,
             "organization": {"login": org, "id": 9000 + i}}
            for i, (org, team) in enumerate(self.account.teams)
        ]
        per_page = min(int(self.get_argument("per_page", "30")), self.github.max_per_page)
        page = int(self.get_argument("page", "1"))
        last = max(1, -(-len(teams) // per_page))
        if page < last:
            base = f"{self.request.protocol}://{self.request.host}{self.request.path}"
            links = [(page + 1, "next"), (last, "last")]
            self.set_header("Link", ", ".join(
                f'<{url_concat(base, {"per_page": per_page, "page": p})}>; rel="{rel}"' for p, rel in links
            ))
        self.send_json(teams[(page - 1) * per_page : page * per_page])


class OrgMemberHandler(APIHandler):
    def get(self, org, login):
        member = self.github.find(login)
        if self.can_read_orgs() and member and org.lower() in member.orgs:
            self.set_status(204)
            return self.finish()
        self.fail(404, "Not Found")


class TeamMemberHandler(APIHandler):
    def get(self, org, team, login):
        member = self.github.find(login)
        teams = {(o.lower(), slugify(t)) for o, t in member.teams} if member else set()
        if self.can_read_orgs() and (org.lower(), team.lower()) in teams:
            self.set_status(204)
            return self.finish()
        self.fail(404, "Not Found")


def _normalize_scopes(scopes):
    """Granted scopes as GitHub reports them: deduplicated, in request order."""
    return list(dict.fromkeys(s for s in scopes if s))


def _uri_allowed(uri, callback):
    """GitHub's rule: same scheme, host and port as the callback URL, and a path
    equal to or below the callback's path."""
    if callback is None:
        return True
    a, b = urlsplit(uri), urlsplit(callback)
    if (a.scheme, a.netloc) != (b.scheme, b.netloc):
        return False
    base = b.path.rstrip("/")
    return a.path == b.path or a.path.startswith(base + "/")
