"""The ``classroomhub`` command: rosters, courses and assignments, usage, and running the hub.

Each module of this package adds its commands with ``register(subparsers, command)``;
:data:`COMMAND_MODULES` lists them in the order ``--help`` shows them. A new
command group is a module with a ``register`` function and one entry there.

A command reports a failure by raising: :func:`main` prints what
:func:`one_line` makes of it as ``classroomhub <command>: message`` and
exits with its status, so no command repeats that.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import textwrap

from .._version import __version__
from ..errors import CommandError
from ..roster import RosterError

#: modules (relative to this package, or absolute) whose ``register(subparsers, command)`` adds commands
COMMAND_MODULES = [
    ".roster",
    ".usage",
    ".course",
    ".assignments",
    ".ops",
    "classroomhub.ops.commands",  # backup, restore, upgrade-db
    ".env",
    ".kubernetes",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has one worth showing) and keeps the examples' lines."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and "(default" not in text
            and default not in (None, False, [], argparse.SUPPRESS)
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


def command(subparsers, name, help, examples=(), description=None):
    """A sub-command whose ``--help`` shows defaults and *examples*."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    parser = subparsers.add_parser(
        name,
        help=help,
        description=textwrap.fill(description or help[:1].upper() + help[1:] + "."),
        epilog=epilog,
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(prog=parser.prog)  # "classroomhub roster sync", for its messages
    return parser


def build_parser():
    parser = argparse.ArgumentParser(
        prog="classroomhub",
        description="A classroom JupyterHub: rosters, courses and assignments, usage, and running the hub.",
        epilog="`classroomhub COMMAND --help` shows a command's options, defaults and examples.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name, __name__).register(sub, command)
    return parser


def one_line(error):
    """What :func:`main` prints of an error a command raised, and the exit status."""
    if isinstance(error, RosterError):  # a roster named on the command line
        return error.first_problem(), 2
    if isinstance(error, OSError) and error.filename and error.strerror:  # a file it reads or writes
        return f"{error.filename}: {error.strerror}", 1
    return str(error), getattr(error, "status", 1)


def main(argv=None):
    """Run one command; its exit status (130 after Ctrl-C, as a shell expects)."""
    args = build_parser().parse_args(argv)
    name = getattr(args, "prog", "classroomhub")  # set by command()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:  # `classroomhub usage | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (CommandError, RosterError, OSError) as e:
        message, status = one_line(e)
        print(f"{name}: {message}", file=sys.stderr)
        return status
