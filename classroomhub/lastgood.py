"""The last roster the hub applied, kept in its state folder.

A roster file broken (or deleted) while the hub was down must neither keep
the hub down nor change who may do what: every roster the hub applies is
copied to a private file (mode 0600), and a hub whose roster file cannot be
used at start runs on that copy until the file is fixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from .identity import write_private_json
from .roster import RosterError, parse_roster


class LastGoodRoster:
    """The copy at *path* of the last roster applied (JSON: the roster file's
    path and text, its digest and when it was saved)."""

    def __init__(self, path):
        self.path = os.path.abspath(path)
        self._saved_digest = None

    def load(self):
        """``(roster, saved_at)`` from the copy, or None if there is no usable copy."""
        try:
            with open(self.path) as f:
                data = json.load(f)
            text = data["text"]
            if hashlib.sha256(text.encode("utf-8")).hexdigest() != data["digest"]:
                return None  # edited or damaged: not what was applied
            roster = parse_roster(text, data["path"])
        except (OSError, ValueError, KeyError, TypeError, RosterError):
            return None
        self._saved_digest = roster.digest
        return roster, data.get("saved", "")

    def save(self, roster):
        """Keep *roster* (just applied) as the last good one.

        Its file is read again and copied only if it still holds exactly
        that roster (same digest): an edit in between is saved by the sync
        that applies it.
        """
        if roster.digest == self._saved_digest:
            return False
        try:
            with open(roster.path, "rb") as f:
                text = f.read().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return False
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != roster.digest:
            return False
        write_private_json(
            self.path,
            {
                "path": roster.path,
                "digest": roster.digest,
                "saved": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                "text": text,
            },
        )
        self._saved_digest = roster.digest
        return True
