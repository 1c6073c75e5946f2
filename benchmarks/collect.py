"""Collection benchmark.

300 real system users (``useradd``; removed again at the end), each with
``~/data101/hw1/`` holding ``hw1.ipynb`` (a generated nbformat-4 notebook,
50-100 KB, different for every student, fixed seed) and ``data.bin`` (10 MB
of random bytes, different for every student: the store keeps each content
once, so identical files would flatter us; that case is measured apart, d.).
The folder is collected, all in the same run, from the same homes:

a. ours: ``Collector.collect`` (what "collect now" runs): one export worker
   per student, forked by the service's fork server and running as that
   student, opens the folder's regular files and passes their descriptors
   to the service, which copies them into the content-addressed store in the
   kernel and hashes its copy; one ``Submission`` row per student is written; at its default concurrency (2 x CPUs) and one student
   at a time, each run into an empty store and database.
b. nbgrader (pip-installed into a virtualenv of its own, default exchange,
   laid out by ``nbgrader release_assignment`` as the instructor):
   - submit: each student runs ``nbgrader submit hw1 --course data101`` in
     ``~/data101`` as themselves (copies the folder into the exchange's
     ``inbound/<student>+hw1+<timestamp>+<random>/`` and into their own
     cache), 2 x CPUs students at a time. The step students must take before
     an instructor can collect anything; ours has none (it reads the homes).
   - collect: the instructor runs ``nbgrader collect hw1`` in the course
     directory: copies each student's latest submission from ``inbound`` to
     ``submitted/<student>/hw1``.
   Compared: collect alone, and submit + collect.
c. the seed's way, as root, one student after another, one shell each::

       mkdir -p DEST/s && cp -r ~s/data101/hw1 DEST/s/hw1

d. informational: every ``data.bin`` the same bytes; ours at its default
   concurrency (the store keeps one copy) against c.

Every run starts with its destination empty and the file system synced
(untimed); a. (both), c. and nbgrader collect take turns going first. Run as
root from the repository root::

    PATH=$PWD/.venv/bin:$PWD/proxy/node_modules/.bin:$PATH python benchmarks/collect.py

``--students 300`` (default), ``--repeat`` (a., c., nbgrader collect; default
3), ``--submit-repeat`` (nbgrader submit, 1-3, default 1), ``--nbgrader-venv
PATH`` (reuse the virtualenv there if it has nbgrader, else create it there),
``--keep-venv`` (keep a virtualenv this run created), ``--quick`` (10
students, 1 repeat: a smoke run). Prints medians and ratios; ends with one
line per target: ours <= nbgrader's time, <= 1.2 x ``cp -r``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import glob
import logging
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import time

from classroomhub.service.files import runas
from classroomhub.service.domain.collect import Collector
from classroomhub.service.domain.context import ServiceContext
from classroomhub.service.db.models import open_database
from classroomhub.service.files.store import ReleaseStore, snapshot_folder
from _common import Users, interrupt_on_sigterm, make_notebook, ms, secs, shared_folder

COURSE, ASSIGNMENT = "data101", "hw1"
NOTEBOOK = "hw1.ipynb"
NOTEBOOK_KB = (45, 90)  # a target: the last cell overshoots it (50-100 KiB as written)
BIG_NAME = "data.bin"
BIG_BYTES = 10 * 1024**2
# the service's defaults (ClassroomService.max_collect_bytes / max_collect_file_bytes)
MAX_BYTES, MAX_FILE_BYTES = 1024**3, 100 * 1024**2

TARGET_NBGRADER = 1.0  # collection <= nbgrader's time
TARGET_CP = 1.2  # collection <= 1.2 x the cp -r baseline

BASELINE_SCRIPT = 'mkdir -p "$2" && cp -r "$1" "$2/{a}"'.format(a=ASSIGNMENT)



# -- the students' work ------------------------------------------------------------------


def folder_of(account):
    return os.path.join(account.home, COURSE, ASSIGNMENT)


def write_owned(path, data, account):
    with open(path, "wb") as f:
        f.write(data)
        os.fchown(f.fileno(), account.uid, account.gid)


def make_work(account, seed, number, big=None):
    """~/data101/hw1/{hw1.ipynb, data.bin}, owned by the student; returns {path: size}."""
    rng = random.Random(seed * 1_000_003 + number)
    folder = folder_of(account)
    for path in (os.path.dirname(folder), folder):
        os.makedirs(path, mode=0o755, exist_ok=True)
        os.chown(path, account.uid, account.gid)
    text = make_notebook(rng, rng.uniform(*NOTEBOOK_KB) * 1024, figure_bytes=(2_000, 12_000)).encode()
    write_owned(os.path.join(folder, NOTEBOOK), text, account)
    write_owned(os.path.join(folder, BIG_NAME), big if big is not None else rng.randbytes(BIG_BYTES), account)
    return {NOTEBOOK: len(text), BIG_NAME: BIG_BYTES}


def check_tree(folder, expected):
    found = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            found[os.path.relpath(os.path.join(dirpath, name), folder)] = os.path.getsize(os.path.join(dirpath, name))
    assert found == expected, (folder, found, expected)


# -- users ----------------------------------------------------------------------------------


def as_user(account, cwd, venv):
    """subprocess options: *account*'s ids and groups, a clean environment with nbgrader's venv first."""
    return {
        "user": account.uid,
        "group": account.gid,
        "extra_groups": list(account.groups),
        "umask": 0o022,
        "cwd": cwd,
        "env": {"PATH": f"{venv}/bin:/usr/bin:/bin", "HOME": account.home, "LANG": "C.UTF-8"},
        "capture_output": True,
        "text": True,
    }


def checked(result, what):
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{what} failed (exit status {result.returncode}): " + " | ".join(tail))
    return result


def remove(*paths):
    subprocess.run(["rm", "-rf", "--one-file-system", *paths], check=True)


def disk_usage(path):
    out = subprocess.run(["du", "-s", "--block-size=1", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


# -- nbgrader's virtualenv ----------------------------------------------------------------


class Venv:
    """nbgrader in a virtualenv of its own: reused if there, else created (and removed unless kept)."""

    def __init__(self, path, python, keep):
        self.path, self.python, self.keep = path, python, keep
        self.created = False
        self.error = ""
        self.version = ""
        self.seconds = 0.0

    @property
    def nbgrader(self):
        return os.path.join(self.path, "bin", "nbgrader")

    def ensure(self):
        tic = time.perf_counter()
        try:
            if not os.access(self.nbgrader, os.X_OK):
                if os.path.exists(self.path) and os.listdir(self.path):
                    raise RuntimeError(f"{self.path} exists but holds no nbgrader; not ours to touch")
                self.created = True
                log = os.path.join(self.path + ".install.log")
                pip = [os.path.join(self.path, "bin", "pip"), "install", "--disable-pip-version-check", "nbgrader"]
                for command, what in ([self.python, "-m", "venv", self.path], f"{self.python} -m venv"), (pip, "pip install nbgrader"):
                    with open(log, "w") as out:
                        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=1800)
                    if result.returncode != 0:  # the output went to the log, not to result
                        with open(log) as f:
                            tail = " | ".join(f.read().strip().splitlines()[-3:]) or "no output"
                        raise RuntimeError(f"{what} failed (exit status {result.returncode}): {tail}")
                os.unlink(log)
            os.chmod(self.path, 0o755)  # run by the students and the instructor
            self.version = checked(
                subprocess.run([self.nbgrader, "--version"], capture_output=True, text=True), "nbgrader --version"
            ).stdout.strip().splitlines()[-1].replace("nbgrader version ", "")
        except Exception as e:  # noqa: BLE001 - reported, the other comparisons still run
            self.error = str(e)
        self.seconds = time.perf_counter() - tic
        return not self.error

    def cleanup(self):
        if self.created and not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)
            if os.path.exists(self.path + ".install.log"):
                os.unlink(self.path + ".install.log")
            return f"{self.path} removed"
        return f"{self.path} kept"


# -- timing ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, root, accounts, expected, instructor, venv):
        self.root = root
        self.accounts = accounts  # {login: Account}
        self.expected = expected  # {login: {path: size}}
        self.instructor = instructor
        self.venv = venv
        self.default_concurrency = 2 * (os.cpu_count() or 1)  # Collector's default
        self.log = logging.getLogger("classroomhub.benchmarks.collect")
        self.runs = 0
        self.runner = None  # the service's worker fork server, started by run()
        # nbgrader's layout
        self.exchange = os.path.join(root, "exchange")
        self.course = os.path.join(instructor.home, COURSE)
        self.inbound = os.path.join(self.exchange, COURSE, "inbound")
        self.submitted = os.path.join(self.course, "submitted")

    # a. ours

    async def ours(self, students, concurrency, check=True):
        """Collector.collect into an empty store and database; returns (seconds, store bytes, objects)."""
        self.runs += 1
        where = os.path.join(self.root, f"ours{self.runs}")
        store = ReleaseStore(os.path.join(where, "store"))
        sessions = open_database(f"sqlite:///{where}/b.sqlite")
        # no hub: it is only asked by the due-date scheduler
        context = ServiceContext(sessions, store, self.log, runner=self.runner, worker_timeout=600, concurrency=concurrency)
        collector = Collector(context, max_bytes=MAX_BYTES, max_file_bytes=MAX_FILE_BYTES)
        os.sync()
        tic = time.perf_counter()
        rows = await collector.collect(COURSE, ASSIGNMENT, students)
        seconds = time.perf_counter() - tic
        try:
            assert len(rows) == len(students)
            for row in rows:
                assert not row.error and not row.skipped, (row.student, row.error, row.skipped)
                if check:
                    got = {p: m["size"] for p, m in row.files.items()}
                    assert got == self.expected[row.student], (row.student, got)
            # collected work goes to the store's private area
            objects = len(glob.glob(os.path.join(store.private, "*", "*")))
            used = disk_usage(store.private)
        finally:
            sessions.kw["bind"].dispose()
            remove(where)
        return seconds, used, objects

    async def fixed_cost(self, login, repeat=20):
        """One snapshot of an empty folder (a worker, no data), medians:
        (snapshot_folder with a new process, the same with the fork server, Collector.snapshot)."""
        account = self.accounts[login]
        empty = os.path.join(account.home, COURSE, "empty")
        os.makedirs(empty)
        os.chown(empty, account.uid, account.gid)
        where = os.path.join(self.root, "fixed")
        store = ReleaseStore(os.path.join(where, "store"))
        sessions = open_database(f"sqlite:///{where}/b.sqlite")
        context = ServiceContext(sessions, store, self.log, runner=self.runner, worker_timeout=600)
        collector = Collector(context, max_bytes=MAX_BYTES, max_file_bytes=MAX_FILE_BYTES)
        process, forked, row = [], [], []
        try:
            for _ in range(repeat):
                for runner, times in ((runas.Subprocesses, process), (self.runner, forked)):
                    tic = time.perf_counter()
                    files, _ = await snapshot_folder(store, account, [COURSE, "empty"], max_bytes=MAX_BYTES, runner=runner)
                    times.append(time.perf_counter() - tic)
                    assert not files
                tic = time.perf_counter()
                got = await collector.snapshot(COURSE, "empty", login, "collected")
                row.append(time.perf_counter() - tic)
                assert not got.error and not got.files, got.error
        finally:
            sessions.kw["bind"].dispose()
            remove(where, empty)
        return statistics.median(process), statistics.median(forked), statistics.median(row)

    # c. the seed's loop

    def baseline(self, students):
        dest = os.path.join(self.root, "cp")
        os.makedirs(dest)
        os.sync()
        tic = time.perf_counter()
        for login in students:  # one student after another, one shell each
            subprocess.run(["sh", "-c", BASELINE_SCRIPT, "sh", folder_of(self.accounts[login]), os.path.join(dest, login)], check=True)
        seconds = time.perf_counter() - tic
        for login in (students[0], students[-1]):
            check_tree(os.path.join(dest, login, ASSIGNMENT), self.expected[login])
        remove(dest)
        return seconds

    # b. nbgrader

    def nbgrader_setup(self):
        """Course directory and config, exchange, and the assignment released (as the instructor)."""
        ins = self.instructor
        os.makedirs(self.exchange)
        os.chown(self.exchange, ins.uid, ins.gid)
        os.chmod(self.exchange, 0o777)  # nbgrader's docs: the exchange is writable by everyone
        release = os.path.join(self.course, "release", ASSIGNMENT)
        os.makedirs(release)
        with open(os.path.join(release, NOTEBOOK), "w") as f:
            f.write(make_notebook(random.Random(0), 20 * 1024))
        with open(os.path.join(self.course, "nbgrader_config.py"), "w") as f:
            f.write(
                "c = get_config()\n"
                f"c.CourseDirectory.root = {self.course!r}\n"
                f"c.CourseDirectory.course_id = {COURSE!r}\n"
                f"c.Exchange.root = {self.exchange!r}\n"
            )
        subprocess.run(["chown", "-R", f"{ins.uid}:{ins.gid}", self.course], check=True)
        checked(
            subprocess.run([self.venv.nbgrader, "release_assignment", ASSIGNMENT], **as_user(ins, self.course, self.venv.path)),
            "nbgrader release_assignment",
        )

    def submit_one(self, login):
        account = self.accounts[login]
        cmd = [self.venv.nbgrader, "submit", ASSIGNMENT, f"--course={COURSE}", f"--Exchange.root={self.exchange}"]
        tic = time.perf_counter()
        checked(subprocess.run(cmd, **as_user(account, os.path.dirname(folder_of(account)), self.venv.path)), f"nbgrader submit as {login}")
        return time.perf_counter() - tic

    def submit(self, students, concurrency):
        """Every student submits (*concurrency* at a time); returns (wall seconds, [seconds per student])."""
        remove(*glob.glob(os.path.join(self.inbound, "*")))
        remove(*(os.path.join(self.accounts[s].home, ".local") for s in students))  # their nbgrader caches
        os.sync()
        tic = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            each = list(pool.map(self.submit_one, students))
        seconds = time.perf_counter() - tic
        assert len(os.listdir(self.inbound)) == len(students), len(os.listdir(self.inbound))
        return seconds, each

    def collect(self, students):
        remove(self.submitted)
        os.sync()
        tic = time.perf_counter()
        result = subprocess.run([self.venv.nbgrader, "collect", ASSIGNMENT], **as_user(self.instructor, self.course, self.venv.path))
        seconds = time.perf_counter() - tic
        checked(result, "nbgrader collect")
        assert sorted(os.listdir(self.submitted)) == sorted(students), len(os.listdir(self.submitted))
        for login in (students[0], students[-1]):
            expected = {**self.expected[login], "timestamp.txt": None, "submission_secret.txt": None}
            folder = os.path.join(self.submitted, login, ASSIGNMENT)
            got = {p: os.path.getsize(os.path.join(folder, p)) for p in os.listdir(folder)}
            assert got.keys() == expected.keys() and all(got[p] == s for p, s in self.expected[login].items()), (login, got)
        remove(self.submitted)
        return seconds


async def bench_size(bench, students, repeat, submit_repeat, seed):
    n = len(students)
    c = bench.default_concurrency
    process, forked, row = await bench.fixed_cost(students[0])
    print(
        f"one snapshot of an empty folder (median of 20): export worker {ms(process).strip()} ms as a new process,"
        f" {ms(forked).strip()} ms forked by the fork server; {ms(row).strip()} ms with its row (Collector.snapshot)"
    )
    print(f"\n{n} students (median of {repeat}; nbgrader submit: {submit_repeat})")
    runs = {"ours": [], "ours1": [], "base": [], "nbc": [], "nbs": []}
    per_submit = []
    nb = not bench.venv.error
    if nb:
        try:
            bench.nbgrader_setup()
            for _ in range(submit_repeat):
                seconds, each = bench.submit(students, c)
                runs["nbs"].append(seconds)
                per_submit += each
        except Exception as e:  # noqa: BLE001 - reported, the other comparisons still run
            bench.venv.error = f"{e}"
            nb = False
    variants = [
        ("ours", lambda: bench.ours(students, None)),
        ("ours1", lambda: bench.ours(students, 1)),
        ("base", lambda: asyncio.to_thread(bench.baseline, students)),
    ]
    if nb:
        variants.append(("nbc", lambda: asyncio.to_thread(bench.collect, students)))
    stored = []
    for r in range(repeat):
        k = r % len(variants)
        for key, run in variants[k:] + variants[:k]:
            try:
                result = await run()
            except Exception as e:  # noqa: BLE001
                if key != "nbc":
                    raise
                bench.venv.error = f"nbgrader collect: {e}"
                variants = [v for v in variants if v[0] != "nbc"]
                continue
            if key.startswith("ours"):
                result, used, objects = result
                stored.append((used, objects))
            runs[key].append(result)
    med = {k: statistics.median(v) for k, v in runs.items() if v}
    base = med["base"]
    data = sum(sum(bench.expected[s].values()) for s in students)
    print(f"   {data / 1024**2:.0f} MiB in {2 * n} files; ours stored {stored[0][0] / 1024**2:.0f} MiB in {stored[0][1]} objects")
    print(f"   collection                                  {'s':>8} {'ms/student':>11} {'/ cp -r':>8} {'/ nbg collect':>13}")

    def line(label, seconds):
        rel = f"{seconds / med['nbc']:13.2f}" if "nbc" in med else f"{'-':>13}"
        print(f"   {label:<43} {secs(seconds)} {ms(seconds / n):>11} {seconds / base:8.2f} {rel}")

    line("cp -r, sequential, as root (seed)", base)
    line(f"ours, {c} workers at a time (default)", med["ours"])
    line("ours, 1 worker at a time", med["ours1"])
    if "nbc" in med:
        line("nbgrader collect (instructor)", med["nbc"])
    if "nbs" in med:
        line(f"nbgrader submit, all students, {c} at a time", med["nbs"])
        if "nbc" in med:
            line("nbgrader submit + collect", med["nbs"] + med["nbc"])
        print(f"   one nbgrader submit: median {statistics.median(per_submit):.2f} s, max {max(per_submit):.2f} s")
    if not nb or "nbc" not in med:
        print(f"   nbgrader: NOT RUN: {bench.venv.error}")

    # d. every data.bin the same bytes: the store keeps one copy (informational)
    same = random.Random(seed).randbytes(BIG_BYTES)
    for login in students:
        write_owned(os.path.join(folder_of(bench.accounts[login]), BIG_NAME), same, bench.accounts[login])
    dedup, used, objects = [], 0, 0
    for _ in range(repeat):
        seconds, used, objects = await bench.ours(students, None)
        dedup.append(seconds)
    dd = statistics.median(dedup)
    print(f"   d. identical data.bin everywhere, ours, {c} workers: {dd:.2f} s = {dd / base:.2f}x cp -r"
          f" ({'%.2fx nbgrader collect, ' % (dd / med['nbc']) if 'nbc' in med else ''}stored {used / 1024**2:.0f} MiB in {objects} objects)")
    return {"med": med, "dedup": dd}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=300, help="students (default 300)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of ours, cp -r and nbgrader collect (default 3)")
    parser.add_argument("--submit-repeat", type=int, default=1, help="repeats of nbgrader submit (1-3, default 1)")
    parser.add_argument("--nbgrader-venv", help="virtualenv with nbgrader: reused if there, else created there")
    parser.add_argument("--keep-venv", action="store_true", help="keep a virtualenv this run created")
    parser.add_argument("--python", default="/usr/bin/python3", help="python for nbgrader's virtualenv (readable by all users)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="10 students, 1 repeat (smoke run)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("needs root: creates system users and collects as them")
    n = 10 if args.quick else args.students
    repeat = 1 if args.quick else max(1, args.repeat)
    submit_repeat = 1 if args.quick else min(3, max(1, args.submit_repeat))

    interrupt_on_sigterm()
    started = time.perf_counter()
    tag = "cb" + secrets.token_hex(2)
    users = Users()
    venv = Venv(os.path.abspath(args.nbgrader_venv or f"/tmp/classroomhub-{tag}-nbgrader"), args.python, args.keep_venv)
    root = shared_folder(tag)
    try:
        # homes, nbgrader's inbound and the students' caches, one collection at a time
        need = 4.5 * n * (BIG_BYTES + NOTEBOOK_KB[1] * 1024)
        for path in (root, "/home"):
            free = shutil.disk_usage(path).free
            print(f"disk: {free / 1024**3:.0f} GiB free under {path}, up to {need / 1024**3:.1f} GiB needed")
            if free < need:
                sys.exit(f"not enough free disk under {path}")

        if venv.ensure():
            how = f"installed in {venv.seconds:.0f} s" if venv.created else "reused"
            print(f"nbgrader {venv.version}: {venv.path} ({how})")
        else:
            print(f"nbgrader: NOT AVAILABLE, its comparisons are left out: {venv.error}")

        tic = time.perf_counter()
        instructor = runas.Account.of(users.create(f"{tag}-ins").pw_name)
        logins = [f"{tag}-{i:03d}" for i in range(n)]
        for login in logins:
            users.create(login)
        accounts = {login: runas.Account.of(login) for login in logins}
        print(f"setup: {len(users.made)} system users created in {time.perf_counter() - tic:.1f} s ({tag}-*)")

        tic = time.perf_counter()
        expected = {login: make_work(accounts[login], args.seed, i) for i, login in enumerate(logins)}
        kb = sorted(e[NOTEBOOK] / 1024 for e in expected.values())
        print(
            f"work: ~/{COURSE}/{ASSIGNMENT}/ = {NOTEBOOK} ({kb[0]:.0f}-{kb[-1]:.0f} KiB, median {statistics.median(kb):.0f} KiB)"
            f" + {BIG_NAME} ({BIG_BYTES / 1024**2:.0f} MiB of random bytes, different for each student), seed {args.seed};"
            f" written in {time.perf_counter() - tic:.1f} s"
        )
        bench = Bench(root, accounts, expected, instructor, venv)
        return asyncio.run(run(args, bench, logins, repeat, submit_repeat, started))
    finally:
        tic = time.perf_counter()
        users.remove_all()
        shutil.rmtree(root, ignore_errors=True)
        kept = venv.cleanup()
        print(f"cleanup: users and {root} removed, {kept}, in {time.perf_counter() - tic:.1f} s", file=sys.stderr)


async def run(args, bench, logins, repeat, submit_repeat, started):
    bench.runner = runas.ForkServer(os.path.join(bench.root, "run"))  # as the service runs (fork_server=True)
    await bench.runner.start()
    try:
        res = await bench_size(bench, logins, repeat, submit_repeat, args.seed)
    finally:
        await bench.runner.stop()
    med, n = res["med"], len(logins)
    c = bench.default_concurrency
    print(f"\nruntime {time.perf_counter() - started:.0f} s")
    for key, label in (("ours", f"{c} workers (default)"), ("ours1", "1 worker")):
        for refs, what in ((("nbc",), "nbgrader collect"), (("nbs", "nbc"), "nbgrader submit + collect")):
            name = f"target collection <= {what}, {n} students, ours {label}"
            if not all(ref in med for ref in refs):
                print(f"{name}: NOT RUN ({bench.venv.error})")
                continue
            theirs = sum(med[ref] for ref in refs)
            ratio = med[key] / theirs
            print(f"{name}: {'PASS' if ratio <= TARGET_NBGRADER else 'MISS'} ({ratio:.2f}x)")
        ratio = med[key] / med["base"]
        verdict = "PASS" if ratio <= TARGET_CP else "MISS"
        print(f"target collection <= {TARGET_CP:g}x cp -r, {n} students, ours {label}: {verdict} ({ratio:.2f}x)")
    return res


if __name__ == "__main__":
    main()
