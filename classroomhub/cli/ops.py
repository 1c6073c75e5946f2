"""Commands for the people who run the hub: ``demo``, ``generate-config``, ``systemd-unit``, ``term-end``."""

from __future__ import annotations

import datetime
import os
import sys

from ..errors import CommandError
from ..roster import load_roster


def write_file(path, text, mode=0o644, force=False):
    """Write *text* to *path* (``-``: standard output); an existing file only with *force*."""
    if path == "-":
        sys.stdout.write(text)
        return
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise CommandError(f"{path} exists: pass --force to replace it") from None
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

    try:
        unit = render_unit(args.config, args.state_dir, args.env_file, args.name)
    except SystemExit as e:  # the config's one-line refusals (a path missing, not absolute)
        raise CommandError(str(e.code).removeprefix("classroomhub: "), 2) from None
    write_file(args.output, unit, 0o644, args.force)
    if args.output != "-":
        from ..ops.config import private_dir

        private_dir(args.state_dir)  # systemd enters it before the config could make it
        if not os.path.exists(args.env_file):
            write_file(args.env_file, render_environment(args.name), 0o600)
        print(f"fill in the GitHub OAuth app's id and secret in {args.env_file}", file=sys.stderr)
    return 0


def cmd_term_end(args):
    from ..databases import private_dir
    from ..ops.term import archive_home, leaving_accounts, remove_account

    keep = list(args.keep)
    if args.keep_roster:
        keep += list(load_roster(args.keep_roster).people)
    leaving = leaving_accounts(keep=keep, match=args.match)
    if not leaving:
        print("no accounts to remove (none the hub created match, or all are kept)")
        return 0
    if args.yes and os.geteuid() != 0:
        raise CommandError("archiving homes as their owners and removing accounts needs root", 2)
    if args.yes and not args.archive and not args.no_archive:
        raise CommandError("say where the homes go (--archive DIR), or --no-archive to delete them unarchived", 2)
    what = "archived to " + args.archive if args.archive else "not archived"
    print(f"{len(leaving)} accounts the hub created; their homes {what}, then the accounts removed:")
    for account in leaving:
        note = f"  ({account.home_problem}: not archived, left in place)" if account.home_problem else ""
        print(f"  {account.login:<24} uid {account.uid:<7} {account.home}{note}")
    if not args.yes:
        print("dry run: nothing changed; run again with --yes to do it")
        return 0
    if args.archive:
        private_dir(args.archive)
    stamp = datetime.date.today().isoformat()
    failed = 0
    for account in leaving:
        try:
            if args.archive and not account.home_problem:
                path = archive_home(account, args.archive, stamp)
                print(f"{account.login}: archived to {path}")
            remove_account(account)
            print(f"{account.login}: removed")
        except OSError as e:
            failed += 1
            print(f"{account.login}: kept: {e}", file=sys.stderr)
    return 1 if failed else 0


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

    term = command(
        sub,
        "term-end",
        "archive the homes of the accounts the hub created and remove the accounts (dry run unless --yes)",
        description="End of term: the system accounts the hub created (members of classroomhub-users; never root,"
        " system accounts or accounts made by other means), minus those kept, have their homes archived by tar"
        " running as each owner, then are removed with their homes. Without --yes it only shows what it would do.",
        examples=[
            "classroomhub term-end --keep-roster /etc/classroomhub/roster-next-term.yaml",
            "sudo classroomhub term-end --keep-roster next.yaml --archive /var/archive/ws2026 --yes",
            "sudo classroomhub term-end --match 'ws26-*' --archive /var/archive/ws2026 --yes",
        ],
    )
    term.add_argument("--archive", metavar="DIR", help="write <login>-<date>.tar.gz of each home here (made 0700)")
    term.add_argument("--no-archive", action="store_true", help="remove homes without archiving them")
    term.add_argument("--keep-roster", metavar="FILE", help="keep everyone on this roster (e.g. the next term's)")
    term.add_argument("--keep", action="append", default=[], metavar="LOGIN", help="keep this account; repeatable")
    term.add_argument("--match", default="*", metavar="GLOB", help="only logins matching this pattern")
    term.add_argument("--yes", action="store_true", help="do it (default: a dry run that changes nothing)")
    term.set_defaults(func=cmd_term_end)
