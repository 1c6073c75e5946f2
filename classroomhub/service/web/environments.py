"""REST API of shared environments (see ``openapi.yaml``; pages in
``environment_pages.py``).

Who may do what is ``environments.rights``, with the token's
``custom:classroom:environments`` scope and the roster as its two gates:
the admin and root tiers manage every environment; a course's instructors
create and update environments for their own courses only; everyone sees
the environments they may use and nothing else (an environment they may
not see is answered 404, as one that does not exist). A create, or an
update that builds, answers 202 with its build, whose URL shows its progress.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

from tornado import web

from ...environments import EnvironmentSpec, SpecError, may_use, parse_packages
from ...environments.rights import (
    NotAllowed,
    builds_for,
    check_may_change,
    check_may_remove,
    groups_of,
    manages_all,
    may_see,
)
from ...tiers import TIERS, tier_rank
from ..domain.environments import Busy
from ..domain.errors import Invalid, NotFound
from .api import BaseHandler
from .scopes import ENVIRONMENTS, allows

#: the file name a package list's messages name, per format
SOURCES = {"requirements": "requirements.txt", "pyproject": "pyproject.toml", "environment": "environment.yml"}
CREATE_KEYS = {"name": str, "packages": object, "format": str, "audience": list, "display_name": str, "default": bool}
UPDATE_KEYS = {"packages": object, "format": str, "audience": list, "display_name": str, "default": bool, "rebuild": bool}
MAX_DISPLAY_NAME = 100


def check_display_name(text):
    """A kernel's name in JupyterLab: one line of printable text."""
    if len(text) > MAX_DISPLAY_NAME:
        raise Invalid(f"display_name: at most {MAX_DISPLAY_NAME} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Cn") for ch in text):
        raise Invalid("display_name: printable text only (no control characters)")
    return text


def read_packages(value, format=None):
    """The requirement strings of a package list sent as text in one of the
    formats (``format``, default requirements) or as a list of requirements;
    a bad list is :class:`Invalid` with the parser's ``file:line`` message."""
    format = format or "requirements"
    if format not in SOURCES:
        raise Invalid(f"format: one of {', '.join(SOURCES)}, not {format!r}")
    if isinstance(value, list):
        if format != "requirements" or not all(isinstance(p, str) and "\n" not in p and "\r" not in p for p in value):
            raise Invalid("packages: a list holds one requirement per string (e.g. \"pandas>=2\")")
        value = "\n".join(value)
    if not isinstance(value, str):
        raise Invalid("packages: the text of a package list, or a list of requirements")
    try:
        return parse_packages(value, SOURCES[format], format)
    except SpecError as e:
        raise Invalid(str(e)) from None


def check_audience(value):
    if not value or not all(isinstance(a, str) for a in value):
        raise Invalid("audience: a list of 'everyone', 'course:<id>' or 'tier:<tier>' (at least one)")
    return value


def who_can_use(spec, courses):
    """One line per audience entry: who it admits (*courses*: the roster's, with members)."""
    lines = []
    for entry in spec.audience:
        kind, _, value = entry.partition(":")
        if kind == "course":
            members = courses.get(value)
            count = f"{sum(len(m) for m in members.values())} people" if members else "no such course in the roster"
            lines.append(f"course {value}: its instructors, TAs and students ({count})")
        elif kind == "tier":
            tiers = [t for t in TIERS if tier_rank(t) >= tier_rank(value)]
            lines.append(f"the {value} tier and above ({', '.join(tiers)})")
        else:
            lines.append("everyone on the hub")
    return lines


class EnvironmentsBase(BaseHandler):
    """What the environments' API handlers and pages share: the rights, the
    request's fields, the answers."""

    @property
    def environments(self):
        """The service's ``domain.environments.EnvironmentBuilds``."""
        return self.context.environments

    def url_of(self, *parts):
        return self.settings["service_prefix"] + "/".join(quote(str(p), safe="") for p in parts)

    async def rights(self):
        """(person, holds): the caller and their token's environments scope per course."""
        person = await self.person()
        return person, lambda course: allows(person.scopes, ENVIRONMENTS, course)

    def visible(self, person, holds, spec):
        return may_see(spec, person.tier, person.courses, holds)

    def may_build(self, person, holds):
        """Whether the caller may create environments at all (the admin and root tiers, instructors)."""
        return manages_all(person.tier, holds) or bool(builds_for(person.tier, person.courses, holds))

    def may_change(self, person, holds, *audiences):
        try:
            for audience in audiences:
                check_may_change(person.tier, person.courses, holds, audience, "change this environment")
        except NotAllowed:
            return False
        return True

    def spec_or_404(self, name, person, holds):
        """The declaration of *name*, if the caller may see it; or of the
        environment its latest create is making (or failed to make)."""
        try:
            spec = self.environments.spec(name)
        except NotFound:
            creating = next((b for b in self.environments.builds(name) if b.action == "create"), None)
            made = creating is None or creating.state == "succeeded"  # (and removed since)
            spec = None if made else EnvironmentSpec.from_dict(creating.declaration)
        if spec is None or not self.visible(person, holds, spec):
            raise web.HTTPError(404, f"No environment named {name!r}")
        return spec

    async def visible_build(self, name, build_id):
        """Build *build_id* of *name*, for a caller who may see the environment (404 otherwise)."""
        person, holds = await self.rights()
        self.spec_or_404(name, person, holds)
        try:
            return self.environments.build(name, int(build_id))
        except NotFound as e:
            raise web.HTTPError(404, str(e)) from None

    async def visible_log(self, name, version=None):
        """The build log of *name*'s *version* (None: the latest build), for a caller who may see it (404 otherwise)."""
        person, holds = await self.rights()
        self.spec_or_404(name, person, holds)
        try:
            return self.environments.build_log(name, None if version is None else int(version))
        except NotFound as e:
            raise web.HTTPError(404, str(e)) from None

    def refuse(self, error):
        """A refusal of the domain or the rights as an HTTP error."""
        if isinstance(error, NotAllowed):
            return web.HTTPError(403, str(error))
        if isinstance(error, Busy):
            return web.HTTPError(409, str(error))
        if isinstance(error, NotFound):
            return web.HTTPError(404, str(error))
        return web.HTTPError(400, str(error))

    # -- the requests' fields --------------------------------------------------------

    def new_spec(self, body):
        """The declaration a create asks for (400 if it is not valid)."""
        if "name" not in body or "packages" not in body:
            raise Invalid("name and packages are required")
        packages = read_packages(body["packages"], body.get("format"))
        try:
            return EnvironmentSpec(
                name=body["name"],
                packages=packages,
                audience=check_audience(body.get("audience", ["everyone"])),
                display_name=check_display_name(body.get("display_name") or ""),
                default=body.get("default", False),
            )
        except SpecError as e:
            raise Invalid(str(e)) from None

    def changes(self, body):
        """The manager's update fields an update asks for (None: unchanged)."""
        if "format" in body and "packages" not in body:
            raise Invalid("format: only with packages")
        changes = {
            "packages": read_packages(body["packages"], body.get("format")) if "packages" in body else None,
            "audience": check_audience(body["audience"]) if "audience" in body else None,
            "display_name": check_display_name(body["display_name"]) if "display_name" in body else None,
            "default": body.get("default"),
        }
        if all(value is None for value in changes.values()) and not body.get("rebuild"):
            raise Invalid("Nothing to change: give packages, audience, display_name, default or rebuild")
        return changes

    # -- doing it ------------------------------------------------------------------

    async def create(self, person, holds, body):
        """Check and queue the creation *body* asks for; returns the build."""
        if not self.may_build(person, holds):
            raise NotAllowed("Only the admin and root tiers and a course's instructors may create environments")
        spec = self.new_spec(body)
        check_may_change(person.tier, person.courses, holds, spec.audience, "create environments")
        return self.environments.start_create(person, spec)

    async def update(self, person, holds, name, body):
        """Check and do the update *body* asks for: (build or None, declaration)."""
        old = self.spec_or_404(name, person, holds)
        check_may_change(person.tier, person.courses, holds, old.audience, "change this environment")
        changes = self.changes(body)
        new = self.environments.changed(name, changes)
        check_may_change(person.tier, person.courses, holds, new.audience, "give an environment this audience")
        rebuild = body.get("rebuild", False)
        if self.environments.builds_for(name, changes, rebuild):
            return self.environments.start_update(person, name, changes, rebuild), new
        return None, await self.environments.update_declaration(person, name, changes)

    async def remove(self, person, holds, name):
        self.spec_or_404(name, person, holds)
        check_may_remove(person.tier, holds, name)
        await self.environments.remove(person, name)

    # -- the answers -----------------------------------------------------------------

    def build_data(self, build, log=True):
        return {**build.to_dict(log=log), "url": self.url_of("api", "environments", build.environment, "builds", build.id)}

    def environment_data(self, spec, person, holds, courses, full=False):
        """An environment as the caller may see it."""
        try:
            info = self.environments.info(spec.name)
        except NotFound:  # being created
            info = None
        active = self.environments.active(spec.name)
        data = {
            **spec.to_dict(),
            "kernel_name": spec.kernel_name,
            "current": info.current if info else None,
            "who": who_can_use(spec, courses),
            "you_can_use": may_use(spec, groups_of(person.tier, person.courses)),
            "can_change": self.may_change(person, holds, spec.audience),
            "can_remove": manages_all(person.tier, holds),
            "building": self.build_data(active, log=False) if active else None,
        }
        versions = info.versions if info else []
        if full:
            data["versions"] = [
                {
                    "version": v.version,
                    "current": v.current,
                    "built": v.manifest.get("built"),
                    "installer": v.manifest.get("installer"),
                    "requested": v.manifest.get("requested", []),
                    "installed": v.manifest.get("installed", []),
                    "log_url": self.url_of("api", "environments", spec.name, "versions", v.version, "log"),
                }
                for v in versions
            ]
            data["builds_url"] = self.url_of("api", "environments", spec.name, "builds")
        else:
            data["versions"] = [{"version": v.version, "current": v.current, "built": v.manifest.get("built")} for v in versions]
        return data

    async def listing(self, person, holds):
        """(the environments the caller may see, with their data; the creations under way they may see)."""
        courses = await self.context.hub.courses()
        shown = []
        for name in self.environments.manager.names():
            try:
                spec = self.environments.spec(name)
            except NotFound:  # removed meanwhile
                continue
            if self.visible(person, holds, spec):
                shown.append(self.environment_data(spec, person, holds, courses))
        names = {e["name"] for e in shown}
        creating = [
            self.build_data(b, log=False)
            for b in self.environments.builds()
            if b.action == "create" and not b.done and b.environment not in names
            and self.visible(person, holds, EnvironmentSpec.from_dict(b.declaration))
        ]
        return shown, creating


class EnvironmentsHandler(EnvironmentsBase):
    async def get(self):
        person, holds = await self.rights()
        shown, creating = await self.listing(person, holds)
        allowed = builds_for(person.tier, person.courses, holds)
        self.write_json({"environments": shown, "creating": creating, "can_create_for": ["*"] if allowed is None else allowed})

    async def post(self):
        person, holds = await self.rights()
        body = self.json_body(CREATE_KEYS)
        try:
            build = await self.create(person, holds, body)
        except (NotAllowed, Busy, Invalid) as e:
            raise self.refuse(e) from None
        self.write_json(self.build_data(build), status=202)


class EnvironmentHandler(EnvironmentsBase):
    async def get(self, name):
        person, holds = await self.rights()
        spec = self.spec_or_404(name, person, holds)
        courses = await self.context.hub.courses()
        data = self.environment_data(spec, person, holds, courses, full=True)
        if data["can_change"]:
            data["history"] = [e.to_dict() for e in self.environments.history(name)]
        self.write_json(data)

    async def patch(self, name):
        person, holds = await self.rights()
        body = self.json_body(UPDATE_KEYS)
        try:
            build, spec = await self.update(person, holds, name, body)
        except (NotAllowed, Busy, Invalid, NotFound) as e:
            raise self.refuse(e) from None
        if build is not None:
            return self.write_json(self.build_data(build), status=202)
        courses = await self.context.hub.courses()
        self.write_json(self.environment_data(spec, person, holds, courses, full=True))

    async def delete(self, name):
        person, holds = await self.rights()
        try:
            await self.remove(person, holds, name)
        except (NotAllowed, Busy, NotFound) as e:
            raise self.refuse(e) from None
        self.set_status(204)
        self.finish()


class BuildsHandler(EnvironmentsBase):
    async def get(self, name):
        person, holds = await self.rights()
        self.spec_or_404(name, person, holds)
        self.write_json({"builds": [self.build_data(b, log=False) for b in self.environments.builds(name)]})


class BuildHandler(EnvironmentsBase):
    async def get(self, name, build_id):
        self.write_json(self.build_data(await self.visible_build(name, build_id)))


class LogHandler(EnvironmentsBase):
    """The build log of a version (failed builds too), or of the latest build."""

    async def get(self, name, version=None):
        log = await self.visible_log(name, version)
        self.write_json({"environment": name, "version": None if version is None else int(version), "log": log})


def environment_handlers(prefix):
    """The API's environment routes under *prefix* (list them before the API's catch-all)."""
    api = prefix + "api/environments"
    name = r"([^/]+)"
    number = r"([0-9]{1,9})"
    return [
        (api, EnvironmentsHandler),
        (api + f"/{name}", EnvironmentHandler),
        (api + f"/{name}/builds", BuildsHandler),
        (api + f"/{name}/builds/{number}", BuildHandler),
        (api + f"/{name}/log", LogHandler),
        (api + f"/{name}/versions/{number}/log", LogHandler),
    ]
