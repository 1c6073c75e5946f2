"""Choosing the enforcement backend this host offers (``enforcement`` trait)."""

from __future__ import annotations

import logging

from .cgroups import CgroupV1, CgroupV2
from .enforcement import Enforcement, EnforcementUnavailable
from .watchdog import PsutilWatchdog

#: what ``auto`` tries, best first
BACKENDS = {
    "cgroup-v2": CgroupV2.from_host,
    "cgroup-v1": CgroupV1.from_host,
    "psutil": lambda parent, log: PsutilWatchdog(log=log),
    "none": lambda parent, log: Enforcement(log=log),
}


def detect(preference="auto", cgroup_parent="classroomhub", log=None):
    """The best backend available, given *preference*.

    *preference* is ``auto`` (cgroup v2, then v1, then psutil), or one of
    ``cgroup-v2``, ``cgroup-v1``, ``psutil``, ``none`` to insist on it.
    Returns ``(backend, reasons)``: *reasons* says why better ones were skipped.
    Raises EnforcementUnavailable only for an explicit *preference*.
    """
    log = log or logging.getLogger(__name__)
    order = list(BACKENDS) if preference == "auto" else [preference]
    reasons = []
    for name in order:
        try:
            return BACKENDS[name](cgroup_parent, log=log), reasons
        except EnforcementUnavailable as e:
            reasons.append(f"{name}: {e}")
    raise EnforcementUnavailable("; ".join(reasons))
