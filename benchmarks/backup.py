"""Backup benchmark: ``classroomhub backup`` of a hub with 300 students' submissions.

The state is built once (untimed), the way a hub and its classroom service
lay it out: a JupyterHub database (JupyterHub's own ORM: 300 users, a course
group), cookie secret and roster in a state folder; the service's SQLite
database (WAL) with a release, each student's delivery and a submission
each (audited), and its content-addressed store holding the released
notebook and every student's submission: a generated notebook (50-100 KB)
and ``data.bin`` (``--data-mb``, default 10 MB, random bytes, different for
every student: identical files would be stored once and flatter us).

Measured in the same run, in turns (each run into an empty destination,
the file system synced first, untimed; the timed part ends with everything
on disk):

a. ours: :class:`classroomhub.ops.backup.Backup`, what ``classroomhub
   backup`` runs (database copies with SQLite's backup API, objects the
   database names, manifest with checksums, one ``sync``).
b. baseline: ``cp -a`` of the same folders, then ``sync``. Unsafe on a
   running hub (a WAL database copied that way can lose committed
   transactions or be torn), but it is the cost reference.
c. baseline: ``tar -cf`` of the same folders to one file, then ``sync``.

and, informational, ``Restore`` of our backup into an empty place (checks
every object against its name) against ``cp -a`` back.

Run as root from the repository root::

    PATH=$PWD/.venv/bin:$PATH python benchmarks/backup.py [--students 300] [--repeat 3] [--data-mb 10] [--quick]

``--quick``: 10 students, 1 repeat (a smoke run). Prints medians, the
backup's size, ratios, and one PASS/MISS line per target: ours <= 1.25 x
``cp -a`` in time, and no larger than ``cp -a``'s copy.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import make_notebook  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from classroomhub.ops.backup import Backup, Restore  # noqa: E402
from classroomhub.ops.locations import Locations  # noqa: E402
from classroomhub.service.db.migrations import upgrade_database  # noqa: E402
from classroomhub.service.db.models import AuditEvent, Delivered, Release, Submission, make_private_sqlite  # noqa: E402
from classroomhub.service.files.store import ReleaseStore  # noqa: E402

TARGET_TIME = 1.25  # ours / cp -a
COURSE = "data101"


def build_state(root, students, data_bytes, seed):
    """The hub's and the service's state for *students*; its Locations."""
    from jupyterhub import orm

    hub_dir = os.path.join(root, "hub")
    service_dir = os.path.join(root, "classroom")
    os.makedirs(hub_dir, mode=0o700)
    hub_url = f"sqlite:///{hub_dir}/jupyterhub.sqlite"
    db = orm.new_session_factory(hub_url)()
    group = orm.Group(name=f"course-{COURSE}-students")
    db.add(group)
    for login in students:
        user = orm.User(name=login)
        user.groups.append(group)
        db.add(user)
    db.commit()
    db.close()
    with open(os.path.join(hub_dir, "jupyterhub_cookie_secret"), "w") as f:
        f.write(os.urandom(32).hex())
    os.chmod(os.path.join(hub_dir, "jupyterhub_cookie_secret"), 0o600)
    with open(os.path.join(hub_dir, "roster.yaml"), "w") as f:
        f.write(f"courses:\n  {COURSE}:\n    students: [{', '.join(students)}]\n")

    service_url = f"sqlite:///{service_dir}/db/classroom.sqlite"
    make_private_sqlite(service_url)
    upgrade_database(service_url)
    store = ReleaseStore(os.path.join(service_dir, "store"))
    rng = random.Random(seed)
    released = make_notebook(rng, 80_000).encode()
    sha, size = store.add_bytes(released)
    release_files = {"hw1.ipynb": {"sha256": sha, "size": size, "mode": 0o644}}
    engine = create_engine(service_url)
    event_listen_wal(engine)
    total = 0
    with Session(engine) as s:
        s.add(Release(course=COURSE, material="hw1", version=1, created_by="bench", source="/src", files=release_files))
        for login in students:
            files = {}
            for name, data in (
                ("hw1.ipynb", make_notebook(rng, rng.randint(50_000, 100_000)).encode()),
                ("data.bin", rng.randbytes(data_bytes)),
            ):
                digest, n = store.add_bytes(data, private=True)
                files[name] = {"sha256": digest, "size": n, "mode": 0o644}
                total += n
            s.add(Delivered(course=COURSE, material="hw1", student=login, files=release_files, version=1))
            s.add(Submission(course=COURSE, material="hw1", student=login, kind="collected", files=files))
            s.add(AuditEvent(actor="bench", action="collect", course=COURSE, material="hw1", student=login))
        s.commit()
    engine.dispose()
    loc = Locations(
        config_file=os.path.join(root, "jupyterhub_config.py"),
        hub_db_url=hub_url,
        cookie_secret_file=os.path.join(hub_dir, "jupyterhub_cookie_secret"),
        roster_path=os.path.join(hub_dir, "roster.yaml"),
        identity_file=None,
        service_db_url=service_url,
        service_data_dir=service_dir,
        store_dir=os.path.join(service_dir, "store"),
    )
    return loc, [hub_dir, service_dir], total


def event_listen_wal(engine):
    # the service's database is in WAL mode (its own engine sets it on connect)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")


def disk_usage(path):
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def timed(fn, clear=()):
    """Seconds *fn* takes, with the folders *clear* removed and the disk synced first (untimed)."""
    for path in clear:
        shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["sync"], check=True)
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=300, help="students (default 300)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant (default 3)")
    parser.add_argument("--data-mb", type=float, default=10, help="MB of data.bin per student (default 10)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="10 students, 1 repeat (smoke run)")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # the migrations' and JupyterHub's progress lines
    n = 10 if args.quick else args.students
    repeat = 1 if args.quick else max(1, args.repeat)
    students = [f"bk-{i:04d}" for i in range(n)]
    root = tempfile.mkdtemp(prefix="classroomhub-bench-backup-")
    try:
        print(f"building the state of {n} students ({args.data_mb:g} MB data.bin + a notebook each) ...", flush=True)
        loc, folders, data = build_state(os.path.join(root, "state"), students, int(args.data_mb * 1024**2), args.seed)
        source_size = sum(disk_usage(f) for f in folders)
        print(f"   {data / 1024**2:.0f} MiB of submissions; state folders {source_size / 1024**2:.0f} MiB", flush=True)
        runs = {"ours": [], "cp": [], "tar": [], "restore": [], "cp back": []}
        sizes = {}

        def dest(name):
            return os.path.join(root, name)

        def ours():
            Backup(loc, dest("ours")).run()

        def cp():
            out = dest("cp")
            os.makedirs(out)
            subprocess.run(["cp", "-a", *folders, out], check=True)
            subprocess.run(["sync"], check=True)

        def tar():
            out = dest("tar")
            os.makedirs(out)
            subprocess.run(["tar", "-cf", os.path.join(out, "state.tar"), *folders], check=True, stderr=subprocess.DEVNULL)
            subprocess.run(["sync"], check=True)

        variants = [("ours", ours), ("cp", cp), ("tar", tar)]
        for turn in range(repeat):
            order = variants[turn % len(variants) :] + variants[: turn % len(variants)]
            for key, fn in order:
                runs[key].append(timed(fn, clear=[dest(key)]))
            for key in ("ours", "cp", "tar"):
                sizes[key] = disk_usage(os.path.join(root, key))
            # restore of our backup vs cp -a back (informational)
            target = os.path.join(root, "restored")
            into = Locations(
                config_file=loc.config_file,
                hub_db_url=f"sqlite:///{target}/hub/jupyterhub.sqlite",
                cookie_secret_file=f"{target}/hub/jupyterhub_cookie_secret",
                roster_path=f"{target}/hub/roster.yaml",
                identity_file=None,
                service_db_url=f"sqlite:///{target}/classroom/db/classroom.sqlite",
                service_data_dir=f"{target}/classroom",
                store_dir=f"{target}/classroom/store",
            )
            runs["restore"].append(timed(lambda: Restore(into, dest("ours")).run(), clear=[target]))
            back = dest("back")

            def cp_back():
                os.makedirs(back)
                subprocess.run(["cp", "-a", os.path.join(dest("cp"), "."), back], check=True)
                subprocess.run(["sync"], check=True)

            runs["cp back"].append(timed(cp_back, clear=[back]))
            shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(back, ignore_errors=True)

        med = {k: statistics.median(v) for k, v in runs.items()}
        print(f"\n   {n} students, {repeat} run(s) each, medians")
        print(f"   {'':<44} {'s':>8} {'MiB':>8} {'/ cp -a':>8}")
        for key, label in (
            ("cp", "cp -a + sync (unsafe while running)"),
            ("tar", "tar -cf + sync (unsafe while running)"),
            ("ours", "classroomhub backup (consistent)"),
        ):
            print(f"   {label:<44} {med[key]:8.2f} {sizes[key] / 1024**2:8.0f} {med[key] / med['cp']:8.2f}")
        label = "classroomhub restore (checks every object)"
        back = f"{med['restore'] / med['cp back']:8.2f} (vs cp -a back {med['cp back']:.2f} s)"
        print(f"   {label:<44} {med['restore']:8.2f} {'':>8} {back}")
        ratio = med["ours"] / med["cp"]
        verdict = "PASS" if ratio <= TARGET_TIME else "MISS"
        print(f"target backup time <= {TARGET_TIME:g}x cp -a, {n} students: {verdict} ({ratio:.2f}x)")
        size_ratio = sizes["ours"] / sizes["cp"]
        print(f"target backup size <= cp -a's, {n} students: {'PASS' if size_ratio <= 1.0 else 'MISS'} ({size_ratio:.3f}x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
