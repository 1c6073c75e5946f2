"""``classroomhub demo``: commands for the people who run the hub."""

from __future__ import annotations


def cmd_demo(args):
    from ..demo import run_demo

    return run_demo(args)


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
