"""``classroomhub roster check|sync``."""

from __future__ import annotations

import sys

from ..accounts import AccountPolicy
from ..roster import RosterError, account_problems, load_roster
from .client import HubClient, add_hub_arguments


def cmd_roster_check(args):
    try:
        roster = load_roster(args.file)
    except RosterError as e:
        print(e, file=sys.stderr)
        errors = sum(1 for p in e.problems if p.fatal)
        print(f"{args.file}: {errors} error(s); roster not usable", file=sys.stderr)
        return 1
    print(roster.summary())
    refused = account_problems(roster, AccountPolicy(allowed_system_accounts=args.allow_system_account))
    for problem in refused:
        print(problem, file=sys.stderr)
    if args.verbose:
        from ..access import AccessPolicy  # here: it imports JupyterHub, which `--help` need not wait for

        policy = AccessPolicy()
        for login in sorted(roster.people):
            grant = policy.grant(roster, login)
            if grant is None:
                continue
            roles = ", ".join(grant.role_names)
            print(f"  {login}: {grant.tier}; groups {', '.join(grant.groups)}; roles {roles}")
    if refused:
        print(f"{args.file}: {len(refused)} login(s) name accounts the hub must not use on this host", file=sys.stderr)
        return 1
    return 0


def cmd_roster_sync(args):
    status = HubClient.from_args(args).request("POST", "/hub/api/classroom/roster", accept=(422,))
    if status.get("error"):
        print(status["error"], file=sys.stderr)
        print("the hub keeps its last good roster", file=sys.stderr)
    sync = status.get("last_sync") or {}
    print(
        f"{status['path']}: {status['people']} people, {len(status['courses'])} courses in force; "
        f"{len(sync.get('created', []))} created, {len(sync.get('changed', []))} changed, "
        f"{len(sync.get('revoked', []))} revoked, {len(sync.get('stopped', []))} servers stopped"
    )
    return 1 if status.get("error") else 0


def register(sub, command):
    roster = command(sub, "roster", "check or apply a roster")
    roster_sub = roster.add_subparsers(dest="roster_command", required=True, metavar="{check,sync}")
    check = command(
        roster_sub,
        "check",
        "validate a roster file and summarize it",
        examples=["classroomhub roster check /etc/classroomhub/roster.yaml", "classroomhub roster check -v roster.yaml"],
    )
    check.add_argument("file", help="the roster (YAML or a userlist)")
    check.add_argument("-v", "--verbose", action="store_true", help="show each person's groups and roles")
    check.add_argument(
        "--allow-system-account",
        action="append",
        default=[],
        metavar="LOGIN",
        help="an account the hub may use although it is a system account or was not made by the hub"
        " (as AccountPolicy.allowed_system_accounts); repeatable",
    )
    check.set_defaults(func=cmd_roster_check)

    sync = command(
        roster_sub,
        "sync",
        "make a running hub apply its roster now",
        examples=["classroomhub roster sync --hub-url https://hub.example.edu"],
    )
    add_hub_arguments(sync, "API token with admin:users")
    sync.set_defaults(func=cmd_roster_sync)
