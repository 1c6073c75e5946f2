"""``classroomhub due``, ``extend``, ``collect``, ``submissions`` and ``export``:
assignments through the classroom service."""

from __future__ import annotations

import argparse
import sys
import threading
import zipfile
from datetime import datetime, timedelta
from urllib.parse import quote

from ..errors import CommandError
from .client import HubClient, add_service_arguments
from .course import progress_bar


def assignment_path(args, rest=""):
    return f"courses/{quote(args.course, safe='')}/assignments/{quote(args.assignment, safe='')}{rest}"


def cmd_collect(args):
    client = HubClient.from_args(args)
    path = client.service(assignment_path(args, "/collect"))
    print(f"collecting {args.course}/{args.assignment} from every student ...", flush=True)
    answer = {}

    def collect():  # the request waits for the whole collection; the bar asks how far it is
        try:
            answer["rows"] = client.request("POST", path, {"wait": True})["submissions"]
        except CommandError as e:
            answer["error"] = e

    worker = threading.Thread(target=collect, daemon=True)  # Ctrl-C does not wait for it
    worker.start()
    tty = sys.stdout.isatty()
    while worker.is_alive():
        worker.join(0.2)
        if tty and worker.is_alive():
            try:
                progress = client.request("GET", path)["progress"]
            except CommandError:  # a service without the progress call: no bar
                tty = False
                continue
            if progress.get("running"):
                print("\r" + progress_bar(progress.get("done", 0), progress.get("total", 0)), end="", flush=True)
    if "error" in answer:
        if tty:
            print()
        raise answer["error"]
    rows = answer["rows"]
    print(("\r" if tty else "") + progress_bar(len(rows), len(rows)))
    failed = [r for r in rows if r["error"]]
    for r in sorted(rows, key=lambda r: r["student"]):
        print(f"{r['student']:<24} {r['n_files']:>6} files {r['size']:>12} bytes  {r['error'] or 'ok'}")
        for skipped in r["skipped"]:
            print(f"{r['student']}: not collected: {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    return 1 if failed else 0


def cmd_submissions(args):
    client = HubClient.from_args(args)
    path = client.service(assignment_path(args, "/submissions"))
    answer = client.request("GET", path)
    print(f"{args.course}/{args.assignment}: due {answer['assignment']['due']}")
    print(f"{'STUDENT':<24} {'STATUS':<20} {'SUBMISSIONS':>11} {'GRADED':>7}  {'TAKEN (graded)':<25}")
    while True:
        for row in answer["students"]:
            graded = next((s for s in row["submissions"] if s["id"] == row["graded"]), None)
            print(
                f"{row['student']:<24} {row['status']:<20} {len(row['submissions']):>11} "
                f"{row['graded'] or '-':>7}  {(graded or {}).get('taken') or '-':<25}"
            )
        if not answer.get("next"):  # one page of students at a time
            return 0
        answer = client.request("GET", path + answer["next"])


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text):
    """Seconds of ``90``, ``90s``, ``30m``, ``2h``, ``3d`` or ``1w``."""
    text = text.strip().lower()
    unit = DURATION_UNITS.get(text[-1:]) if text[-1:].isalpha() else 1
    number = text[:-1] if text[-1:].isalpha() else text
    if unit is None or not number.replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90, 30m, 2h, 3d, 1w)")
    return int(float(number) * unit)


def parse_when(text):
    """An ISO 8601 date-time; one without a time zone is in this computer's local zone."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date-time: {text!r} (e.g. 2026-12-01T17:00 or 2026-12-01T17:00+01:00)")
    return when if when.tzinfo else when.astimezone()  # naive: local time


def show_due(assignment):
    due = datetime.fromisoformat(assignment["due"])
    late = assignment.get("late_seconds") or 0
    window = f", late hand-ins until {(due + timedelta(seconds=late)).astimezone().isoformat()}" if late else ""
    print(f"{assignment['course']}/{assignment['material']}: due {due.astimezone().isoformat()}{window}")


def cmd_due(args):
    client = HubClient.from_args(args)
    path = client.service(assignment_path(args))
    if args.when is None:
        show_due(client.request("GET", path))
        return 0
    late = args.late
    if late is None:  # keep the late window the assignment has, if it has one
        try:
            late = client.request("GET", path)["late_seconds"]
        except CommandError:
            late = 0
    show_due(client.request("PUT", path, {"due": args.when.isoformat(), "late_seconds": late}))
    return 0


def cmd_extend(args):
    client = HubClient.from_args(args)
    path = client.service(assignment_path(args, f"/extensions/{quote(args.student, safe='')}"))
    if args.remove:
        client.request("DELETE", path)
        print(f"{args.student}: due with everyone again ({args.course}/{args.assignment})")
        return 0
    if args.by is not None:
        due = datetime.fromisoformat(client.request("GET", client.service(assignment_path(args)))["due"])
        when = due + timedelta(seconds=args.by)
    else:
        when = args.until
    answer = client.request("PUT", path, {"due": when.isoformat()})
    due = datetime.fromisoformat(answer["due"])
    print(f"{answer['student']}: due {due.astimezone().isoformat()} ({args.course}/{args.assignment})")
    return 0


def cmd_export(args):
    client = HubClient.from_args(args)
    client.download(client.service(assignment_path(args, "/nbgrader.zip")), args.nbgrader)
    with zipfile.ZipFile(args.nbgrader) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/timestamp.txt")]
        students = {n.split("/")[1] for n in archive.namelist()}
    print(f"{args.nbgrader}: {len(students)} students, {len(names)} files in submitted/<student>/{args.assignment}/")
    print(f"unzip it in your nbgrader course directory, then: nbgrader autograde {args.assignment}")
    return 0


def register(sub, command):
    due = command(
        sub,
        "due",
        "show or set an assignment's due date (a released material; collected at the due date)",
        description="Show or set the due date of a released material. Each student's folder is collected"
        " at their due date (the assignment's, or their extension's); a date already past is collected at once.",
        examples=[
            "classroomhub due data101 hw1                           # show it",
            "classroomhub due data101 hw1 2026-12-04T17:00          # this computer's time zone",
            "classroomhub due data101 hw1 2026-12-04T17:00+01:00 --late 2d",
        ],
    )
    due.add_argument("course", help="the course (as in the roster)")
    due.add_argument("assignment", help="a released material (~/COURSE/ASSIGNMENT in each home)")
    due.add_argument(
        "when", nargs="?", type=parse_when, help="ISO 8601 date-time; without an offset, in this computer's time zone"
    )
    due.add_argument(
        "--late",
        type=parse_duration,
        metavar="DURATION",
        help="late hand-ins accepted this long after it (30m, 2h, 3d; 0: none); default: the window it has, else none",
    )
    add_service_arguments(due)
    due.set_defaults(func=cmd_due)

    extend = command(
        sub,
        "extend",
        "give one student their own due date for an assignment, or take it back",
        examples=[
            "classroomhub extend data101 hw1 dave --by 2d",
            "classroomhub extend data101 hw1 dave --until 2026-12-08T09:00",
            "classroomhub extend data101 hw1 dave --remove",
        ],
    )
    extend.add_argument("course", help="the course (as in the roster)")
    extend.add_argument("assignment", help="an assignment (a released material with a due date)")
    extend.add_argument("student", help="the student's login")
    when = extend.add_mutually_exclusive_group(required=True)
    when.add_argument("--by", type=parse_duration, metavar="DURATION", help="this long after the assignment's due date (2d, 36h)")
    when.add_argument("--until", type=parse_when, metavar="WHEN", help="this date-time (ISO 8601; local zone without an offset)")
    when.add_argument("--remove", action="store_true", help="the assignment's due date again")
    add_service_arguments(extend)
    extend.set_defaults(func=cmd_extend)

    collect = command(
        sub,
        "collect",
        "collect an assignment from every student of a course now",
        examples=["classroomhub collect data101 hw1"],
    )
    collect.add_argument("course", help="the course (as in the roster)")
    collect.add_argument("assignment", help="a released material (~/COURSE/ASSIGNMENT in each home)")
    add_service_arguments(collect)
    collect.set_defaults(func=cmd_collect)

    submissions = command(
        sub,
        "submissions",
        "who handed in an assignment, on time or late",
        examples=["classroomhub submissions data101 hw1"],
    )
    submissions.add_argument("course", help="the course (as in the roster)")
    submissions.add_argument("assignment", help="an assignment (a released material with a due date)")
    add_service_arguments(submissions)
    submissions.set_defaults(func=cmd_submissions)

    export = command(
        sub,
        "export",
        "download every student's graded submission, laid out for nbgrader",
        examples=["classroomhub export data101 hw1 --nbgrader hw1.zip"],
    )
    export.add_argument("course", help="the course (as in the roster)")
    export.add_argument("assignment", help="an assignment (a released material with a due date)")
    export.add_argument(
        "--nbgrader",
        required=True,
        metavar="OUT.zip",
        help="write submitted/<student>/<assignment>/ (with timestamp.txt) here",
    )
    add_service_arguments(export)
    export.set_defaults(func=cmd_export)
