"""The service's pages of shared environments, with the API's rules
(``environments.EnvironmentsBase``):

* ``{prefix}environments`` — the environments the person may see: kernel,
  packages, versions, who can use them, builds under way; a create form for
  the admin and root tiers and instructors;
* ``{prefix}environments/<name>`` — one environment: packages, versions and
  what each installed, who can use it, its builds and the latest build's
  log; an update form for whoever may change it, a remove button for the
  admin and root tiers;
* ``{prefix}environments/<name>/builds/<id>`` — one build's progress and
  output (refreshing itself until it ends);
* ``{prefix}environments/<name>/versions/<version>/log`` — a build's log.
"""

from __future__ import annotations

import re

from markupsafe import Markup
from tornado import web

from ...environments.rights import NotAllowed, builds_for
from ..domain.environments import Busy
from ..domain.errors import Invalid, NotFound
from .environments import SOURCES, EnvironmentsBase
from .pages import REFRESH_SECONDS, PageHandler

STATUS = {NotAllowed: 403, Busy: 409, Invalid: 400, NotFound: 404}


def audience_field(text):
    """An audience typed in a form: entries separated by spaces or commas."""
    return [entry for entry in re.split(r"[\s,]+", text) if entry]


class EnvironmentPageBase(PageHandler, EnvironmentsBase):
    def form_field(self, name):
        return self.get_body_argument(name, "").strip()

    def status_of(self, error):
        return next(status for kind, status in STATUS.items() if isinstance(error, kind))

    async def show_environment(self, name, person, holds, status=200, error=None, form=None):
        spec = self.spec_or_404(name, person, holds)
        courses = await self.context.hub.courses()
        data = self.environment_data(spec, person, holds, courses, full=True)
        for version in data["versions"]:
            version["page_url"] = self.url("environments", name, "versions", version["version"], "log")
        builds = [self.build_data(b, log=False) for b in self.environments.builds(name)]
        for build in builds:
            build["page_url"] = self.url("environments", name, "builds", build["id"])
        try:
            log = self.environments.build_log(name)
        except NotFound:
            log = None
        self.render_page(
            "environment.html",
            status,
            env=data,
            builds=builds,
            log=log,
            history=self.environments.history(name) if data["can_change"] else [],
            list_url=self.url("environments"),
            form_url=self.url("environments", name),
            remove_url=self.url("environments", name, "remove"),
            formats=list(SOURCES),
            xsrf_form_html=Markup(self.xsrf_form_html()),
            error=error,
            form=form or {"audience": " ".join(spec.audience), "display_name": spec.display_name, "default": spec.default},
            refresh=REFRESH_SECONDS if data["building"] else None,
        )


class EnvironmentsPage(EnvironmentPageBase):
    @web.authenticated
    async def get(self):
        person, holds = await self.rights()
        self.show(person, holds, await self.listing(person, holds))

    def show(self, person, holds, listing, status=200, error=None, form=None):
        shown, creating = listing
        allowed = builds_for(person.tier, person.courses, holds)
        for data in [*shown, *creating]:
            data["page_url"] = self.url("environments", data.get("name") or data["environment"])
        for data in creating:
            data["build_url"] = self.url("environments", data["environment"], "builds", data["id"])
        self.render_page(
            "environments.html",
            status,
            environments=shown,
            creating=creating,
            can_create=allowed is None or bool(allowed),
            create_for="any audience" if allowed is None else ", ".join(f"course:{c}" for c in allowed),
            form_url=self.url("environments"),
            formats=list(SOURCES),
            xsrf_form_html=Markup(self.xsrf_form_html()),
            error=error,
            form=form or {"audience": "everyone" if allowed is None else " ".join(f"course:{c}" for c in allowed or [])},
        )

    @web.authenticated
    async def post(self):
        person, holds = await self.rights()
        form = {key: self.form_field(key) for key in ("name", "packages", "format", "audience", "display_name")}
        form["default"] = bool(self.get_body_argument("default", ""))
        body = {
            "name": form["name"],
            "packages": form["packages"],
            "format": form["format"] or None,
            "audience": audience_field(form["audience"]),
            "display_name": form["display_name"],
            "default": form["default"],
        }
        try:
            build = await self.create(person, holds, body)
        except (NotAllowed, Busy, Invalid) as e:
            return self.show(person, holds, await self.listing(person, holds), self.status_of(e), str(e), form)
        self.redirect(self.url("environments", build.environment, "builds", build.id), status=303)


class EnvironmentPage(EnvironmentPageBase):
    @web.authenticated
    async def get(self, name):
        person, holds = await self.rights()
        await self.show_environment(name, person, holds)

    @web.authenticated
    async def post(self, name):
        """The update form: only what differs from the declaration is changed."""
        person, holds = await self.rights()
        spec = self.spec_or_404(name, person, holds)
        form = {key: self.form_field(key) for key in ("packages", "format", "audience", "display_name")}
        form["default"] = bool(self.get_body_argument("default", ""))
        form["rebuild"] = bool(self.get_body_argument("rebuild", ""))
        body = {}
        if form["packages"]:
            body["packages"] = form["packages"]
            if form["format"]:
                body["format"] = form["format"]
        if audience_field(form["audience"]) != spec.audience:
            body["audience"] = audience_field(form["audience"])
        if form["display_name"] and form["display_name"] != spec.display_name:
            body["display_name"] = form["display_name"]
        if form["default"] != spec.default:
            body["default"] = form["default"]
        if form["rebuild"]:
            body["rebuild"] = True
        try:
            build, _ = await self.update(person, holds, name, body)
        except (NotAllowed, Busy, Invalid, NotFound) as e:
            return await self.show_environment(name, person, holds, self.status_of(e), str(e), form)
        if build is not None:
            return self.redirect(self.url("environments", name, "builds", build.id), status=303)
        self.redirect(self.url("environments", name), status=303)


class RemovePage(EnvironmentPageBase):
    @web.authenticated
    async def post(self, name):
        person, holds = await self.rights()
        try:
            await self.remove(person, holds, name)
        except (NotAllowed, Busy, NotFound) as e:
            return await self.show_environment(name, person, holds, self.status_of(e), str(e))
        self.redirect(self.url("environments"), status=303)


class BuildPage(EnvironmentPageBase):
    @web.authenticated
    async def get(self, name, build_id):
        build = await self.visible_build(name, build_id)
        self.render_page(
            "environment_build.html",
            build=build.to_dict(),
            env_url=self.url("environments", name),
            refresh=None if build.done else REFRESH_SECONDS,
        )


class LogPage(EnvironmentPageBase):
    @web.authenticated
    async def get(self, name, version):
        log = await self.visible_log(name, version)
        self.render_page("environment_log.html", name=name, version=int(version), log=log, env_url=self.url("environments", name))


def environment_page_handlers(prefix):
    """The environments' pages under *prefix* (list them before the pages' catch-all)."""
    name = r"([^/]+)"
    number = r"([0-9]{1,9})"
    return [
        (prefix + "environments/?", EnvironmentsPage),
        (prefix + f"environments/{name}/?", EnvironmentPage),
        (prefix + f"environments/{name}/remove", RemovePage),
        (prefix + f"environments/{name}/builds/{number}/?", BuildPage),
        (prefix + f"environments/{name}/versions/{number}/log/?", LogPage),
    ]
