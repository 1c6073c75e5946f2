"""Where environments live on disk.

::

    <root>/                       root = <data_dir>/environments
      .cache/uv/                  the installer's cache (root only; same file
                                  system as the versions, so files are hard links)
      <name>/
        environment.json          the declaration (packages, audience, ...)
        current -> 3              the version in force (a relative symlink)
        3/                        one immutable version: a virtual environment
          bin/python              ... whose kernel runs this interpreter
          jupyter/kernels/env-<name>/kernel.json
          classroomhub-version.json   written last: the version is complete
        logs/3.log                every build's log, failed ones too
        .lock                     held while a build or removal runs
"""

from __future__ import annotations

import json
import os

from .spec import check_name

#: written last into a version folder: a version without it is unfinished
MANIFEST = "classroomhub-version.json"
KERNELS = "jupyter"


def write_json_atomic(path, data, mode=0o644):
    """Write *data* as JSON to *path* via a temporary file and a rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


class Layout:
    """Paths of the environments under *root*."""

    def __init__(self, root):
        self.root = os.path.abspath(root)

    @property
    def cache_dir(self):
        return os.path.join(self.root, ".cache", "uv")

    def env_dir(self, name):
        return os.path.join(self.root, check_name(name))

    def declaration(self, name):
        return os.path.join(self.env_dir(name), "environment.json")

    def current_link(self, name):
        return os.path.join(self.env_dir(name), "current")

    def version_dir(self, name, version):
        return os.path.join(self.env_dir(name), str(int(version)))

    def manifest(self, name, version):
        return os.path.join(self.version_dir(name, version), MANIFEST)

    def log_file(self, name, version):
        return os.path.join(self.env_dir(name), "logs", f"{int(version)}.log")

    def requirements_file(self, name, version):
        """The package list *version* was built from (ipykernel added)."""
        return os.path.join(self.env_dir(name), "logs", f"{int(version)}.requirements.txt")

    def lock_file(self, name):
        return os.path.join(self.env_dir(name), ".lock")

    def python(self, name, version):
        return os.path.join(self.version_dir(name, version), "bin", "python")

    def kernels_dir(self, name, version=None):
        """A ``JUPYTER_PATH`` entry holding the environment's kernelspec:
        through ``current`` when *version* is None (new kernels follow a switch)."""
        base = self.current_link(name) if version is None else self.version_dir(name, version)
        return os.path.join(base, KERNELS)

    def names(self):
        """Names of the declared environments."""
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in entries if not n.startswith(".") and os.path.isfile(os.path.join(self.root, n, "environment.json")))

    def versions(self, name):
        """Complete versions of *name* (with a manifest), oldest first."""
        try:
            entries = os.listdir(self.env_dir(name))
        except FileNotFoundError:
            return []
        found = [int(e) for e in entries if e.isdigit() and os.path.isfile(self.manifest(name, e))]
        return sorted(found)

    def next_version(self, name):
        """One more than any version folder or log, complete or not (numbers are never reused)."""
        numbers = [0]
        for folder in (self.env_dir(name), os.path.join(self.env_dir(name), "logs")):
            try:
                for entry in os.listdir(folder):
                    stem = entry.split(".")[0]
                    if stem.isdigit():
                        numbers.append(int(stem))
            except FileNotFoundError:
                pass
        return max(numbers) + 1

    def current(self, name):
        """The version in force, or None."""
        try:
            target = os.readlink(self.current_link(name))
        except (FileNotFoundError, OSError):
            return None
        return int(target) if target.isdigit() else None

    def switch(self, name, version):
        """Point ``current`` at *version* atomically (a new link renamed over the old)."""
        link = self.current_link(name)
        tmp = f"{link}.tmp-{os.getpid()}"
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(str(int(version)), tmp)
        os.replace(tmp, link)
