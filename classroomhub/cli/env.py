"""``classroomhub env``: shared environments published as kernels (create, update, list, show, remove).

Run by root on the hub's host, it builds in the hub's data folder (as the
build account), the way the hub's servers will find them. Run by anyone
else (a power user in their server), it builds their own environments in
their home, with the kernels in their Jupyter data folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from ..errors import CommandError

DEFAULT_DATA_DIR = os.environ.get("CLASSROOMHUB_SERVICE_DIR", "/srv/classroomhub")


def _personal(args):
    """Whether this run is about the caller's own environments (not root, no --data-dir)."""
    return os.geteuid() != 0 and args.data_dir is None


def _manager(args):
    from ..environments import EnvironmentManager, SpecError, personal_data_dir, refusal  # keeps `classroomhub --help` fast

    if os.geteuid() != 0:
        why = refusal()
        if why:
            raise CommandError(why, 2)
    try:
        personal = _personal(args)
        data_dir = personal_data_dir() if personal else (args.data_dir or DEFAULT_DATA_DIR)
        settings = {"data_dir": data_dir, "installer": args.installer, "personal": personal}
        if args.cache_dir:
            settings["cache_dir"] = args.cache_dir
        if args.build_user:
            settings["build_user"] = args.build_user
        return EnvironmentManager(**settings)
    except SpecError as e:
        raise CommandError(str(e), 2) from None


def _packages(args):
    from ..environments import parse_packages, read_packages

    if args.requirements and args.package:
        raise CommandError("give either --requirements FILE or --package, not both", 2)
    if args.requirements:
        return read_packages(args.requirements, args.format)
    if args.package:
        return parse_packages("\n".join(args.package), "--package", "requirements")
    return None


def _progress(args):
    if args.quiet:
        return None
    return lambda line: print(f"  {line}", file=sys.stderr, flush=True)


def _run(coroutine_fn):
    """Run an environment operation; its errors become one CommandError line."""
    from ..environments import BuildError, EnvError, SpecError

    try:
        return coroutine_fn()
    except SpecError as e:
        raise CommandError(str(e), 2) from None
    except (BuildError, EnvError) as e:
        raise CommandError(str(e), 1) from None


def _shared_only(args):
    if _personal(args) and (args.audience or args.default):
        raise CommandError("--audience and --default are for shared environments: your own are for you alone", 2)


def cmd_env_create(args):
    from ..environments import EnvironmentSpec

    _shared_only(args)

    def create():
        packages = _packages(args)
        if packages is None:
            raise CommandError("list the packages: --requirements FILE or --package SPEC", 2)
        spec = EnvironmentSpec(
            args.name, packages, audience=args.audience or ["everyone"], display_name=args.display_name or "", default=args.default
        )
        return asyncio.run(_manager(args).create(spec, _progress(args)))

    version = _run(create)
    print(f"{args.name}: version {version} built and in force")
    return 0


def cmd_env_update(args):
    _shared_only(args)

    def update():
        return asyncio.run(
            _manager(args).update(
                args.name,
                packages=_packages(args),
                audience=args.audience,
                display_name=args.display_name,
                default=args.default,
                rebuild=True if args.rebuild else None,
                progress=_progress(args),
            )
        )

    version = _run(update)
    if not version:
        print(f"{args.name}: declaration updated")
        return 0
    print(f"{args.name}: version {version} built and in force")
    if not args.keep_old:
        _print_pruned(args.name, *_run(lambda: _manager(args).prune(args.name)))
    return 0


def _print_pruned(name, removed, kept):
    if removed:
        print(f"{name}: removed versions {', '.join(map(str, removed))}")
    for version, pids in kept.items():
        print(f"{name}: version {version} kept, in use by pids {' '.join(map(str, pids))}")


def cmd_env_list(args):
    manager = _manager(args)
    rows = []
    for name in manager.names():
        info = _run(lambda: manager.info(name))
        rows.append(info)
    if args.json:
        print(json.dumps([_record(i) for i in rows], indent=1))
        return 0
    print(f"{'NAME':<20} {'CURRENT':>7} {'VERSIONS':<12} {'AUDIENCE':<28} KERNEL")
    for info in rows:
        versions = ",".join(str(v.version) for v in info.versions) or "-"
        print(
            f"{info.spec.name:<20} {info.current or '-':>7} {versions:<12} {' '.join(info.spec.audience):<28} "
            f"{info.spec.display_name}{' (default)' if info.spec.default else ''}"
        )
    return 0


def _record(info, with_processes=False):
    return {
        **info.spec.to_dict(),
        "current": info.current,
        "path": info.path,
        "versions": [
            {"version": v.version, "current": v.current, **({"pids": list(v.pids)} if with_processes else {}), **v.manifest}
            for v in info.versions
        ],
    }


def cmd_env_show(args):
    manager = _manager(args)
    if args.log is not None:
        print(_run(lambda: manager.build_log(args.name, args.log or None)), end="")
        return 0
    info = _run(lambda: manager.info(args.name, with_processes=True))
    if args.json:
        print(json.dumps(_record(info, True), indent=1))
        return 0
    spec = info.spec
    print(f"{spec.name}: {spec.display_name} (kernel {spec.kernel_name}){' — default environment' if spec.default else ''}")
    print(f"  for:       {', '.join(spec.audience)}")
    print(f"  packages:  {' '.join(spec.packages)}")
    own, total = manager.disk_bytes(spec.name)
    print(f"  folder:    {info.path} ({total / 2**20:.1f} MiB, {own / 2**20:.1f} MiB beyond the installer's cache)")
    for v in info.versions:
        m = v.manifest
        used = f", used by pids {' '.join(map(str, v.pids))}" if v.pids else ""
        print(f"  version {v.version}{' (current)' if v.current else ''}: built {m['built']} with {m['installer']}{used}")
        print(f"    {' '.join(m['installed'])}")
    return 0


def cmd_env_remove(args):
    manager = _manager(args)
    if args.old_versions:
        removed, kept = _run(lambda: manager.prune(args.name))
        _print_pruned(args.name, removed, kept)
        if not removed and not kept:
            print(f"{args.name}: no old versions")
        return 0
    _run(lambda: manager.remove(args.name, force=args.force))
    print(f"{args.name}: removed")
    return 0


def _common(parser):
    parser.add_argument(
        "--data-dir",
        help="the hub's data folder; environments live in its environments/ folder (root's default: "
        "$CLASSROOMHUB_SERVICE_DIR or /srv/classroomhub; anyone else's: their own, ~/.local/share/classroomhub)",
    )
    parser.add_argument("--installer", default="uv", choices=["uv", "pip"], help="what builds the environments")
    parser.add_argument(
        "--cache-dir", metavar="DIR",
        help="the installer's cache, on the data folder's file system (default: DATA_DIR/environments/.cache/INSTALLER)",
    )
    parser.add_argument(
        "--build-user", metavar="LOGIN",
        help="the system account builds run as when run by root (default: classroomhub-build, created at first use)",
    )


def _declaration(parser, creating):
    parser.add_argument("name", help="the environment's name (a folder and the kernel env-NAME)")
    parser.add_argument("-r", "--requirements", metavar="FILE", help="package list: requirements.txt, pyproject.toml or environment.yml")
    parser.add_argument("--format", choices=["requirements", "pyproject", "environment"], help="the list's format (default: from the file name)")
    parser.add_argument("-p", "--package", action="append", metavar="SPEC", help="a package requirement, e.g. 'pandas>=2'; repeatable")
    parser.add_argument(
        "--audience", action="append", metavar="WHO",
        help="who may use the kernel: everyone, course:ID or tier:TIER (and above); repeatable"
        + (" (default: everyone)" if creating else ""),
    )
    parser.add_argument("--display-name", help="the kernel's name in JupyterLab (default: 'Python 3 (NAME)')")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not show the installer's output")


def register(sub, command):
    env = command(sub, "env", "environments published as kernels: shared ones (root), or your own (in your server)")
    env_sub = env.add_subparsers(dest="env_command", required=True, metavar="{create,update,list,show,remove}")

    create = command(
        env_sub, "create", "build a new environment and publish its kernel",
        examples=[
            "classroomhub env create data101 -r requirements.txt --audience course:data101",
            "classroomhub env create base -p numpy -p pandas --default",
        ],
    )
    _declaration(create, True)
    create.add_argument("--default", action="store_true", default=False, help="put it on its users' PATH")
    _common(create)
    create.set_defaults(func=cmd_env_create)

    update = command(
        env_sub, "update", "build a new version beside the old one and switch to it, or change who sees it",
        examples=[
            "classroomhub env update data101 -r requirements.txt",
            "classroomhub env update data101 --rebuild",
            "classroomhub env update data101 --audience course:data101 --audience tier:admin",
        ],
    )
    _declaration(update, False)
    update.add_argument("--default", action="store_true", default=None, help="put it on its users' PATH")
    update.add_argument("--no-default", dest="default", action="store_false", help="take it off its users' PATH")
    update.add_argument("--rebuild", action="store_true", help="build a new version of the same list (newer releases)")
    update.add_argument(
        "--keep-old", action="store_true",
        help="keep the old versions (default: after a build, remove those no process uses; the others stay until "
        "`env remove NAME --old-versions` finds them unused)",
    )
    _common(update)
    update.set_defaults(func=cmd_env_update)

    listing = command(
        env_sub,
        "list",
        "list environments, their versions and audiences",
        examples=["classroomhub env list", "classroomhub env list --json | jq ."],
    )
    listing.add_argument("--json", action="store_true", help="print the records")
    _common(listing)
    listing.set_defaults(func=cmd_env_list)

    show = command(
        env_sub, "show", "show an environment's packages, versions, users and build log",
        examples=["classroomhub env show data101", "classroomhub env show data101 --log", "classroomhub env show data101 --log 3"],
    )
    show.add_argument("name")
    show.add_argument("--log", nargs="?", type=int, const=0, metavar="VERSION", help="print a build's log (default: the latest build)")
    show.add_argument("--json", action="store_true", help="print the record")
    _common(show)
    show.set_defaults(func=cmd_env_show)

    remove = command(
        env_sub, "remove", "remove an environment, or its old versions no kernel uses",
        examples=["classroomhub env remove data101 --old-versions", "classroomhub env remove data101"],
    )
    remove.add_argument("name")
    remove.add_argument("--old-versions", action="store_true", help="remove only versions that are not current and not in use")
    remove.add_argument("--force", action="store_true", help="remove even while kernels use it (they break)")
    _common(remove)
    remove.set_defaults(func=cmd_env_remove)
