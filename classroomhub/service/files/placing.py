"""The worker's ``deliver`` and ``link`` jobs: released files placed in a home.

A person's own changes are never clobbered: a file they changed stays, and
the new version goes beside it (:func:`deliver_file`). Run inside the worker
as the home's owner: the standard library only.
"""

import os
import secrets
import stat

from .nofollow import DIR_FLAGS, Refused, copy_into, describe_error, kind_of, lstat_at, open_path, regular_sha256, split_relpath


def beside_name(name, version):
    """``hw1.ipynb`` -> ``hw1.release-3.ipynb``: the new version next to the person's."""
    stem, dot, suffix = name.rpartition(".")
    if not stem:  # no suffix, or a dot file such as .env
        return f"{name}.release-{version}"
    return f"{stem}.release-{version}{dot}{suffix}"


def stamp_of(st):
    """What identifies a file's state without reading it: size, inode, ctime.

    ctime cannot be set by the owner and changes with every write, chmod or
    rename, so an equal stamp means the file is as the service left it.
    """
    return [st.st_size, st.st_ino, st.st_ctime_ns]


def deliver_file(dir_fd, name, entry, version, restore_deleted):
    """Bring one file up to *entry*; return (status, detail, stamp).

    *entry* has the new ``sha256``, ``size``, ``mode``, the store ``object``
    to copy from, and ``previous``: what was delivered to this person last
    time (``sha256``, ``size``, and the ``stamp`` of the file as it was
    left) or None. Statuses: ``added``, ``unchanged``, ``updated`` (the
    person never touched it), ``kept`` (they changed it: theirs stays, the
    new version goes beside it when there is one), ``restored`` /
    ``left-deleted`` (they deleted it). *stamp* is that of the file now at
    *name* when it holds the new version, else None.
    """
    previous = entry.get("previous")
    st = lstat_at(dir_fd, name)
    if st is None:
        if previous and not restore_deleted:
            return "left-deleted", "deleted by its owner; not restored", None
        return ("restored" if previous else "added"), "", write_file(dir_fd, name, entry)
    if not stat.S_ISREG(st.st_mode):
        return "failed", f"is {kind_of(st.st_mode)} where a file was expected; left alone", None
    if st.st_nlink > 1:
        current = None  # a hard link: writing would change its other names too
    elif previous and previous.get("stamp") == stamp_of(st):
        current = previous["sha256"]  # untouched since delivery: no need to read it
    else:
        sizes = {entry["size"]} | ({previous["size"]} if previous else set())
        current = regular_sha256(dir_fd, name, st, sizes)
    if current == entry["sha256"]:
        return "unchanged", "", stamp_of(st)
    if previous and current == previous["sha256"]:
        return "updated", "", write_file(dir_fd, name, entry)
    if previous and previous["sha256"] == entry["sha256"]:
        return "kept", "changed by its owner; this release did not change it", None
    why = "has other hard links" if st.st_nlink > 1 else "changed by its owner"
    beside = place_beside(dir_fd, name, entry, version)
    if beside is None:
        return "kept", f"{why}; no free name for the new version beside it", None
    return "kept", f"{why}; the new version is {beside}", None


def write_file(dir_fd, name, entry):
    """Write *entry* at *name*; return the stamp of the written file."""
    copy_into(dir_fd, name, entry["object"], entry["mode"])
    return stamp_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))


def place_beside(dir_fd, name, entry, version):
    """Write the new version next to the person's file, never over another of theirs.

    ``hw1.release-3.ipynb``; if that name is taken by something else,
    ``hw1.release-3-1.ipynb`` and so on. Returns the name used, or None.
    """
    for attempt in range(10):
        beside = beside_name(name, version if attempt == 0 else f"{version}-{attempt}")
        st = lstat_at(dir_fd, beside)
        if st is None:
            copy_into(dir_fd, beside, entry["object"], entry["mode"])
            return beside
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            if regular_sha256(dir_fd, beside, st, {entry["size"]}) == entry["sha256"]:
                return beside  # delivered there before
    return None


def deliver(job):
    """Deliver every file of *job*; one result per file, never an exception."""
    results = []
    home_fd = os.open(job["home"], DIR_FLAGS)
    try:
        folders = {}
        base = job["base"]  # e.g. ["data101", "week1"]
        for entry in job["files"]:
            path = entry["path"]
            try:
                parts = split_relpath(path)
                folder = tuple(parts[:-1])
                if folder not in folders:
                    try:
                        folders[folder] = open_path(home_fd, [*split_relpath("/".join(base)), *folder], create=True)
                    except (Refused, OSError) as e:
                        folders[folder] = e
                target = folders[folder]
                if isinstance(target, BaseException):
                    raise target
                status, detail, stamp = deliver_file(target, parts[-1], entry, job["version"], job["restore_deleted"])
            except Refused as e:
                status, detail, stamp = "failed", str(e), None
            except OSError as e:
                status, detail, stamp = "failed", describe_error(e), None
            result = {"path": path, "status": status, "detail": detail}
            if stamp:
                result["stamp"] = stamp
            results.append(result)
        for fd in folders.values():
            if isinstance(fd, int):
                os.close(fd)
    finally:
        os.close(home_fd)
    return results


def link_shared(job):
    """Point ``~/<course>/<material>`` at a read-only shared tree (a symlink the person owns).

    Replaces an earlier link atomically; anything else at that name is left alone.
    """
    *parents, name = split_relpath("/".join(job["base"]))
    home_fd = os.open(job["home"], DIR_FLAGS)
    try:
        dir_fd = open_path(home_fd, parents, create=True)
        try:
            st = lstat_at(dir_fd, name)
            if st is not None and not stat.S_ISLNK(st.st_mode):
                return [{"path": "", "status": "failed", "detail": f"~/{'/'.join(job['base'])} is {kind_of(st.st_mode)}; left alone"}]
            if st is not None and os.readlink(name, dir_fd=dir_fd) == job["target"]:
                return [{"path": "", "status": "unchanged", "detail": ""}]
            tmp = f".{name}.classroomhub-{secrets.token_hex(4)}"
            os.symlink(job["target"], tmp, dir_fd=dir_fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return [{"path": "", "status": "updated" if st else "added", "detail": ""}]
        finally:
            os.close(dir_fd)
    except Refused as e:
        return [{"path": "", "status": "failed", "detail": str(e)}]
    except OSError as e:
        return [{"path": "", "status": "failed", "detail": describe_error(e)}]
    finally:
        os.close(home_fd)
