"""``classroomhub due``, ``extend``, ``collect``, ``submissions`` and ``export``:
assignments through the classroom service."""

from __future__ import annotations

import sys
import zipfile
from datetime import datetime
from urllib.parse import quote

from .client import CommandError, HubClient, add_service_arguments
from .course import progress_bar


def assignment_path(args, rest=""):
    return f"courses/{quote(args.course, safe='')}/assignments/{quote(args.assignment, safe='')}{rest}"


def cmd_collect(args):
    client = HubClient.from_args(args)
    path = client.service(assignment_path(args, "/collect"))
    print(f"collecting {args.course}/{args.assignment} from every student ...", flush=True)
    rows = client.request("POST", path, {"wait": True})["submissions"]
    print(progress_bar(len(rows), len(rows)))
    failed = [r for r in rows if r["error"]]
    for r in sorted(rows, key=lambda r: r["student"]):
        print(f"{r['student']:<24} {r['n_files']:>6} files {r['size']:>12} bytes  {r['error'] or 'ok'}")
        for skipped in r["skipped"]:
            print(f"{r['student']}: not collected: {skipped['path']}: {skipped['reason']}", file=sys.stderr)
    return 1 if failed else 0


def cmd_submissions(args):
    client = HubClient.from_args(args)
    answer = client.request("GET", client.service(assignment_path(args, "/submissions")))
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
    client = HubClient.from_args(args)
    client.download(client.service(assignment_path(args, "/nbgrader.zip")), args.nbgrader)
    with zipfile.ZipFile(args.nbgrader) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/timestamp.txt")]
        students = {n.split("/")[1] for n in archive.namelist()}
    print(f"{args.nbgrader}: {len(students)} students, {len(names)} files in submitted/<student>/{args.assignment}/")
    print(f"unzip it in your nbgrader course directory, then: nbgrader autograde {args.assignment}")
    return 0


def register(sub, command):
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
