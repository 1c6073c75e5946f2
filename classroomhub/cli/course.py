"""``classroomhub release`` and ``status``: course materials through the classroom service."""

from __future__ import annotations

import os
import sys
import time

from .client import HubClient, add_service_arguments


def progress_bar(done, total, width=30):
    filled = int(width * done / total) if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} students"


def show_progress(poll, interval=0.5):
    """Call *poll* until its progress stops running, drawing a bar; the last answer."""
    tty = sys.stdout.isatty()
    while True:
        answer = poll()
        progress = answer["progress"]
        total = progress.get("total", len(answer.get("reports", [])))
        done = progress.get("done", total)
        if tty:
            print("\r" + progress_bar(done, total), end="", flush=True)
        if not progress.get("running"):
            break
        time.sleep(interval)
    print(("\r" if tty else "") + progress_bar(done, total))
    return answer


def print_reports(reports):
    from ..service.files.delivery import STATUSES

    print(f"{'STUDENT':<24} " + " ".join(f"{s:>12}" for s in STATUSES))
    for report in reports:
        counts = report.get("counts", {})
        if report.get("pending"):
            print(f"{report['student']:<24} pending: no account yet, delivered at their first start")
        else:
            print(f"{report['student']:<24} " + " ".join(f"{counts.get(s, 0):>12}" for s in STATUSES))
    pending = sum(1 for r in reports if r.get("pending"))
    if pending:
        print(f"{pending} pending (no account yet): delivered when their server first starts")
    for report in reports:
        if report.get("error") and not report.get("pending"):
            print(f"{report['student']}: {report['error']}", file=sys.stderr)
        for result in report.get("results", []):
            if result["status"] in ("failed", "kept"):
                print(f"{report['student']}: {result['path']}: {result['status']}: {result['detail']}", file=sys.stderr)


def cmd_release(args):
    client = HubClient.from_args(args)
    body = {"restore_deleted": args.restore_deleted, "shared": args.shared}
    if args.git:
        body["git"] = args.git
        if args.ref:
            body["ref"] = args.ref
    else:
        body["source"] = os.path.abspath(args.source)
    base = f"courses/{args.course}/materials/{args.material}/releases"
    state = client.request("POST", client.service(base), body)
    print(f"{args.course}/{args.material} version {state['version']}: {state['n_files']} files, {state['size']} bytes")
    for skipped in state.get("skipped", []):
        print(f"  not released: {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    version = state["version"]
    state = show_progress(lambda: client.request("GET", client.service(f"{base}/{version}")))
    reports = state.get("reports", [])
    print_reports(reports)
    return 0 if all(r.get("ok") or r.get("pending") for r in reports) else 1


def cmd_status(args):
    client = HubClient.from_args(args)
    course = client.request("GET", client.service(f"courses/{args.course}"))
    students = (course.get("members") or {}).get("student")
    who = f"{len(students)} students" if students is not None else f"you are {course.get('role') or 'not a member'}"
    print(f"course {args.course}: {who}")
    print(f"{'MATERIAL':<24} {'VERSION':>7} {'RELEASED':<20} {'FILES':>6} {'DELIVERED':>9} {'FAILED':>6}")
    for material in course["materials"]:
        path = f"courses/{args.course}/materials/{material['material']}/releases/{material['version']}"
        reports = client.request("GET", client.service(path)).get("reports", [])
        ok = sum(1 for r in reports if r.get("ok"))
        print(
            f"{material['material']:<24} {material['version']:>7} {(material['created'] or '')[:19]:<20} "
            f"{material['n_files']:>6} {ok:>9} {len(reports) - ok:>6}"
        )
    return 0


def register(sub, command):
    release = command(
        sub,
        "release",
        "release a folder or git repository to a course's students",
        examples=[
            "classroomhub release data101 week1 --from ~/data101/week1",
            "classroomhub release data101 week2 --git https://github.com/me/data101 --ref week2",
            "classroomhub release data101 census --from /srv/data/census --shared",
        ],
    )
    release.add_argument("course", help="the course (as in the roster)")
    release.add_argument("material", help="name of the material (its folder in each home: ~/COURSE/MATERIAL)")
    source = release.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="source", metavar="PATH", help="a folder you can read")
    source.add_argument("--git", metavar="REPOSITORY", help="a git repository path or URL")
    release.add_argument("--ref", help="branch or tag (with --git)")
    release.add_argument("--restore-deleted", action="store_true", help="give back files students deleted")
    release.add_argument("--shared", action="store_true", help="a read-only dataset, stored once and linked into homes")
    add_service_arguments(release)
    release.set_defaults(func=cmd_release)

    status = command(
        sub, "status", "a course's materials and how their delivery went", examples=["classroomhub status data101"]
    )
    status.add_argument("course", help="the course (as in the roster)")
    add_service_arguments(status)
    status.set_defaults(func=cmd_status)
