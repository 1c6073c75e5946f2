"""The classroom service's web pages, in the hub's look.

People log in with the hub (OAuth, as for any JupyterHub service) and see
what the REST API would show them, with the same rules (``api.BaseHandler``):

* ``{prefix}`` — My courses: each course of the person (every course for the
  admin and root tiers), their role, and the latest version of each material;
* ``{prefix}courses/<course>`` — the course's materials; for its instructors
  (and admins) a release form (a folder or a git repository);
* ``{prefix}courses/<course>/materials/<material>/releases/<version>`` — the
  delivery report: per-student counts per status and the details of
  failed, kept and left-deleted files; instructors and TAs see every
  student, a student only their own line.

Errors are pages with a message (never a traceback); a release that cannot
be made shows its reason above the form, with status 400.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timezone
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from tornado import web
from tornado.escape import xhtml_escape

from .api import BaseHandler
from ..files.delivery import STATUSES

TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")
#: statuses worth a line of detail in a report
NOTED = ("failed", "kept", "left-deleted", "restored")
#: how long a release form waits for the delivery before showing its page
#: (which refreshes itself until the delivery is done)
FORM_WAIT_SECONDS = 10.0
REFRESH_SECONDS = 2

_environment = None


def environment():
    global _environment
    if _environment is None:
        _environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    return _environment


def when(dt):
    if dt is None:
        return ""
    if dt.tzinfo is None:  # SQLite drops the zone; the service stores UTC
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def size(n):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


class PageHandler(BaseHandler):
    """A page: login through the hub, HTML errors, the hub's navbar."""

    @property
    def prefix(self):
        return self.settings["service_prefix"]

    @property
    def hub_prefix(self):
        return self.hub_auth.hub_prefix

    def url(self, *parts):
        return self.prefix + "/".join(quote(str(p), safe="") for p in parts)

    def release_url(self, release):
        return self.url("courses", release.course, "materials", release.material, "releases", release.version)

    def render_page(self, template, status=200, **namespace):
        try:
            user = (self.current_user or {}).get("name")
        except Exception:  # the hub could not be asked: render without a name
            user = None
        namespace = {"prefix": self.prefix, "hub_prefix": self.hub_prefix, "user": user, "refresh": None, **namespace}
        html = environment().get_template(template).render(**namespace)
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(html)

    def write_error(self, status_code, **kwargs):
        message = self.error_message(status_code, **kwargs)
        if status_code == 403 and message == self._reason:
            # tornado's own refusal of a form sent without a (valid) login
            message = "Not allowed without a valid hub login: reload the page (logging in again if asked) and retry."
        try:
            self.render_page("error.html", status_code, status_code=status_code, reason=self._reason, message=message)
        except Exception:
            self.log.exception("Rendering the error page failed")
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.finish(
                f"<!DOCTYPE html><html><body><h1>{status_code} : {xhtml_escape(self._reason)}</h1>"
                f"<p>{xhtml_escape(message)}</p></body></html>"
            )

    def material_row(self, release):
        return {
            **release.to_dict(),
            "created": when(release.created),
            "size": size(sum(f["size"] for f in release.files.values())),
            "url": self.release_url(release),
            "assignment_url": self.url("courses", release.course, "assignments", release.material),
        }


class HomePage(PageHandler):
    @web.authenticated
    async def get(self):
        person = await self.person()
        _, visible, latest = await self.visible_courses(person, self.material_row)
        self.render_page(
            "home.html",
            courses=[
                {
                    "id": c,
                    "url": self.url("courses", c),
                    "role": person.courses.get(c) or f"{person.tier} (not a member)",
                    "materials": latest.get(c, []),
                }
                for c in visible
            ],
        )


class CoursePage(PageHandler):
    @web.authenticated
    async def get(self, course_id):
        person = await self.person()
        members = await self.course(course_id, person)
        self.show(course_id, person, members)

    def show(self, course_id, person, members, status=200, error=None, form=None):
        self.render_page(
            "course.html",
            status,
            course=course_id,
            role=person.courses.get(course_id) or f"{person.tier} (not a member)",
            materials=[self.material_row(r) for r in self.context.releases.latest_releases([course_id])],
            members=members if person.can_see_reports(course_id) else None,
            can_release=person.can_release(course_id),
            form_url=self.url("courses", course_id),
            xsrf_form_html=Markup(self.xsrf_form_html()),
            error=error,
            form=form or {},
        )

    @web.authenticated
    async def post(self, course_id):
        person = await self.person()
        members = await self.course(course_id, person)
        form = {key: self.get_body_argument(key, "").strip() for key in ("material", "source", "git", "ref")}
        form["restore_deleted"] = bool(self.get_body_argument("restore_deleted", ""))
        form["shared"] = bool(self.get_body_argument("shared", ""))
        fields = {key: value or None for key, value in form.items()}
        try:
            self.check_can_release(person, course_id, form["material"])
            release, task = await self.start_release(person, course_id, form["material"], members, fields)
        except web.HTTPError as e:
            if e.status_code != 400:
                raise
            return self.show(course_id, person, members, 400, self.error_message(400, exc_info=(None, e, None)), form)
        # a small class is done in a moment: show its report at once; a big one
        # shows progress on the release page, which refreshes itself
        await asyncio.wait([task], timeout=FORM_WAIT_SECONDS)
        self.redirect(self.release_url(release), status=303)


class MaterialPage(PageHandler):
    """The latest version of a material."""

    @web.authenticated
    async def get(self, course_id, material):
        person = await self.person()
        await self.course(course_id, person)
        self.redirect(self.release_url(self.release_or_404(course_id, material)))


class ReleasePage(PageHandler):
    @web.authenticated
    async def get(self, course_id, material, version):
        person = await self.person()
        await self.course(course_id, person)
        release = self.release_or_404(course_id, material, int(version))
        everyone = person.can_see_reports(course_id)
        reports = []
        for report in self.context.releases.reports(release, None if everyone else person.name):
            data = report.to_dict()
            data["notes"] = [r for r in report.results if r["status"] in NOTED]
            reports.append(data)
        progress = self.context.releases.progress.get(release.id, {"running": False})
        history = self.context.releases.history(course_id, material)
        self.render_page(
            "release.html",
            release=self.material_row(release),
            course_url=self.url("courses", course_id),
            versions=[{"version": r.version, "url": self.release_url(r)} for r in history],
            statuses=STATUSES,
            reports=reports,
            own_only=not everyone,
            progress=progress,
            refresh=REFRESH_SECONDS if progress.get("running") else None,
            files=[{"path": p, "size": size(f["size"])} for p, f in sorted(release.files.items())]
            if everyone
            else None,
        )


class NotFoundPage(PageHandler):
    def prepare(self):
        raise web.HTTPError(404, f"No such page: {self.request.path}")


def page_handlers(prefix):
    """The pages under *prefix* (ending in '/'); list them before the API's handlers."""
    name = r"([^/]+)"
    return [
        (prefix, HomePage),
        (prefix + f"courses/{name}/?", CoursePage),
        (prefix + f"courses/{name}/materials/{name}/?", MaterialPage),
        (prefix + rf"courses/{name}/materials/{name}/releases/([0-9]{{1,9}})/?", ReleasePage),
        # anything else but the API (and the OAuth callback, listed before)
        (prefix + r"(?!api/|api$|oauth_callback$).*", NotFoundPage),
    ]
