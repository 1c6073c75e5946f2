"""Commands for the people who run the hub: ``demo``, ``generate-config``, ``systemd-unit``."""

from __future__ import annotations

import os
import sys

from .client import CommandError


def write_file(path, text, mode=0o644, force=False):
    """Write *text* to *path* (``-``: standard output); an existing file only with *force*."""
    if path == "-":
        sys.stdout.write(text)
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise CommandError(f"{path} exists: pass --force to replace it") from None
    except OSError as e:
        raise CommandError(f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, mode)
        f.write(text)
    print(f"wrote {path}", file=sys.stderr)


def cmd_demo(args):
    from ..demo import run_demo

    return run_demo(args)


def cmd_generate_config(args):
    from ..ops.config import example_config_text

    write_file(args.output, example_config_text(), 0o644, args.force)
    return 0


def cmd_systemd_unit(args):
    from ..ops.systemd import render_environment, render_unit

    unit = render_unit(args.config, args.state_dir, args.env_file, args.name)
    write_file(args.output, unit, 0o644, args.force)
    if args.output != "-" and not os.path.exists(args.env_file):
        os.makedirs(os.path.dirname(args.env_file), mode=0o755, exist_ok=True)
        write_file(args.env_file, render_environment(args.name), 0o600)
        print(f"fill in the GitHub OAuth app's id and secret in {args.env_file}", file=sys.stderr)
    return 0


def register(sub, command):
    demo = command(
        sub,
        "demo",
        "run a local classroom hub with demo users",
        examples=["classroomhub demo", "sudo classroomhub demo --remove-users"],
    )
    demo.add_argument("--port", type=int, default=8000, help="the hub's port")
    demo.add_argument("--ip", default="127.0.0.1", help="the address the hub listens on")
    demo.add_argument("--state-dir", default="classroomhub-demo", help="database, roster, logs (and homes when not root)")
    demo.add_argument("--password", help="the shared demo password (default: random, printed)")
    demo.add_argument("--remove-users", action="store_true", help="delete the demo's system users and exit")
    demo.set_defaults(func=cmd_demo)

    config = command(
        sub,
        "generate-config",
        "write the example jupyterhub_config.py (complete, commented, fails safe)",
        examples=[
            "classroomhub generate-config -o /etc/classroomhub/jupyterhub_config.py",
            "classroomhub generate-config | less",
        ],
    )
    config.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write it; - is standard output")
    config.add_argument("--force", action="store_true", help="replace an existing file")
    config.set_defaults(func=cmd_generate_config)

    unit = command(
        sub,
        "systemd-unit",
        "write a systemd unit that runs the hub (and, beside it, a template of its environment file)",
        examples=[
            "classroomhub systemd-unit -o /etc/systemd/system/classroomhub.service",
            "classroomhub systemd-unit --config /etc/classroomhub/jupyterhub_config.py --state-dir /srv/jupyterhub",
        ],
    )
    unit.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write it; - is standard output")
    unit.add_argument("--force", action="store_true", help="replace an existing unit file")
    unit.add_argument(
        "--config", default="/etc/classroomhub/jupyterhub_config.py", help="the hub's config (generate-config)"
    )
    unit.add_argument("--state-dir", default="/srv/jupyterhub", help="the hub's working and state folder")
    unit.add_argument(
        "--env-file",
        default="/etc/classroomhub/classroomhub.env",
        help="secrets (GitHub OAuth app) and settings; a template is written (0600) if missing",
    )
    unit.add_argument("--name", default="classroomhub", help="the unit's name")
    unit.set_defaults(func=cmd_systemd_unit)
