"""Who sees which environment, and what a person's server is given.

An environment's ``audience`` lists ``everyone``, ``course:<id>`` (the
course's instructors, TAs and students: the JupyterHub groups
``course-<id>-instructors`` / ``-tas`` / ``-students``) and ``tier:<tier>``
(people of that tier or a more privileged one). A person's server gets the
kernelspec folder of every environment they may use on its ``JUPYTER_PATH``
and nothing of the others, so jupyter_server neither lists nor starts
another course's kernel.

This is about what is offered, not a secret: the environments' files are
readable by every user (they hold public packages), so a person who writes
their own kernelspec naming another environment's interpreter can run it.
"""

from __future__ import annotations

import os

from ..access import course_group
from ..roster import COURSE_ROLE_KEYS
from ..tiers import tier_of, tier_rank
from .spec import EVERYONE

#: how specific an audience entry is: a course's default environment wins over a tier's over everyone's
_SPECIFICITY = {"course": 2, "tier": 1, EVERYONE: 0}


def _match(entry, groups, tier):
    """The specificity of *entry* if it admits someone with *groups* and *tier*, else None."""
    if entry == EVERYONE:
        return _SPECIFICITY[EVERYONE]
    kind, _, value = entry.partition(":")
    if kind == "tier" and tier_rank(tier) >= tier_rank(value):
        return _SPECIFICITY["tier"]
    if kind == "course" and any(course_group(value, role) in groups for role in COURSE_ROLE_KEYS.values()):
        return _SPECIFICITY["course"]
    return None


def may_use(spec, groups):
    """Whether a person with JupyterHub *groups* (names) may use *spec*'s kernel."""
    groups = set(groups)
    tier = tier_of(groups)
    return any(_match(entry, groups, tier) is not None for entry in spec.audience)


def usable_environments(manager, groups):
    """The specs of the environments with a version in force that *groups* may use, by name."""
    layout = manager.layout
    found = []
    for name in layout.names():
        if layout.current(name) is None:
            continue
        spec = manager.spec(name)
        if may_use(spec, groups):
            found.append(spec)
    return found


def kernel_dirs(manager, groups):
    """``JUPYTER_PATH`` entries holding the kernelspecs *groups* may use
    (through ``current``: kernels started after an update get the new version)."""
    return [manager.layout.kernels_dir(spec.name) for spec in usable_environments(manager, groups)]


def choose_default(specs, groups):
    """Among *specs* usable by *groups*, the ``default`` one: the most specific
    audience wins (course, then tier, then everyone), then the name. None if none."""
    groups = set(groups)
    tier = tier_of(groups)
    ranked = []
    for spec in specs:
        matches = [m for m in (_match(e, groups, tier) for e in spec.audience) if m is not None]
        if spec.default and matches:
            ranked.append((-max(matches), spec.name, spec))
    return min(ranked)[2] if ranked else None


def default_environment(manager, groups):
    """The default environment (with a version in force) for *groups*, or None."""
    return choose_default(usable_environments(manager, groups), groups)


def server_environment(manager, groups, env):
    """``JUPYTER_PATH`` and ``PATH`` for a server of a person with *groups*,
    given the server's environment variables *env* (not changed).

    PATH starts with the default environment's versioned ``bin`` folder
    (resolved now, so a running server keeps its version after an update
    and the version stays in use, see :mod:`.inuse`)."""
    result = {}
    dirs = kernel_dirs(manager, groups)
    if dirs:
        rest = [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p]
        result["JUPYTER_PATH"] = os.pathsep.join(dirs + rest)
    spec = default_environment(manager, groups)
    if spec is not None:
        version = manager.layout.current(spec.name)
        bin_dir = os.path.join(manager.layout.version_dir(spec.name, version), "bin")
        result["PATH"] = os.pathsep.join([bin_dir] + [p for p in env.get("PATH", "").split(os.pathsep) if p])
    return result
