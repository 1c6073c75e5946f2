"""The end of a term: archive the homes of the accounts the hub created, then remove them.

Only accounts the hub made (members of AccountPolicy's ``managed_group``,
``classroomhub-users``) that the policy would let a server run as: never
root, an account below UID_MIN, or one made by other means. A home is
archived by ``tar`` running *as its owner* (their permissions, links stored
as links, never followed, one file system), into a file only root can read;
an account is removed (``userdel --remove``, after its processes are killed)
only once its archive is complete.
"""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
import stat
import subprocess
import time
from dataclasses import dataclass

from ..accounts import AccountPolicy


@dataclass
class Leaving:
    login: str
    uid: int
    gid: int
    home: str
    #: why the home is not archived (not a folder of theirs); empty if it is
    home_problem: str = ""


def leaving_accounts(policy=None, keep=(), match="*"):
    """Accounts the hub created that are not in *keep*, whose login matches the glob *match*."""
    policy = policy or AccountPolicy()
    try:
        group = grp.getgrnam(policy.managed_group)
    except KeyError:
        return []
    keep = {login.lower() for login in keep}
    members = set(group.gr_mem) | {e.pw_name for e in pwd.getpwall() if e.pw_gid == group.gr_gid}
    leaving = []
    for login in sorted(members):
        if login.lower() in keep or not fnmatch.fnmatchcase(login, match):
            continue
        try:
            entry = pwd.getpwnam(login)
        except KeyError:
            continue
        if policy.refusal(login) is not None:  # root, a system account: never
            continue
        leaving.append(Leaving(login, entry.pw_uid, entry.pw_gid, entry.pw_dir, _home_problem(entry)))
    return leaving


def _home_problem(entry):
    try:
        st = os.lstat(entry.pw_dir)
    except FileNotFoundError:
        return "no home folder"
    if not stat.S_ISDIR(st.st_mode):
        return "the home is not a folder"
    if st.st_uid != entry.pw_uid:
        return f"the home {entry.pw_dir} belongs to uid {st.st_uid}, not to them"
    return ""


def archive_home(account, folder, stamp):
    """``<folder>/<login>-<stamp>.tar.gz`` of the home, made by tar as the account; its path.

    The archive file is opened by root (0600, O_EXCL, no-follow) and handed to
    tar as its standard output: the owner cannot redirect it."""
    path = os.path.join(folder, f"{account.login}-{stamp}.tar.gz")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        result = subprocess.run(
            ["tar", "--create", "--gzip", "--file=-", "--one-file-system", "--sparse", "--directory", account.home, "."],
            stdout=fd,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            user=account.uid,
            group=account.gid,
            extra_groups=[],
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            text=True,
        )
    finally:
        os.close(fd)
    # 1: some file changed while read (it is in the archive); 2: fatal, or files left out
    if result.returncode not in (0, 1):
        os.unlink(path)
        raise OSError(f"tar of {account.home} failed: {result.stderr.strip().splitlines()[-1:] or result.returncode}")
    return path


def remove_account(account, wait=10):
    """Kill the account's processes, then ``userdel --remove`` (home and mail spool).

    A home that is not a folder of theirs is left where it is (``userdel``
    would delete whatever the account's entry names)."""
    subprocess.run(["pkill", "--signal", "KILL", "--uid", str(account.uid)], check=False)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "--uid", str(account.uid)], capture_output=True).returncode != 0:
            break
        time.sleep(0.1)
    remove = [] if account.home_problem else ["--remove"]
    result = subprocess.run(["userdel", *remove, account.login], capture_output=True, text=True)
    # 12: the home could not be removed entirely (userdel says which)
    if result.returncode not in (0, 12):
        raise OSError(f"userdel {account.login} failed: {result.stderr.strip()}")
