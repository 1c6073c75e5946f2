"""The system user a server runs as: created if missing
(``create_system_users``), and checked against the account policy."""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import subprocess

from traitlets import Bool, Integer, Unicode
from traitlets.config import LoggingConfigurable

from ..accounts import MANAGED_GROUP, AccountPolicy, AccountRefused, uid_min
from .refusal import SpawnRefused

DEFAULT_COMMENT = "classroomhub user"


def ensure_system_user(
    login, home_mode=0o700, skeleton="/etc/skel", shared_data="", comment=DEFAULT_COMMENT, log=None, group=MANAGED_GROUP
):
    """Return ``(pwd entry, created)`` for *login*, creating the user if missing.

    A created user's home gets *home_mode* (``useradd -m`` leaves it 0755:
    readable by every other student) and, with *shared_data*, a ``data``
    link to that read-only folder. Existing accounts are left as they are,
    but for one thing: a created user joins *group* (the record of accounts
    the hub made, see :mod:`classroomhub.accounts`), and an account with
    *comment*, made by a version before the group, joins it now.
    """
    log = log or logging.getLogger(__name__)
    try:
        entry = pwd.getpwnam(login)
    except KeyError:
        pass
    else:
        # its owner cannot set the comment (chfn keeps the full name unless login.defs allows it)
        if entry.pw_gecos == comment and entry.pw_uid >= uid_min() and login not in _members(group):
            _make_group(group)
            _run(["usermod", "--append", "--groups", group, login], f"add {login!r} to {group!r}")
            log.info("System user %s, made by an earlier classroomhub, joined %s", login, group)
        return entry, False
    _make_group(group)
    cmd = ["useradd", "--create-home", "--shell", "/bin/bash", "--comment", comment, "--groups", group]
    if skeleton:
        cmd += ["--skel", skeleton]
    _run([*cmd, login], f"create system user {login!r}")
    entry = pwd.getpwnam(login)
    # The home is new and the user has never run anything: still, work through
    # an fd opened without following links, never through the path again.
    fd = os.open(entry.pw_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, home_mode)
        if shared_data:
            os.symlink(shared_data, "data", dir_fd=fd)
            os.chown("data", entry.pw_uid, entry.pw_gid, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)
    log.info("Created system user %s with home %s (mode %o)", login, entry.pw_dir, home_mode)
    return entry, True


class SystemUsers(LoggingConfigurable):
    """ClassroomSpawner's system accounts (a mixin of it)."""

    create_system_users = Bool(
        False,
        help="Create a missing system user at first spawn (useradd), with a private home.",
    ).tag(config=True)

    home_mode = Integer(
        0o700,
        help="Mode of the home folder of users this spawner creates.",
    ).tag(config=True)

    skeleton_dir = Unicode(
        "/etc/skel",
        help="Skeleton copied into the homes of created users (useradd -k).",
    ).tag(config=True)

    shared_data_dir = Unicode(
        "",
        help="""A read-only data folder (e.g. /srv/data) linked as ``~/data`` into
        the home of each created user; empty for none.""",
    ).tag(config=True)

    async def ensure_account(self):
        """Create the owner's system user if configured to; refuse (403) a
        server as root, a system account or an account the policy refuses."""
        accounts = AccountPolicy(parent=self)
        if self.create_system_users:
            await asyncio.to_thread(
                ensure_system_user,
                self.user.name,
                home_mode=self.home_mode,
                skeleton=self.skeleton_dir,
                shared_data=self.shared_data_dir,
                log=self.log,
                group=accounts.managed_group,
            )
        try:
            accounts.check(self.user.name)
        except AccountRefused as e:
            self.log.warning("ClassroomSpawner: %s", e)
            raise SpawnRefused(403, f"No server for {self.user.name}: {e}") from None


def _run(cmd, what):
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"could not {what}: {result.stderr.strip()}")


def _make_group(group):
    # exit status 9: the group exists already (maybe made meanwhile)
    made = subprocess.run(["groupadd", "--system", group], capture_output=True, text=True)
    if made.returncode not in (0, 9):
        raise RuntimeError(f"could not create system group {group!r}: {made.stderr.strip()}")


def _members(group):
    try:
        return grp.getgrnam(group).gr_mem
    except KeyError:
        return []
