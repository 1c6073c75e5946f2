"""``classroomhub backup``, ``restore`` and ``upgrade-db`` (listed in the CLI's COMMAND_MODULES)."""

from __future__ import annotations

import os
import sys

from ..errors import CommandError


def _say(message):
    print(message, flush=True)


def _human(size):
    return f"{size / 1024**2:.1f} MiB" if size < 1024**3 else f"{size / 1024**3:.2f} GiB"


def _locations(args):
    from .locations import read_locations

    return read_locations(args.config, args.hub_dir)


def cmd_backup(args):
    from .backup import Backup

    # BackupError, LocationError and OSError (e.g. not run as the hub's user)
    # are reported by the CLI's main() as one line
    manifest = Backup(_locations(args), args.dest, progress=None if args.quiet else _say).run()
    for note in manifest["notes"]:
        print(f"note: {note}", file=sys.stderr)
    store = manifest["store"] or {"objects": 0, "bytes": 0, "missing": []}
    files = sum(item.get("size", 0) for item in manifest["items"])
    _say(
        f"backup in {os.path.abspath(args.dest)}: {len(manifest['items'])} items ({_human(files)}), "
        f"{store['objects']} store objects ({_human(store['bytes'])}), {manifest['seconds']:.1f} s"
    )
    if store["missing"]:
        print(f"warning: {len(store['missing'])} objects named by the database were not in the store", file=sys.stderr)
    return 0


def cmd_restore(args):
    from .backup import Restore

    seconds = Restore(_locations(args), args.source, force=args.force, progress=None if args.quiet else _say).run()
    _say(
        f"restored {os.path.abspath(args.source)} in {seconds:.1f} s;"
        " start the hub (its service upgrades its database if needed)"
    )
    return 0


def cmd_upgrade_db(args):
    from ..service.db.migrations import SchemaTooNew, backup_beside, upgrade_database
    from ..databases import sqlite_path

    if args.db_url:
        url, folder = args.db_url, os.getcwd()
    else:
        loc = _locations(args)
        if not loc.service_db_url:
            raise CommandError(f"{loc.config_file}: no classroom service configured", 2)
        url, folder = loc.service_db_url, os.path.join(loc.service_data_dir, "db")
    path = sqlite_path(url)
    if path is not None and not os.path.exists(path):
        raise CommandError(f"{path}: no such database (the service makes it at its first start)", 2)
    try:
        result = upgrade_database(url, backup=None if args.no_backup else (lambda u: backup_beside(u, folder)))
    except SchemaTooNew as e:
        raise CommandError(str(e)) from None
    _say(f"classroom service database: {result.describe()}")
    _say("the hub's own database: `jupyterhub upgrade-db -f <your jupyterhub_config.py>` (docs: upgrading)")
    return 0


def _config_args(parser):
    parser.add_argument(
        "-f",
        "--config",
        default="jupyterhub_config.py",
        help="the hub's configuration file, which says where everything is; run with the hub's"
        " environment if the file reads variables",
    )
    parser.add_argument(
        "--hub-dir", help="the hub's working directory, for relative paths (default: the config file's folder)"
    )


def _quiet(parser):
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary")


def register(sub, command):
    backup = command(
        sub,
        "backup",
        "copy the hub's and the classroom service's state while they run",
        examples=["sudo classroomhub backup /var/backups/hub-$(date +%F) -f /etc/jupyterhub/jupyterhub_config.py"],
    )
    backup.add_argument("dest", help="a new or empty folder (made 0700, files 0600)")
    _config_args(backup)
    _quiet(backup)
    backup.set_defaults(func=cmd_backup)

    restore = command(
        sub,
        "restore",
        "put a backup back where the configuration says (hub and service stopped)",
        examples=["sudo classroomhub restore /var/backups/hub-2026-12-01 -f /etc/jupyterhub/jupyterhub_config.py"],
    )
    restore.add_argument("source", help="a folder made by `classroomhub backup`")
    _config_args(restore)
    _quiet(restore)
    restore.add_argument("--force", action="store_true", help="replace existing databases and files")
    restore.set_defaults(func=cmd_restore)

    upgrade = command(
        sub,
        "upgrade-db",
        "upgrade the classroom service's database to this release's schema (after a backup)",
        examples=["sudo classroomhub upgrade-db -f /etc/jupyterhub/jupyterhub_config.py"],
    )
    _config_args(upgrade)
    upgrade.add_argument("--db-url", help="the service's database URL, instead of reading it from the configuration")
    upgrade.add_argument("--no-backup", action="store_true", help="do not copy the database first (you made your own)")
    upgrade.set_defaults(func=cmd_upgrade_db)
