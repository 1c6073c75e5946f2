"""The ``classroomhub`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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


def format_usage(servers):
    """A top-like table of /hub/api/classroom/usage, biggest memory first."""
    from .spawner.enforcement import human_bytes

    header = f"{'USER':<20} {'SERVER':<10} {'TIER':<8} {'MEM':>10} {'PEAK':>10} {'LIMIT':>10} {'CPU s':>9} {'PROCS':>5} {'OOM':>4} {'IDLE':>7}"
    rows = [header]
    for s in sorted(servers, key=lambda s: s.get("mem_bytes") or 0, reverse=True):
        idle = s.get("idle_seconds")
        rows.append(
            f"{s['user']:<20} {s['server'] or '-':<10} {s['tier']:<8} "
            f"{human_bytes(s.get('mem_bytes')) if s.get('mem_bytes') else '-':>10} "
            f"{human_bytes(s.get('mem_peak_bytes')) if s.get('mem_peak_bytes') else '-':>10} "
            f"{human_bytes(s.get('mem_limit')):>10} {s.get('cpu_seconds', 0):>9.1f} "
            f"{s.get('procs', 0):>5} {s.get('oom_kills', 0):>4} "
            f"{'-' if idle is None else f'{idle / 60:.0f}m':>7}"
        )
    return "\n".join(rows)


def cmd_usage(args):
    while True:
        data, rc = _hub_request(args, "GET", "/hub/api/classroom/usage")
        if data is None or "servers" not in data:
            if data is not None:
                print(data.get("message", data), file=sys.stderr)
            return rc or 1
        if args.json:
            print(json.dumps(data["servers"], indent=1))
        else:
            if args.watch:
                print("\033[H\033[2J", end="")
            print(format_usage(data["servers"]))
        if not args.watch:
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:  # the way to leave --watch
            return 0


def cmd_demo(args):
    from .demo import run_demo

    return run_demo(args)


def _hub_args(parser, token_help):
    parser.add_argument("--hub-url", default=os.environ.get("JUPYTERHUB_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", help=token_help)
    parser.add_argument("--timeout", type=float, default=60)


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
    _hub_args(sync, "API token with admin:users (default: $JUPYTERHUB_API_TOKEN)")
    sync.set_defaults(func=cmd_roster_sync)

    usage = sub.add_parser("usage", help="memory, CPU and OOM kills of running servers (top-like)")
    _hub_args(usage, "API token that may read the servers (default: $JUPYTERHUB_API_TOKEN)")
    usage.add_argument("--json", action="store_true", help="print the raw records")
    usage.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS")
    usage.set_defaults(func=cmd_usage)

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
