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


def _hub_request(args, method, path, body=None):
    """A JSON request to the hub (or a service behind its proxy): (answer, exit status)."""
    token = args.token or os.environ.get("JUPYTERHUB_API_TOKEN")
    if not token:
        print("no API token: pass --token or set JUPYTERHUB_API_TOKEN", file=sys.stderr)
        return None, 2
    url = args.hub_url.rstrip("/") + path
    headers = {"Authorization": f"token {token}"}
    data = None
    if method == "POST":
        data = json.dumps(body).encode() if body is not None else b""
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, method=method, headers=headers, data=data)
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


def _hub_download(args, path, out):
    """Save the answer of a GET to the file *out* (written whole or not at all): exit status."""
    token = args.token or os.environ.get("JUPYTERHUB_API_TOKEN")
    if not token:
        print("no API token: pass --token or set JUPYTERHUB_API_TOKEN", file=sys.stderr)
        return 2
    url = args.hub_url.rstrip("/") + path
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    partial = f"{out}.part"
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp, open(partial, "wb") as f:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
        os.replace(partial, out)
        return 0
    except urllib.error.HTTPError as e:
        body = e.read().decode("utf-8", "replace")
        try:
            message = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            message = f"{url}: HTTP {e.code}: {body[:500]}"
        print(message, file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"{url}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 1
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


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


def _service_path(args, path):
    return "/" + args.service_prefix.strip("/") + "/api/" + path


def _progress_bar(done, total, width=30):
    filled = int(width * done / total) if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} students"


def _print_reports(reports):
    from .service.delivery import STATUSES

    print(f"{'STUDENT':<24} " + " ".join(f"{s:>12}" for s in STATUSES))
    for report in reports:
        counts = report.get("counts", {})
        print(f"{report['student']:<24} " + " ".join(f"{counts.get(s, 0):>12}" for s in STATUSES))
    for report in reports:
        if report.get("error"):
            print(f"{report['student']}: {report['error']}", file=sys.stderr)
        for result in report.get("results", []):
            if result["status"] in ("failed", "kept"):
                print(f"{report['student']}: {result['path']}: {result['status']}: {result['detail']}", file=sys.stderr)


def cmd_release(args):
    body = {"restore_deleted": args.restore_deleted, "shared": args.shared}
    if args.git:
        body["git"] = args.git
        if args.ref:
            body["ref"] = args.ref
    else:
        body["source"] = os.path.abspath(args.source)
    base = f"courses/{args.course}/materials/{args.material}/releases"
    state, rc = _hub_request(args, "POST", _service_path(args, base), body)
    if state is None or "version" not in state:
        if state is not None:
            print(state.get("message", state), file=sys.stderr)
        return rc or 1
    print(f"{args.course}/{args.material} version {state['version']}: {state['n_files']} files, {state['size']} bytes")
    for skipped in state.get("skipped", []):
        print(f"  not released: {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    tty = sys.stdout.isatty()
    while True:
        state, rc = _hub_request(args, "GET", _service_path(args, f"{base}/{state['version']}"))
        if state is None or "progress" not in state:
            if state is not None:
                print(state.get("message", state), file=sys.stderr)
            return rc or 1
        progress = state["progress"]
        total = progress.get("total", len(state.get("reports", [])))
        done = progress.get("done", total)
        if tty:
            print("\r" + _progress_bar(done, total), end="", flush=True)
        if not progress.get("running"):
            break
        time.sleep(0.5)
    print(("\r" if tty else "") + _progress_bar(done, total))
    reports = state.get("reports", [])
    _print_reports(reports)
    return 0 if all(r.get("ok") for r in reports) else 1


def cmd_status(args):
    course, rc = _hub_request(args, "GET", _service_path(args, f"courses/{args.course}"))
    if course is None or "materials" not in course:
        if course is not None:
            print(course.get("message", course), file=sys.stderr)
        return rc or 1
    students = (course.get("members") or {}).get("student")
    who = f"{len(students)} students" if students is not None else f"you are {course.get('role') or 'not a member'}"
    print(f"course {args.course}: {who}")
    print(f"{'MATERIAL':<24} {'VERSION':>7} {'RELEASED':<20} {'FILES':>6} {'DELIVERED':>9} {'FAILED':>6}")
    for material in course["materials"]:
        path = f"courses/{args.course}/materials/{material['material']}/releases/{material['version']}"
        state, _ = _hub_request(args, "GET", _service_path(args, path))
        reports = (state or {}).get("reports", [])
        ok = sum(1 for r in reports if r.get("ok"))
        print(
            f"{material['material']:<24} {material['version']:>7} {(material['created'] or '')[:19]:<20} "
            f"{material['n_files']:>6} {ok:>9} {len(reports) - ok:>6}"
        )
    return 0


def cmd_collect(args):
    path = _service_path(args, f"courses/{args.course}/assignments/{args.assignment}/collect")
    print(f"collecting {args.course}/{args.assignment} from every student ...", flush=True)
    answer, rc = _hub_request(args, "POST", path, {"wait": True})
    if answer is None or "submissions" not in answer:
        if answer is not None:
            print(answer.get("message", answer), file=sys.stderr)
        return rc or 1
    rows = answer["submissions"]
    print(_progress_bar(len(rows), len(rows)))
    failed = [r for r in rows if r["error"]]
    for r in sorted(rows, key=lambda r: r["student"]):
        print(f"{r['student']:<24} {r['n_files']:>6} files {r['size']:>12} bytes  {r['error'] or 'ok'}")
        for skipped in r["skipped"]:
            print(f"{r['student']}: not collected: {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    return 1 if failed else 0


def cmd_submissions(args):
    path = _service_path(args, f"courses/{args.course}/assignments/{args.assignment}/submissions")
    answer, rc = _hub_request(args, "GET", path)
    if answer is None or "students" not in answer:
        if answer is not None:
            print(answer.get("message", answer), file=sys.stderr)
        return rc or 1
    print(f"{args.course}/{args.assignment}: due {answer['assignment']['due']}")
    print(f"{'STUDENT':<24} {'STATUS':<20} {'SUBMISSIONS':>11} {'GRADED':>7}  {'TAKEN (graded)':<25}")
    for row in answer["students"]:
        graded = next((s for s in row["submissions"] if s["id"] == row["graded"]), None)
        print(
            f"{row['student']:<24} {row['status']:<20} {len(row['submissions']):>11} "
            f"{row['graded'] or '-':>7}  {(graded or {}).get('taken') or '-':<25}"
        )
    return 0


def cmd_export(args):
    import zipfile

    path = _service_path(args, f"courses/{args.course}/assignments/{args.assignment}/nbgrader.zip")
    rc = _hub_download(args, path, args.nbgrader)
    if rc:
        return rc
    with zipfile.ZipFile(args.nbgrader) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/timestamp.txt")]
        students = {n.split("/")[1] for n in archive.namelist()}
    print(f"{args.nbgrader}: {len(students)} students, {len(names)} files in submitted/<student>/{args.assignment}/")
    print(f"unzip it in your nbgrader course directory, then: nbgrader autograde {args.assignment}")
    return 0


def cmd_demo(args):
    from .demo import run_demo

    return run_demo(args)


def _hub_args(parser, token_help):
    parser.add_argument("--hub-url", default=os.environ.get("JUPYTERHUB_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", help=token_help)
    parser.add_argument("--timeout", type=float, default=60)


def _service_args(parser):
    _hub_args(parser, "your JupyterHub API token (default: $JUPYTERHUB_API_TOKEN)")
    parser.add_argument("--service-prefix", default="/services/classroom", help="where the hub serves the classroom service")


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

    release = sub.add_parser("release", help="release a folder or git repository to a course's students")
    release.add_argument("course")
    release.add_argument("material", help="name of the material (its folder in each home: ~/COURSE/MATERIAL)")
    source = release.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="source", metavar="PATH", help="a folder you can read")
    source.add_argument("--git", metavar="REPOSITORY", help="a git repository path or URL")
    release.add_argument("--ref", help="branch or tag (with --git)")
    release.add_argument("--restore-deleted", action="store_true", help="give back files students deleted")
    release.add_argument("--shared", action="store_true", help="a read-only dataset, stored once and linked into homes")
    _service_args(release)
    release.set_defaults(func=cmd_release)

    status = sub.add_parser("status", help="a course's materials and how their delivery went")
    status.add_argument("course")
    _service_args(status)
    status.set_defaults(func=cmd_status)

    collect = sub.add_parser("collect", help="collect an assignment from every student of a course now")
    collect.add_argument("course")
    collect.add_argument("assignment", help="a released material (~/COURSE/ASSIGNMENT in each home)")
    _service_args(collect)
    collect.set_defaults(func=cmd_collect)

    submissions = sub.add_parser("submissions", help="who handed in an assignment, on time or late")
    submissions.add_argument("course")
    submissions.add_argument("assignment")
    _service_args(submissions)
    submissions.set_defaults(func=cmd_submissions)

    export = sub.add_parser("export", help="download every student's graded submission, laid out for nbgrader")
    export.add_argument("course")
    export.add_argument("assignment")
    export.add_argument(
        "--nbgrader",
        required=True,
        metavar="OUT.zip",
        help="write submitted/<student>/<assignment>/ (with timestamp.txt) here",
    )
    _service_args(export)
    export.set_defaults(func=cmd_export)

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
