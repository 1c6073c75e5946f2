"""``classroomhub usage``: a top-like table of the running servers."""

from __future__ import annotations

import json
import time

from ..units import human_bytes
from .client import HubClient, add_hub_arguments


def format_usage(servers):
    """A top-like table of /hub/api/classroom/usage, biggest memory first."""

    header = f"{'USER':<20} {'SERVER':<10} {'TIER':<8} {'MEM':>10} {'PEAK':>10} {'LIMIT':>10} {'CPU s':>9} {'PROCS':>5} {'OOM':>4} {'IDLE':>7}"
    rows = [header]
    for s in sorted(servers, key=lambda s: s.get("mem_bytes") or 0, reverse=True):
        idle = s.get("idle_seconds")
        rows.append(
            f"{s['user']:<20} {s['server'] or '-':<10} {s['tier']:<8} "
            f"{human_bytes(s.get('mem_bytes')) if s.get('mem_bytes') else '-':>10} "
            f"{human_bytes(s.get('mem_peak_bytes')) if s.get('mem_peak_bytes') else '-':>10} "
            f"{human_bytes(s.get('mem_limit')):>10} {s.get('cpu_seconds', 0):>9.1f} "
            f"{_count(s.get('procs', 0)):>5} {_count(s.get('oom_kills', 0)):>4} "
            f"{'-' if idle is None else f'{idle / 60:.0f}m':>7}"
        )
    return "\n".join(rows)


def _count(value):
    """A count, or "-" where the engine cannot tell (null: a Slurm job's processes)."""
    return "-" if value is None else value


def cmd_usage(args):
    client = HubClient.from_args(args)
    while True:
        servers = client.request("GET", "/hub/api/classroom/usage")["servers"]
        if args.json:
            print(json.dumps(servers, indent=1))
        else:
            if args.watch:
                print("\033[H\033[2J", end="")
            print(format_usage(servers))
        if not args.watch:
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:  # the way to leave --watch
            return 0


def register(sub, command):
    usage = command(
        sub,
        "usage",
        "memory, CPU and OOM kills of running servers (top-like)",
        examples=["classroomhub usage", "classroomhub usage --watch 5", "classroomhub usage --json | jq ."],
    )
    add_hub_arguments(usage, "API token that may read the servers (read:servers)")
    usage.add_argument("--json", action="store_true", help="print the raw records")
    usage.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    usage.set_defaults(func=cmd_usage)
