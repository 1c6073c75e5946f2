"""Which system accounts the hub may run servers as and work in the homes of.

A roster login is mapped to the system account of the same name. Without a
check, a roster person called ``postgres``, ``daemon`` or ``root`` would get
a server running as that account, and deliveries, collections and imports
would run as it. One policy, used at ``classroomhub roster check``, at every
spawn (ClassroomSpawner) and whenever the classroom service works as
someone (:meth:`classroomhub.service.files.runas.Account.of`), refuses:

- ``root`` and every account below ``UID_MIN`` of ``/etc/login.defs``
  (the system's own accounts);
- existing accounts the hub did not create: the hub records the accounts it
  creates in the system group ``classroomhub-users`` (``useradd -G``). A
  group rather than a file in the hub's state: root alone can change it,
  the service (another process, maybe started later) sees it through
  ``getgrnam``, and it survives restarts and backups of either side. An
  operator adopts accounts made by other means with
  ``usermod -aG classroomhub-users LOGIN``;

unless ``allowed_system_accounts`` names the account. Logins without a
system account pass (the spawner creates them, into the group).
"""

from __future__ import annotations

import grp
import pwd

from traitlets import Bool, Integer, List, Unicode, default
from traitlets.config import LoggingConfigurable

#: the group of the accounts the hub created (or an operator adopted)
MANAGED_GROUP = "classroomhub-users"
LOGIN_DEFS = "/etc/login.defs"
#: useradd's own default when login.defs does not say
DEFAULT_UID_MIN = 1000


class AccountRefused(LookupError):
    """A login whose system account the hub must not use; the message says why."""


def uid_min(path=LOGIN_DEFS):
    """``UID_MIN`` of *path* (login.defs), else useradd's default."""
    try:
        with open(path) as f:
            for line in f:
                words = line.split("#", 1)[0].split()
                if len(words) == 2 and words[0] == "UID_MIN" and words[1].isdigit():
                    return int(words[1])
    except OSError:
        pass
    return DEFAULT_UID_MIN


class AccountPolicy(LoggingConfigurable):
    """The one check of a login's system account (see the module's docs)."""

    allowed_system_accounts = List(
        Unicode(),
        help="""System accounts the hub may use although the policy refuses
        them (root, accounts below UID_MIN, accounts the hub did not create).
        Set it where the check runs: ``c.AccountPolicy.allowed_system_accounts``
        in the hub's config (spawns) and the classroom service's (deliveries,
        collection: ``--AccountPolicy.allowed_system_accounts=…`` in the
        service's ``args``).""",
    ).tag(config=True)

    managed_group = Unicode(
        MANAGED_GROUP,
        help="""System group that records the accounts the hub created (ClassroomSpawner
        adds each account it creates); add existing accounts the hub may use to it.""",
    ).tag(config=True)

    refuse_unmanaged = Bool(
        True,
        help="""Refuse existing accounts at or above UID_MIN that are not in
        ``managed_group``. Turn off only where every regular account on the host
        belongs to the roster person of the same name (e.g. accounts from the
        same directory as the roster); root and accounts below UID_MIN stay refused.""",
    ).tag(config=True)

    login_defs = Unicode(LOGIN_DEFS, help="Where UID_MIN is read from.").tag(config=True)

    uid_min = Integer(
        help="Lowest uid of a regular account; default: UID_MIN of `login_defs`.",
    ).tag(config=True)

    @default("uid_min")
    def _default_uid_min(self):
        return uid_min(self.login_defs)

    def refusal(self, login):
        """Why *login*'s system account must not be used, or None if it may."""
        if login in self.allowed_system_accounts:
            return None
        try:
            entry = pwd.getpwnam(login)
        except KeyError:
            return None  # no account yet: the spawner creates it, into the group
        if entry.pw_uid == 0:
            return f"{login!r} is the system account of root (uid 0)"
        if entry.pw_uid < self.uid_min:
            return f"{login!r} is a system account (uid {entry.pw_uid}, below UID_MIN {self.uid_min})"
        if self.refuse_unmanaged and not self.is_managed(entry):
            return (
                f"{login!r} is an existing account the hub did not create "
                f"(not in the system group {self.managed_group!r})"
            )
        return None

    def is_managed(self, entry):
        try:
            group = grp.getgrnam(self.managed_group)
        except KeyError:
            return False
        return entry.pw_gid == group.gr_gid or entry.pw_name in group.gr_mem

    def check(self, login):
        """Raise :class:`AccountRefused` unless *login*'s account may be used."""
        why = self.refusal(login)
        if why:
            raise AccountRefused(f"{why}: refused (an administrator can list it in AccountPolicy.allowed_system_accounts)")
