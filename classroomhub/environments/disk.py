"""Disk space that folders really take, with hard links counted once."""

from __future__ import annotations

import os


def disk_bytes(*paths, seen=None):
    """Bytes allocated to the files under *paths*, each inode counted once
    (a file hard-linked from an installer's cache into three environments
    takes its space once). Pass the same *seen* set to several calls to
    count only what a later call adds."""
    seen = set() if seen is None else seen
    total = 0
    for top in paths:
        for folder, dirs, files in os.walk(top):
            for entry in [folder] + [os.path.join(folder, f) for f in files]:
                try:
                    st = os.lstat(entry)
                except FileNotFoundError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key not in seen:
                    seen.add(key)
                    total += st.st_blocks * 512
    return total
