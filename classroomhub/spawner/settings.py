"""Per-tier defaults of ClassroomSpawner.

Each entry maps ClassroomSpawner trait names to values; the spawner applies
the entry of its owner's tier before JupyterHub's own ``group_overrides``
and the per-user ``user_settings``. A person with no tier (not from a roster)
gets the student entry.
"""

GiB = 1024**3

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

FALLBACK_TIER = "student"
