"""The HTTP client of the ``classroomhub`` command: the hub's REST API and services behind it.

Every failure becomes one :class:`~classroomhub.errors.CommandError` line: an HTTP error with the
hub's or the service's own message, an answer that is not JSON, a token that
is not accepted, and a redirect. A redirect is never followed: a POST turned
into a GET (what HTTP clients do on 301/302) would silently do nothing, and
the token would go wherever the redirect points. The message names the URL to
use instead.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

from ..errors import CommandError

DEFAULT_HUB_URL = "http://127.0.0.1:8000"
DEFAULT_SERVICE_PREFIX = "/services/classroom"
# where the hub, or a HubOAuth service, sends a request whose token it does not accept
LOGIN_PATHS = ("/hub/login", "/hub/api/oauth2/authorize")


class Redirected(Exception):
    def __init__(self, code, location):
        self.code, self.location = code, location


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise Redirected(code, newurl)


_opener = urllib.request.build_opener(_NoRedirects)


def add_hub_arguments(parser, token_help="your JupyterHub API token"):
    """--hub-url, --token, --timeout (the environment gives their defaults)."""
    parser.add_argument(
        "--hub-url",
        default=os.environ.get("JUPYTERHUB_URL", DEFAULT_HUB_URL),
        help="the hub's public address, as in your browser ($JUPYTERHUB_URL)",
    )
    parser.add_argument("--token", help=f"{token_help} (default: $JUPYTERHUB_API_TOKEN)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for each answer")


def add_service_arguments(parser):
    add_hub_arguments(parser, "your JupyterHub API token (with access to the classroom service)")
    parser.add_argument(
        "--service-prefix", default=DEFAULT_SERVICE_PREFIX, help="where the hub serves the classroom service"
    )


class HubClient:
    """JSON requests to ``--hub-url`` (and ``--service-prefix`` for :meth:`service`)."""

    def __init__(self, hub_url, token, timeout=60, service_prefix=DEFAULT_SERVICE_PREFIX):
        token = token or os.environ.get("JUPYTERHUB_API_TOKEN")
        if not token:
            raise CommandError("no API token: pass --token or set JUPYTERHUB_API_TOKEN", status=2)
        self.hub_url = hub_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.service_prefix = "/" + service_prefix.strip("/")

    @classmethod
    def from_args(cls, args):
        return cls(args.hub_url, args.token, args.timeout, getattr(args, "service_prefix", DEFAULT_SERVICE_PREFIX))

    def service(self, path):
        """The path of the classroom service's API endpoint *path*."""
        return f"{self.service_prefix}/api/{path}"

    def request(self, method, path, body=None, accept=()):
        """The JSON answer of *method* *path* (None for 204); CommandError otherwise.

        Error statuses in *accept* answer with their JSON body, as a success does.
        """
        try:
            resp = self._open(method, path, body, accept)
        except urllib.error.HTTPError as e:  # one of *accept*
            return self._json(e, e.read(), self.hub_url + path)
        with resp:
            raw = resp.read()
            if resp.status == 204:
                return None
            return self._json(resp, raw, self.hub_url + path)

    def download(self, path, out):
        """Save the answer of GET *path* in the file *out*, written whole or not at all."""
        partial = f"{out}.part"
        try:
            with self._open("GET", path) as resp, open(partial, "wb") as f:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
            os.replace(partial, out)
        except OSError as e:
            raise CommandError(f"{out}: {e.strerror or e}") from None
        finally:
            if os.path.exists(partial):
                os.unlink(partial)

    def _open(self, method, path, body=None, accept=()):
        url = self.hub_url + path
        headers = {"Authorization": f"token {self.token}", "Accept": "application/json"}
        data = None
        if method in ("POST", "PUT", "PATCH"):
            data = json.dumps(body).encode() if body is not None else b""
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, method=method, headers=headers, data=data)
        try:
            return _opener.open(req, timeout=self.timeout)
        except Redirected as r:
            raise CommandError(self._redirect_message(method, url, path, r)) from None
        except urllib.error.HTTPError as e:
            if e.code in accept:
                raise
            raise CommandError(self._error_message(url, e)) from None
        except (urllib.error.URLError, OSError) as e:
            raise CommandError(f"{url}: {getattr(e, 'reason', None) or e}") from None

    def _redirect_message(self, method, url, path, r):
        if urllib.parse.urlsplit(r.location).path.endswith(LOGIN_PATHS):
            return f"{url}: the token was not accepted (HTTP {r.code} to the login page): check --token"
        if r.location.endswith(path):  # same API elsewhere, e.g. http -> https
            return f"{url} redirects ({r.code}) to {r.location}: use --hub-url {r.location[: -len(path)] or '/'}"
        verb = "a POST is not repeated there" if method != "GET" else "not followed"
        return f"{url} redirects ({r.code}) to {r.location} ({verb}): is --hub-url the hub's public address?"

    def _error_message(self, url, e):
        raw = e.read()
        try:
            message = json.loads(raw).get("message")
        except (ValueError, AttributeError):
            message = None
        if not message:
            text = " ".join(raw.decode("utf-8", "replace").split())
            html = e.headers.get_content_type() == "text/html"  # a proxy's error page says no more
            message = f"{url}: HTTP {e.code} {e.reason}" + (f": {text[:200]}" if text and not html else "")
        if e.code in (401, 403) and "token" not in message.lower():
            message += " (check --token and its scopes)"
        return message

    def _json(self, resp, raw, url):
        try:
            return json.loads(raw)
        except ValueError:
            kind = resp.headers.get_content_type()
            raise CommandError(
                f"{url}: answered with {kind}, not JSON: is --hub-url the hub's address"
                " (and --service-prefix the classroom service's)?"
            ) from None

