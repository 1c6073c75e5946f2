"""The classroom service's REST API (documented in ``openapi.yaml``).

Every request is identified by the hub (an API token, or the browser's
OAuth cookie) and must carry access to the service
(``access:services!service=classroom``). Staff actions then need both the
token's custom scope for the course (``scopes.py``) and the person's roster
role: the course's instructors (and the admin and root tiers) release;
instructors and TAs read everyone's delivery reports; students read their
own. Every error is a JSON body ``{"status": ..., "message": ...}`` with a
4xx status.

Handlers only read the request, check who may do it, call the domain
objects (``self.context``: the :class:`~..domain.context.ServiceContext`
in the application's settings) and write the answer.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os

import yaml
from jupyterhub.services.auth import HubOAuthenticated
from tornado import web

from ..domain.errors import Invalid, NotFound
from ..domain.limits import TooMany
from ..domain.releases import check_name
from .scopes import access_scope

OPENAPI = os.path.join(os.path.dirname(__file__), "openapi.yaml")
RELEASE_KEYS = {"source": str, "git": str, "ref": str, "restore_deleted": bool, "shared": bool, "wait": bool}


class BaseHandler(HubOAuthenticated, web.RequestHandler):
    @property
    def hub_scopes(self):
        # only tokens made for this service: never None, which would let any
        # token of a user in (e.g. one a visitor's browser gave a student's server)
        return self.hub_auth.access_scopes or {access_scope()}

    @property
    def context(self):
        """The service's :class:`~..domain.context.ServiceContext`."""
        return self.settings["context"]

    @property
    def log(self):
        return self.context.log

    def error_message(self, status_code, **kwargs):
        """What to tell the caller about an error (never a traceback)."""
        message = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            message = exc.log_message % exc.args if exc.args else exc.log_message
        elif status_code >= 500:
            message = "Internal error; the service's log has the details."
        return message

    def write_error(self, status_code, **kwargs):
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": self.error_message(status_code, **kwargs)}))

    def write_json(self, data, status=200):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    # (HubOAuth checks XSRF on every cookie-authenticated request and skips
    # it only when a token actually authenticated it)

    async def person(self):
        """The caller, as the roster sees them, with the scopes of their token."""
        model = self.current_user
        if not model:
            if getattr(self, "_cached_hub_user", None):  # identified, but the token cannot reach us
                raise web.HTTPError(
                    403,
                    f"This token does not give access to the classroom service (it needs "
                    f"{' or '.join(sorted(self.hub_scopes))}); tokens of single-user servers never do",
                )
            raise web.HTTPError(403, "Authentication needed: a JupyterHub token or a hub login")
        if model.get("kind") != "user":
            raise web.HTTPError(403, f"Only users can use this API, not {model.get('kind')} {model.get('name')}")
        person = await self.context.hub.person(model["name"])
        person.scopes = frozenset(model.get("scopes") or ())
        return person

    def json_body(self, allowed):
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError as e:
            raise web.HTTPError(400, f"Request body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "Request body must be a JSON object")
        unknown = sorted(set(body) - set(allowed))
        if unknown:
            raise web.HTTPError(400, f"Unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        for key, kind in allowed.items():
            if key in body and not isinstance(body[key], kind):
                raise web.HTTPError(400, f"Field {key!r} must be a {kind.__name__}")
        return body

    @contextlib.contextmanager
    def refusals(self):
        """A domain object's refusal as the answer: 400 (:class:`~..domain.errors.Invalid`)
        or 404 (:class:`~..domain.errors.NotFound`), with its message."""
        try:
            yield
        except Invalid as e:
            raise web.HTTPError(400, str(e)) from None
        except NotFound as e:
            raise web.HTTPError(404, str(e)) from None

    def check_query(self, *allowed):
        """400 for query arguments this endpoint does not take."""
        unknown = sorted(set(self.request.query_arguments) - set(allowed))
        if unknown:
            raise web.HTTPError(400, f"Unknown query argument(s): {', '.join(unknown)}")

    async def course(self, course_id, person):
        """The members of *course_id*, if it exists and *person* may see it."""
        try:
            check_name("course", course_id)
        except ValueError as e:
            raise web.HTTPError(404, str(e)) from None
        courses = await self.context.hub.courses()
        if course_id not in courses:
            raise web.HTTPError(404, f"No course {course_id!r} in the roster")
        if not person.privileged and course_id not in person.courses:
            raise web.HTTPError(403, f"{person.name} is not a member of course {course_id!r}")
        return courses[course_id]

    def check_can_release(self, person, course_id, material):
        if not person.can_release(course_id):
            raise web.HTTPError(403, f"Only instructors of {course_id!r} (or admins) can release to it")
        try:
            check_name("material", material)
        except ValueError as e:
            raise web.HTTPError(400, str(e)) from None

    async def start_release(self, person, course_id, material, members, fields):
        """Import a new version of *material* (*fields*: the RELEASE_KEYS but
        ``wait``) and start delivering it to the course's students; returns
        (release, delivery task). Call check_can_release first."""
        try:
            return await self.context.releases.start(
                course_id,
                material,
                person.name,
                members["student"],
                source=fields.get("source"),
                git=fields.get("git"),
                ref=fields.get("ref"),
                restore_deleted=fields.get("restore_deleted", False),
                shared=fields.get("shared", False),
            )
        except LookupError as e:  # no such account
            raise web.HTTPError(400, str(e)) from None
        except ValueError as e:  # a bad name or source (files.store.SourceError is one)
            raise web.HTTPError(400, f"Cannot release: {e}") from None

    async def visible_courses(self, person, show):
        """(all courses, the ids *person* may see, {id: [show(latest release), ...]})."""
        courses = await self.context.hub.courses()
        visible = sorted(c for c in courses if person.privileged or c in person.courses)
        latest = {}
        for release in self.context.releases.latest_releases(visible):
            latest.setdefault(release.course, []).append(show(release))
        return courses, visible, latest

    def release_or_404(self, course_id, material, version=None):
        try:
            check_name("material", material)
        except ValueError as e:
            raise web.HTTPError(404, str(e)) from None
        release = self.context.releases.find(course_id, material, version)
        if release is None:
            what = f"version {version} of " if version is not None else ""
            raise web.HTTPError(404, f"No {what}material {material!r} in course {course_id!r}")
        return release


class CoursesHandler(BaseHandler):
    async def get(self):
        person = await self.person()
        courses, visible, latest = await self.visible_courses(person, lambda release: release.to_dict())
        self.write_json(
            {
                "courses": [
                    {
                        "id": c,
                        "role": person.courses.get(c),
                        "n_students": len(courses[c]["student"]),
                        "materials": latest.get(c, []),
                    }
                    for c in visible
                ]
            }
        )


class CourseHandler(BaseHandler):
    async def get(self, course_id):
        person = await self.person()
        members = await self.course(course_id, person)
        data = {
            "id": course_id,
            "role": person.courses.get(course_id),
            "materials": [r.to_dict() for r in self.context.releases.latest_releases([course_id])],
        }
        if person.can_see_reports(course_id):
            data["members"] = members
        self.write_json(data)


class ReleasesHandler(BaseHandler):
    async def get(self, course_id, material):
        person = await self.person()
        await self.course(course_id, person)
        self.release_or_404(course_id, material)
        self.write_json({"releases": [r.to_dict() for r in self.context.releases.history(course_id, material)]})

    async def post(self, course_id, material):
        person = await self.person()
        members = await self.course(course_id, person)
        self.check_can_release(person, course_id, material)
        body = self.json_body(RELEASE_KEYS)
        release, task = await self.start_release(person, course_id, material, members, body)
        if body.get("wait"):
            await task
        self.write_json(self.release_state(release, reports=bool(body.get("wait"))), status=201 if body.get("wait") else 202)

    def release_state(self, release, reports, student=None):
        data = release.to_dict()
        data["progress"] = self.context.releases.progress.get(release.id, {"running": False})
        if reports:
            data["reports"] = [r.to_dict() for r in self.context.releases.reports(release, student)]
        return data


class ReleaseHandler(ReleasesHandler):
    async def get(self, course_id, material, version):
        person = await self.person()
        await self.course(course_id, person)
        release = self.release_or_404(course_id, material, int(version))
        student = None if person.can_see_reports(course_id) else person.name
        data = self.release_state(release, reports=True, student=student)
        if person.can_see_reports(course_id):
            data["files"] = release.to_dict(files=True)["files"]
        self.write_json(data)

    async def post(self, *args):
        raise web.HTTPError(405, "Releases are immutable; POST to the material's releases to make a new version")


class SyncHandler(BaseHandler):
    """Deliver every current release of the caller's courses to the caller.

    Called by the spawner (with the server's token) before a server starts,
    so a student who joined a course late finds everything released so far.
    """

    async def post(self):
        person = await self.person()
        try:
            delivered = await self.context.releases.sync(person.name, list(person.courses))
        except TooMany as e:  # one person's syncs are limited: see ReleaseService.sync
            self.set_header("Retry-After", str(e.retry_after))  # (an HTTPError's answer would drop it)
            return self.write_json({"status": 429, "message": str(e)}, status=429)
        self.write_json(
            {
                "delivered": [
                    {
                        "course": release.course,
                        "material": release.material,
                        "version": release.version,
                        "error": report.error,
                        "counts": report.counts(),
                    }
                    for release, report in delivered
                ]
            }
        )


@functools.cache
def openapi_json(base_url):
    """The OpenAPI document as served (read and converted once per process)."""
    with open(OPENAPI) as f:
        spec = yaml.safe_load(f)
    spec["servers"] = [{"url": base_url.rstrip("/")}]
    return json.dumps(spec)


class OpenAPIHandler(web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.finish(openapi_json(self.settings["service_prefix"]))


class NotFoundHandler(BaseHandler):
    def prepare(self):
        raise web.HTTPError(404, f"No such endpoint: {self.request.path}")


def api_handlers(prefix):
    api = prefix + "api/"
    name = r"([^/]+)"
    return [
        (api + "openapi.json", OpenAPIHandler),
        (api + "courses", CoursesHandler),
        (api + f"courses/{name}", CourseHandler),
        (api + f"courses/{name}/materials/{name}/releases", ReleasesHandler),
        (api + rf"courses/{name}/materials/{name}/releases/([0-9]{{1,9}})", ReleaseHandler),
        (api + "sync", SyncHandler),
        (api + ".*", NotFoundHandler),
    ]
