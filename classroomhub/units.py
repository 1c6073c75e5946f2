"""Formatting shared by the spawner's messages, the hub API and the CLI."""

from __future__ import annotations


def human_bytes(n):
    """``1.0 GiB``, ``300 MiB``; ``unlimited`` for 0 or None."""
    if not n:
        return "unlimited"
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GiB"
    return f"{n / 1024**2:.0f} MiB"
