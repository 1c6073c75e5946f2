"""Apply a roster to a running hub's database, at once.

JupyterHub applies an authenticator's groups, roles and admin flag only when
a user logs in (or their auth is refreshed). A roster change must take
effect for everybody immediately, and a removal must really revoke: so this
module writes the grants of every roster person into the hub's database in
one transaction, and for people no longer admitted removes every group,
role and token, rotates their cookie id (ending browser sessions) and stops
their servers. Someone who loses a role or admin also loses the tokens they
were given by other people's servers (a visit as staff ends at once, not
when those servers' token cache expires).

The same function runs while the hub starts (before it serves anything),
so a roster edited while the hub was down is in force from the first
request; :func:`managed_role_specs` then tells JupyterHub's start-up the
exact members of each role.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from jupyterhub import orm
from jupyterhub.roles import create_role
from jupyterhub.utils import new_token

from .access import MANAGED_ROLE_PREFIXES
from .servers import stop_server


@dataclass
class SyncReport:
    created: list = field(default_factory=list)
    changed: list = field(default_factory=list)
    revoked: list = field(default_factory=list)
    stopped: list = field(default_factory=list)
    #: servers that were starting or stopping and must be retried
    pending: list = field(default_factory=list)
    roles_deleted: list = field(default_factory=list)
    #: people who lost a role or admin: their visits to others' servers ended
    visits_revoked: list = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self):
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def __str__(self):
        return (
            f"{len(self.created)} created, {len(self.changed)} changed, "
            f"{len(self.revoked)} revoked, {len(self.stopped)} servers stopped"
            f" in {self.seconds:.3f}s"
        )


def _group_objects(db, names):
    existing = {g.name: g for g in db.query(orm.Group).filter(orm.Group.name.in_(names))}
    for name in names:
        if name not in existing:
            group = orm.Group(name=name)
            db.add(group)
            existing[name] = group
    return existing


def _role_objects(db, role_specs):
    """Create or update the managed roles; return {name: orm.Role}."""
    roles = {}
    for spec in role_specs:
        # JupyterHub's own `user` and `admin` roles are never marked as the
        # authenticator's: a start-up reset would delete them (and with them
        # what every server's token may do)
        managed = spec["name"].startswith(MANAGED_ROLE_PREFIXES)
        roles[spec["name"]] = create_role(
            db, {**spec, "managed_by_auth": managed}, commit=False, reset_to_defaults=False
        )
    return roles


def _is_managed_role(role):
    return role.managed_by_auth and role.name.startswith(MANAGED_ROLE_PREFIXES)


async def apply_roster(app, authenticator, stop_servers=True):
    """Make the hub database of *app* match *authenticator*'s roster.

    ``authenticator.grant_for(login)`` decides: a
    :class:`~classroomhub.access.Grant`, or None for "not admitted".
    """
    grant_for = authenticator.grant_for
    log = authenticator.log
    tic = time.perf_counter()
    db = app.db
    report = SyncReport()
    users = {u.name: u for u in db.query(orm.User)}
    grants = {name: grant_for(name) for name in users}
    for login in authenticator.roster.people:
        if login not in grants:
            grants[login] = grant_for(login)

    wanted_roles = {}
    for grant in grants.values():
        if grant:
            for spec in grant.roles:
                wanted_roles.setdefault(spec["name"], spec)
    role_objs = _role_objects(db, wanted_roles.values())
    group_objs = _group_objects(
        db, sorted({g for grant in grants.values() if grant for g in grant.groups})
    )
    db.flush()

    to_stop = []
    for login, grant in grants.items():
        orm_user = users.get(login)
        if grant is None:
            if orm_user is not None and _revoke(db, orm_user):
                report.revoked.append(login)
                log.info("Roster: revoked all rights of %s", login)
            if orm_user is not None and stop_servers:
                to_stop.append(orm_user)
            continue
        if orm_user is None:
            orm_user = orm.User(name=login)
            db.add(orm_user)
            report.created.append(login)
        new_groups = [group_objs[g] for g in grant.groups]
        new_roles = [role_objs[n] for n in grant.role_names]
        changed = (
            bool(orm_user.admin) != grant.admin
            or {g.name for g in orm_user.groups} != set(grant.groups)
            or {r.name for r in orm_user.roles} != set(grant.role_names)
        )
        if changed:
            lost = (orm_user.admin and not grant.admin) or bool(
                {r.name for r in orm_user.roles} - set(grant.role_names)
            )
            if lost and _revoke_visits(db, orm_user):
                report.visits_revoked.append(login)
            orm_user.admin = grant.admin
            orm_user.groups = new_groups
            orm_user.roles = new_roles
            if login not in report.created:
                report.changed.append(login)
                log.info(
                    "Roster: %s is now %s in groups %s", login, grant.tier, ", ".join(grant.groups)
                )

    # roles of courses that left the roster
    for role in db.query(orm.Role):
        if _is_managed_role(role) and role.name not in wanted_roles:
            report.roles_deleted.append(role.name)
            db.delete(role)
    db.commit()
    for orm_user in to_stop:
        await _stop_servers(app, orm_user, report, log)
    report.seconds = time.perf_counter() - tic
    return report


def managed_role_specs(db, authenticator):
    """Every role the roster manages, with exactly the users who hold it.

    For JupyterHub's start-up (``load_managed_roles``): with
    ``reset_managed_roles_on_startup`` it makes each role's members exactly
    these, including JupyterHub's ``user`` and ``admin`` roles, whose
    members the roster decides too.
    """
    specs = {"user": {"name": "user", "users": []}, "admin": {"name": "admin", "users": []}}
    for role in authenticator.policy.all_roles(authenticator.roster):
        specs[role["name"]] = {**role, "users": []}
    for (name,) in db.query(orm.User.name).order_by(orm.User.name):
        grant = authenticator.grant_for(name)
        for role in grant.roles if grant else ():
            specs.setdefault(role["name"], {**role, "users": []})["users"].append(name)
    return list(specs.values())


async def stop_unadmitted_servers(app, authenticator, report):
    """Stop the servers of everyone the roster does not admit (left running
    by a hub that stopped before their removal)."""
    for orm_user in app.db.query(orm.User):
        if authenticator.grant_for(orm_user.name) is None:
            await _stop_servers(app, orm_user, report, authenticator.log)


def _revoke_visits(db, orm_user):
    """Delete the tokens *orm_user* was given by other users' servers
    (OAuth): a server trusts such a token for its cache's lifetime."""
    visits = [
        token
        for token in orm_user.api_tokens
        if token.oauth_client is not None
        and token.oauth_client.spawner is not None
        and token.oauth_client.spawner.user_id != orm_user.id
    ]
    for token in visits:
        db.delete(token)
    return bool(visits)


def _revoke(db, orm_user):
    """Strip everything from a user no longer on the roster."""
    changed = bool(orm_user.admin or orm_user.groups or orm_user.roles or orm_user.api_tokens)
    if not changed:
        return False
    orm_user.admin = False
    orm_user.groups = []
    orm_user.roles = []
    for token in list(orm_user.api_tokens):
        db.delete(token)
    # the login cookie names the cookie id: a new one ends every session
    orm_user.cookie_id = new_token()
    return True


async def _stop_servers(app, orm_user, report, log):
    if orm_user.id not in app.users:
        return  # not loaded, so nothing of theirs runs or starts
    user = app.users[orm_user]
    for name, spawner in list(user.spawners.items()):
        if spawner.pending:
            report.pending.append(f"{user.name}/{name}")
            continue
        if await stop_server(user, name, log, "removed from the roster"):
            report.stopped.append(f"{user.name}/{name}")
