"""The ``classroomhub`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from .roster import RosterError, load_roster


def cmd_roster_check(args):
    try:
        roster = load_roster(args.file)
    except RosterError as e:
        print(e, file=sys.stderr)
        errors = sum(1 for p in e.problems if p.fatal)
        print(f"{args.file}: {errors} error(s); roster not usable", file=sys.stderr)
        return 1
    print(roster.summary())
    if args.verbose:
        from .access import AccessPolicy

        policy = AccessPolicy()
        for login in sorted(roster.people):
            grant = policy.grant(roster, login)
            if grant is None:
                continue
            roles = ", ".join(grant.role_names)
            print(f"  {login}: {grant.tier}; groups {', '.join(grant.groups)}; roles {roles}")
    return 0


def _hub_request(args, method, path):
    token = args.token or os.environ.get("JUPYTERHUB_API_TOKEN")
    if not token:
        print("no API token: pass --token or set JUPYTERHUB_API_TOKEN", file=sys.stderr)
        return None, 2
    url = args.hub_url.rstrip("/") + path
    req = urllib.request.Request(
        url,
        method=method,
        headers={"Authorization": f"token {token}"},
        data=b"" if method == "POST" else None,
    )
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            return json.load(resp), 0
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")
        try:
            return json.loads(body), 1
        except ValueError:
            print(f"{url}: HTTP {e.code}: {body[:500]}", file=sys.stderr)
            return None, 1
    except (urllib.error.URLError, OSError) as e:
        print(f"{url}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return None, 1


def cmd_roster_sync(args):
    status, rc = _hub_request(args, "POST", "/hub/api/classroom/roster")
    if status is None:
        return rc
    if "people" not in status:
        print(status.get("message", status), file=sys.stderr)
        return rc or 1
    if status.get("error"):
        print(status["error"], file=sys.stderr)
        print("the hub keeps its last good roster", file=sys.stderr)
    sync = status.get("last_sync") or {}
    print(
        f"{status['path']}: {status['people']} people, {len(status['courses'])} courses in force; "
        f"{len(sync.get('created', []))} created, {len(sync.get('changed', []))} changed, "
        f"{len(sync.get('revoked', []))} revoked, {len(sync.get('stopped', []))} servers stopped"
    )
    return rc


def cmd_demo(args):
    from .demo import run_demo

    return run_demo(args)


def build_parser():
    parser = argparse.ArgumentParser(prog="classroomhub", description=__doc__)
    from . import __version__

    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    roster = sub.add_parser("roster", help="check or apply a roster")
    roster_sub = roster.add_subparsers(dest="roster_command", required=True)
    check = roster_sub.add_parser("check", help="validate a roster file and summarize it")
    check.add_argument("file")
    check.add_argument("-v", "--verbose", action="store_true", help="show each person's groups and roles")
    check.set_defaults(func=cmd_roster_check)

    sync = roster_sub.add_parser("sync", help="make a running hub apply its roster now")
    sync.add_argument("--hub-url", default=os.environ.get("JUPYTERHUB_URL", "http://127.0.0.1:8000"))
    sync.add_argument("--token", help="API token with admin:users (default: $JUPYTERHUB_API_TOKEN)")
    sync.add_argument("--timeout", type=float, default=60)
    sync.set_defaults(func=cmd_roster_sync)

    demo = sub.add_parser("demo", help="run a local classroom hub with demo users")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--ip", default="127.0.0.1")
    demo.add_argument("--state-dir", default="classroomhub-demo", help="database, roster, logs (and homes when not root)")
    demo.add_argument("--password", help="the shared demo password (default: random, printed)")
    demo.add_argument("--remove-users", action="store_true", help="delete the demo's system users and exit")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
