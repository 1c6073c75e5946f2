"""What a tier is, in one place.

A tier is a person's standing on the hub (``root``, ``admin``, ``power``,
``student``). The roster gives each person one; JupyterHub sees it as the
group ``tier-<tier>``; the authenticator turns it into scopes
(:data:`DEFAULT_TIER_SCOPES`), the spawner into limits and culling
(:data:`DEFAULT_TIER_SETTINGS`), and the classroom service into staff powers
(:data:`STAFF_TIERS`). Everything here is plain data: importing it costs
nothing, so the roster parser and the CLI use it too.
"""

from __future__ import annotations

#: Tiers, most privileged first.
TIERS = ("root", "admin", "power", "student")
#: The tier of a roster person without one, and of a hub user without a
#: tier group (created by hand or by another authenticator).
DEFAULT_TIER = "student"
#: Tiers with the classroom service's staff powers in every course.
STAFF_TIERS = ("root", "admin")

GROUP_PREFIX = "tier-"


def tier_group(tier):
    """The JupyterHub group of *tier*: ``tier-<tier>``."""
    return f"{GROUP_PREFIX}{tier}"


def tier_rank(tier):
    """Higher is more privileged."""
    return len(TIERS) - TIERS.index(tier)


def higher_tier(a, b):
    """The more privileged of two tiers; None stands for no tier."""
    if a is None:
        return b
    if b is None:
        return a
    return a if tier_rank(a) >= tier_rank(b) else b


def tier_of(group_names, default=DEFAULT_TIER):
    """The highest tier among a person's JupyterHub group names."""
    names = set(group_names)
    return next((tier for tier in TIERS if tier_group(tier) in names), default)


def unknown_tier(tier):
    """The error text for a tier name that is not one of :data:`TIERS`."""
    return f"unknown tier {tier!r} (expected one of {', '.join(TIERS)})"


#: Extra scopes per tier, on top of JupyterHub's ``user`` role (root holds
#: JupyterHub's built-in ``admin`` role instead). Overridden per key by
#: ``RosterAuthenticatorMixin.tier_scopes``.
DEFAULT_TIER_SCOPES = {
    "root": [],
    "admin": [
        "admin-ui",
        "list:users",
        "read:users",
        "read:groups",
        "list:groups",
        "read:roles",
        "list:services",
        "read:services",
        # servers of the tiers below, never of root or other admins
        *(f"{verb}:servers!group={tier_group(t)}" for verb in ("admin", "access") for t in ("power", "student")),
    ],
    "power": [],
    "student": [],
}

GiB = 1024**3

#: ClassroomSpawner trait values per tier. The spawner applies its owner's
#: entry before JupyterHub's ``group_overrides`` and the per-user
#: ``user_settings``; ``ClassroomSpawner.tier_settings`` overrides it per key.
DEFAULT_TIER_SETTINGS = {
    "root": {
        "mem_limit": 8 * GiB,
        "cpu_limit": 2.0,
        "idle_timeout": 8 * 3600,
        "max_age": 0,
        "kernel_cull_timeout": 0,
        "kernel_cull_connected": False,
        "named_server_limit": 5,
    },
    "admin": {
        "mem_limit": 4 * GiB,
        "cpu_limit": 2.0,
        "idle_timeout": 4 * 3600,
        "max_age": 24 * 3600,
        "kernel_cull_timeout": 4 * 3600,
        "kernel_cull_connected": False,
        "named_server_limit": 2,
    },
    "power": {
        "mem_limit": 4 * GiB,
        "cpu_limit": 2.0,
        "idle_timeout": 4 * 3600,
        "max_age": 7 * 24 * 3600,
        "kernel_cull_timeout": 4 * 3600,
        "kernel_cull_connected": False,
        "named_server_limit": 3,
    },
    "student": {
        "mem_limit": 1 * GiB,
        "cpu_limit": 1.0,
        "idle_timeout": 3600,
        "max_age": 8 * 3600,
        "kernel_cull_timeout": 1800,
        "kernel_cull_connected": True,
        "named_server_limit": 0,
    },
}
#: The spawner settings a tier sets.
TIER_SETTING_KEYS = tuple(DEFAULT_TIER_SETTINGS[DEFAULT_TIER])
