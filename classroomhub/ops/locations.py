"""Where a hub keeps its state, read from its ``jupyterhub_config.py``.

Backup, restore and upgrade-db take the hub's configuration file rather
than a list of paths, so they see what the hub and its classroom service
see: the hub's database, cookie secret, roster and GitHub identity pins,
and the service's database and store (from the service's command line in
``c.JupyterHub.services``, parsed by the service's own option parser).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from jupyterhub.app import JupyterHub
from traitlets.config.loader import PyFileConfigLoader
from traitlets.utils.importstring import import_item

from ..errors import CommandError
from ..service.app import ClassroomService



class LocationError(CommandError, ValueError):
    """The configuration does not say where something is; the message says what."""

    def __init__(self, message):
        super().__init__(message, status=2)  # set-up the command cannot use


@dataclass
class Locations:
    config_file: str
    hub_db_url: str
    cookie_secret_file: str | None  # None: the secret comes from $JPY_COOKIE_SECRET
    roster_path: str | None
    identity_file: str | None  # None: the authenticator pins no identities
    service_db_url: str | None  # None: no classroom service configured
    service_data_dir: str | None
    store_dir: str | None
    notes: list = field(default_factory=list)


def _value(config, cls, trait):
    """The value *cls* would get for *trait* from *config* (subclass sections win), or its default."""
    value = cls.class_traits()[trait].default()
    for section in cls.section_names():  # base classes first, like traitlets
        if section in config and trait in config[section]:
            value = config[section][trait]
    return value


def _authenticator_class(spec):
    if isinstance(spec, type):
        return spec
    if "." in spec:
        return import_item(spec)
    for ep in entry_points(group="jupyterhub.authenticators"):
        if ep.name == spec:
            return ep.load()
    raise LocationError(f"authenticator {spec!r} not found")


def read_locations(config_file, hub_dir=None):
    """:class:`Locations` of the hub configured by *config_file*. Relative
    paths are taken relative to *hub_dir* (the hub's working directory;
    default: the configuration file's folder)."""
    config_file = os.path.abspath(config_file)
    if not os.path.isfile(config_file):
        raise LocationError(f"{config_file}: no such configuration file")
    hub_dir = os.path.abspath(hub_dir or os.path.dirname(config_file))
    loader = PyFileConfigLoader(os.path.basename(config_file), path=os.path.dirname(config_file))
    config = loader.load_config()

    def here(path):
        return os.path.normpath(os.path.join(hub_dir, path)) if path else path

    notes = []
    db_url = _value(config, JupyterHub, "db_url")
    if db_url.startswith("sqlite:///") and not db_url.startswith("sqlite:////"):
        db_url = "sqlite:///" + here(db_url[len("sqlite:///") :])
    cookie_secret_file = here(_value(config, JupyterHub, "cookie_secret_file"))
    if os.environ.get("JPY_COOKIE_SECRET"):
        notes.append("the cookie secret comes from $JPY_COOKIE_SECRET: keep it with the backup yourself")
        cookie_secret_file = None

    authenticator = _authenticator_class(_value(config, JupyterHub, "authenticator_class"))
    traits = authenticator.class_traits()
    roster_path = here(_value(config, authenticator, "roster_path")) if "roster_path" in traits else None
    identity_file = here(_value(config, authenticator, "identity_file")) if "identity_file" in traits else None
    if roster_path is None:
        notes.append(f"{authenticator.__name__} has no roster: nothing of the authenticator is backed up")

    service_db_url = service_data_dir = store_dir = None
    for service in config.JupyterHub.get("services", []):
        command = list(service.get("command") or [])
        if "classroomhub.service" not in command and not any(a.endswith("classroomhub-service") for a in command):
            continue
        # the arguments after `python -m classroomhub.service` or `classroomhub-service`
        start = command.index("classroomhub.service") if "classroomhub.service" in command else 0
        args = command[start + 1 :]
        app = ClassroomService()
        app.parse_command_line(args)
        if app.config_file:
            app.load_config_file(here(app.config_file))
        service_data_dir = here(app.data_dir)
        service_db_url = app.db_url
        store_dir = here(app.store_dir)
    if service_db_url is None:
        notes.append("no classroomhub.service in c.JupyterHub.services: the classroom service is not backed up")
    return Locations(
        config_file,
        db_url,
        cookie_secret_file,
        roster_path,
        identity_file,
        service_db_url,
        service_data_dir,
        store_dir,
        notes,
    )
