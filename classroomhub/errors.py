"""The one error type a ``classroomhub`` command reports as one line.

Below everything else, so a module of any layer (the CLI's HTTP client,
``classroomhub.ops``' commands) can raise it without importing the CLI.
"""

from __future__ import annotations


class CommandError(Exception):
    """A failure the command reports as one line (``str(e)``) and exits with ``status``:
    2 for input or set-up the command cannot use (as argparse does), 1 otherwise."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status
