"""Content-release benchmark.

A material of 100 notebooks (generated nbformat-4 JSON, 20-200 KB each,
fixed seed) and one 10 MB file, in an instructor's home, released to 50 and
300 real system users (``useradd``; removed again at the end):

a. import: ``import_folder`` of the 101 files as the instructor (informational).
b. full release into empty homes, ours (``deliver_all``: one worker per
   student, running as that student, forked by the service's fork server)
   at its default concurrency and one student at a time, and for comparison
   with a new worker process per student. Baseline, same run, same source folder: the seed's
   root script, one student after another, one shell per student::

       mkdir -p ~s/data101 && cp -r SRC ~s/data101/week1 && chown -R s: ~s/data101

c. re-release with one notebook changed (``previous`` = what the service
   records of the delivery before, stamps included), into the homes b.
   filled; ours, both concurrencies.
d. shared dataset: the 10 MB file released with ``shared=True``; added disk
   usage of each home (``du -s``) against the dataset's size.

Every full release starts from empty homes (the delivered folders are
removed and the file system synced, untimed); the three variants of b. take
turns going first. Run as root from the repository root::

    PATH=$PWD/.venv/bin:$PWD/proxy/node_modules/.bin:$PATH python benchmarks/release.py

``--students 50 300`` (default), ``--repeat`` (at least 3, default 3),
``--large-repeat`` (repeats above 100 students, default 2), ``--quick``
(10 students, 1 repeat: a smoke run). Prints medians and ratios; ends with
one line per target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import time

from classroomhub.service.files import runas
from classroomhub.service.files.delivery import DeliveryJob, deliver_all
from classroomhub.service.files.store import ReleaseStore, import_folder
from _common import WORDS, Users, interrupt_on_sigterm, make_notebook, ms, secs, shared_folder

COURSE, MATERIAL, DATASET = "data101", "week1", "dataset"
NOTEBOOKS = 100
NOTEBOOK_KB = (20, 200)
BIG_BYTES = 10 * 1024**2
BIG_NAME = "data/measurements.bin"

TARGET_FULL = 1.2  # full release <= 1.2 x the cp -r baseline
TARGET_UPDATE = 0.10  # one-file update <= 10 % of a full release
TARGET_SHARED = 0.01  # shared dataset <= 1 % of its size per student

BASELINE_SCRIPT = 'mkdir -p "$1/{c}" && cp -r "$2" "$1/{c}/{m}" && chown -R "$3": "$1/{c}"'.format(c=COURSE, m=MATERIAL)



# -- the material ------------------------------------------------------------------------


def make_material(folder, account, seed):
    """100 notebooks under notebooks/ and one 10 MB file, owned by *account*."""
    rng = random.Random(seed)
    lo, hi = (math.log(kb * 1024) for kb in NOTEBOOK_KB)
    texts = {}
    for i in range(NOTEBOOKS):
        rel = f"notebooks/{i:03d}-{rng.choice(WORDS)}.ipynb"
        texts[rel] = make_notebook(rng, math.exp(rng.uniform(lo, hi)))
    for rel, text in texts.items():
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    big = os.path.join(folder, BIG_NAME)
    os.makedirs(os.path.dirname(big), exist_ok=True)
    with open(big, "wb") as f:
        f.write(rng.randbytes(BIG_BYTES))
    subprocess.run(["chown", "-R", f"{account.uid}:{account.gid}", folder], check=True)
    return texts


def changed_notebook(text):
    """The same notebook with one more cell (what an instructor's fix looks like)."""
    nb = json.loads(text)
    nb["cells"].append({"cell_type": "markdown", "id": "fix1", "metadata": {}, "source": ["**Correction:** use the median.\n"]})
    return json.dumps(nb, indent=1) + "\n"


def remembered(files, report):
    """{path: {sha256, size, stamp}}: what the service records after a delivery."""
    return {
        r["path"]: {"sha256": files[r["path"]]["sha256"], "size": files[r["path"]]["size"], "stamp": r.get("stamp")}
        for r in report.results
        if r["status"] in ("added", "updated", "unchanged", "restored")
    }


# -- users, homes -----------------------------------------------------------------------------


def wipe(homes, name=COURSE):
    """Remove ~/<name> from every home and flush the file system (untimed)."""
    subprocess.run(["rm", "-rf", "--one-file-system", *(os.path.join(h, name) for h in homes)], check=True)
    os.sync()


def disk_usage(path):
    out = subprocess.run(["du", "-s", "--block-size=1", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def check_tree(account, files):
    """The delivered folder holds *files*, all owned by the student."""
    root = os.path.join(account.home, COURSE, MATERIAL)
    found = {}
    for dirpath, _, names in os.walk(root):
        st = os.stat(dirpath)
        assert (st.st_uid, st.st_gid) == (account.uid, account.gid), dirpath
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            assert (st.st_uid, st.st_gid) == (account.uid, account.gid), name
            found[os.path.relpath(os.path.join(dirpath, name), root)] = st.st_size
    assert found == {p: m["size"] for p, m in files.items()}, (account.name, len(found))


# -- timing ---------------------------------------------------------------------------------


def expect(reports, **counts):
    for report in reports:
        assert report.ok, (report.student, report.error, [r for r in report.results if r["status"] == "failed"][:3])
        got = report.counts()
        assert all(got[k] == v for k, v in counts.items()), (report.student, got)


class Bench:
    def __init__(self, store, src, files_a, files_b, accounts):
        self.store, self.src = store, src
        self.files_a, self.files_b = files_a, files_b
        self.accounts = accounts  # {login: Account}
        self.default_concurrency = 2 * (os.cpu_count() or 1)  # deliver_all's default
        self.runner = None  # the service's fork server, set by run()
        self.last = {}  # login -> what the service would have recorded of the last delivery

    def homes(self, students):
        return [self.accounts[s].home for s in students]

    async def ours_full(self, students, concurrency, per_process=False):
        wipe(self.homes(students))
        rel = DeliveryJob(COURSE, MATERIAL, 1, self.files_a)
        runner = runas.Subprocesses if per_process else self.runner
        tic = time.perf_counter()
        reports = await deliver_all(self.store, rel, students, concurrency=concurrency, runner=runner)
        seconds = time.perf_counter() - tic
        expect(reports, added=len(self.files_a))
        self.last = {r.student: remembered(self.files_a, r) for r in reports}
        return seconds

    def baseline_full(self, students):
        wipe(self.homes(students))
        tic = time.perf_counter()
        for login in students:  # the seed's loop: one student after another
            subprocess.run(["sh", "-c", BASELINE_SCRIPT, "sh", self.accounts[login].home, self.src, login], check=True)
        return time.perf_counter() - tic

    async def update(self, students, version, concurrency):
        """Release *version*: one notebook differs from what the homes hold."""
        new, old = (self.files_b, self.files_a) if version % 2 == 0 else (self.files_a, self.files_b)
        rel = DeliveryJob(COURSE, MATERIAL, version, new)
        previous = {s: self.last[s] for s in students}  # with the stamps, as the service keeps them
        os.sync()
        tic = time.perf_counter()
        reports = await deliver_all(
            self.store, rel, students, previous=previous, concurrency=concurrency, runner=self.runner
        )
        seconds = time.perf_counter() - tic
        expect(reports, updated=1, unchanged=len(new) - 1)
        self.last = {r.student: remembered(new, r) for r in reports}
        return seconds

    async def shared(self, students, meta):
        homes = self.homes(students)
        wipe(homes)
        before = [disk_usage(h) for h in homes]
        rel = DeliveryJob(COURSE, DATASET, 1, {os.path.basename(BIG_NAME): meta}, shared=True)
        tic = time.perf_counter()
        reports = await deliver_all(self.store, rel, students, runner=self.runner)
        seconds = time.perf_counter() - tic
        expect(reports, added=1)
        added = [disk_usage(h) - b for h, b in zip(homes, before)]
        link = os.path.join(homes[0], COURSE, DATASET, os.path.basename(BIG_NAME))
        assert os.path.getsize(link) == BIG_BYTES, link  # reachable through the link
        return seconds, added

    async def worker_start(self, login, runner, n=20):
        """A worker's fixed cost: a deliver job with no files."""
        account = self.accounts[login]
        job = {"home": account.home, "base": [COURSE, MATERIAL], "version": 1, "restore_deleted": False, "files": []}
        times = []
        for _ in range(n):
            tic = time.perf_counter()
            await runner.run_json(account, "deliver", job, 60)
            times.append(time.perf_counter() - tic)
        return statistics.median(times)


async def bench_size(bench, students, repeat):
    n = len(students)
    c = bench.default_concurrency
    print(f"\n{n} students (median of {repeat})")

    # b. full release
    runs = {"base": [], "ours": [], "ours1": [], "proc": []}
    variants = [
        ("base", lambda: asyncio.to_thread(bench.baseline_full, students)),
        ("ours", lambda: bench.ours_full(students, c)),
        ("ours1", lambda: bench.ours_full(students, 1)),
        ("proc", lambda: bench.ours_full(students, c, per_process=True)),
    ]
    for r in range(repeat):
        for key, run in variants[r % 4 :] + variants[: r % 4]:
            runs[key].append(await run())
    # the homes hold v1 as ours delivered it; spot-check the first and last student
    await bench.ours_full(students, c)
    for login in (students[0], students[-1]):
        check_tree(bench.accounts[login], bench.files_a)
    full = {k: statistics.median(v) for k, v in runs.items()}
    print(f"   b. full release from empty homes        {'s':>8} {'ms/student':>11} {'/ cp -r':>8}")
    print(f"      cp -r + chown -R, sequential (seed)  {secs(full['base'])} {ms(full['base'] / n):>11} {1:8.2f}")
    print(f"      ours, {c} workers at a time (default)  {secs(full['ours'])} {ms(full['ours'] / n):>11} {full['ours'] / full['base']:8.2f}")
    print(f"      ours, 1 worker at a time             {secs(full['ours1'])} {ms(full['ours1'] / n):>11} {full['ours1'] / full['base']:8.2f}")
    print(f"      ours, {c} at a time, a process each    {secs(full['proc'])} {ms(full['proc'] / n):>11} {full['proc'] / full['base']:8.2f}")

    # c. one changed notebook
    upd = {"ours": [], "ours1": []}
    version = 2
    for r in range(repeat):
        for key, conc in (("ours", c), ("ours1", 1)):
            upd[key].append(await bench.update(students, version, conc))
            version += 1
    update = {k: statistics.median(v) for k, v in upd.items()}
    print(f"   c. re-release, one notebook changed     {'s':>8} {'ms/student':>11} {'/ full':>8}")
    print(f"      ours, {c} workers at a time (default)  {secs(update['ours'])} {ms(update['ours'] / n):>11} {update['ours'] / full['ours']:8.3f}")
    print(f"      ours, 1 worker at a time             {secs(update['ours1'])} {ms(update['ours1'] / n):>11} {update['ours1'] / full['ours1']:8.3f}")

    # d. shared dataset
    meta = bench.files_a[BIG_NAME]
    times, added = [], []
    for _ in range(repeat):
        seconds, per_home = await bench.shared(students, meta)
        times.append(seconds)
        added += per_home
    shared = statistics.median(added)
    print(f"   d. shared 10 MB dataset: {statistics.median(times):.2f} s; added per home median {shared / 1024:.1f} KiB, "
          f"max {max(added) / 1024:.1f} KiB = {shared / BIG_BYTES:.2%} of {BIG_BYTES / 1024**2:.0f} MiB (includes ~/{COURSE}/ itself)")
    wipe(bench.homes(students))
    return {"full": full, "update": update, "shared": max(added)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, nargs="+", default=[50, 300], help="roster sizes (default 50 300)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats up to 100 students (at least 3)")
    parser.add_argument("--large-repeat", type=int, default=2, help="repeats above 100 students (1-3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="10 students, 1 repeat (smoke run)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("needs root: creates system users and delivers as them")
    sizes = [10] if args.quick else sorted(args.students)

    def repeats(n):
        if args.quick:
            return 1
        return max(3, args.repeat) if n <= 100 else min(3, max(1, args.large_repeat))

    interrupt_on_sigterm()
    started = time.perf_counter()
    tag = "rb" + secrets.token_hex(2)
    users = Users()
    root = shared_folder(tag)
    try:
        tic = time.perf_counter()
        teacher = runas.Account.of(users.create(f"{tag}-ins").pw_name)
        logins = [f"{tag}-{i:03d}" for i in range(max(sizes))]
        for login in logins:
            users.create(login)
        accounts = {login: runas.Account.of(login) for login in logins}
        print(f"setup: {len(users.made)} system users created in {time.perf_counter() - tic:.1f} s ({tag}-*)")

        src = os.path.join(teacher.home, "week1")
        texts = make_material(src, teacher, args.seed)
        sizes_kb = sorted(len(t.encode()) / 1024 for t in texts.values())
        total = sum(sizes_kb) * 1024 + BIG_BYTES
        print(
            f"material: {NOTEBOOKS} notebooks ({sizes_kb[0]:.0f}-{sizes_kb[-1]:.0f} KiB, median {statistics.median(sizes_kb):.0f} KiB)"
            f" + one {BIG_BYTES / 1024**2:.0f} MiB file = {total / 1024**2:.1f} MiB, seed {args.seed}"
        )
        return asyncio.run(run(args, sizes, repeats, root, teacher, src, texts, accounts, started))
    finally:
        tic = time.perf_counter()
        users.remove_all()
        shutil.rmtree(root, ignore_errors=True)
        print(f"cleanup: users and {root} removed in {time.perf_counter() - tic:.1f} s", file=sys.stderr)


async def run(args, sizes, repeats, root, teacher, src, texts, accounts, started):
    # a. import, as the instructor, each time into an empty store
    times = []
    for i in range(3):
        store = ReleaseStore(os.path.join(root, f"store{i}"))
        os.sync()
        tic = time.perf_counter()
        files, skipped = await import_folder(store, teacher, src)
        times.append(time.perf_counter() - tic)
        assert len(files) == NOTEBOOKS + 1 and not skipped, (len(files), skipped)
        if i:
            shutil.rmtree(store.root)
    store = ReleaseStore(os.path.join(root, "store0"))
    print(f"a. import_folder of the {len(files)} files as the instructor: {ms(statistics.median(times)).strip()} ms (median of 3, empty store)")

    # version 2: one notebook changed
    changed = sorted(texts)[NOTEBOOKS // 2]
    sha, size = store.add_bytes(changed_notebook(texts[changed]).encode())
    files_b = {**files, changed: {**files[changed], "sha256": sha, "size": size}}
    bench = Bench(store, src, files, files_b, accounts)

    server = runas.ForkServer(os.path.join(root, "run"))
    await server.start()
    bench.runner = server
    try:
        return await run_sizes(args, sizes, repeats, bench, accounts, started)
    finally:
        await server.stop()


async def run_sizes(args, sizes, repeats, bench, accounts, started):
    login = sorted(accounts)[0]
    for label, runner in (("a new process", runas.Subprocesses), ("the fork server (the service's way)", bench.runner)):
        start = await bench.worker_start(login, runner)
        print(f"   one worker's fixed cost with {label}: {ms(start).strip()} ms (median of 20, a job with no files)")

    results = {}
    for n in sizes:
        results[n] = await bench_size(bench, sorted(accounts)[:n], repeats(n))

    print(f"\nruntime {time.perf_counter() - started:.0f} s")
    c = bench.default_concurrency
    for n, res in results.items():
        full, update = res["full"], res["update"]
        for key, label in (("ours", f"{c} workers (default) vs the seed's sequential loop"), ("ours1", "1 worker vs the seed's sequential loop")):
            ratio = full[key] / full["base"]
            verdict = "PASS" if ratio <= TARGET_FULL else "MISS"
            print(f"target full release <= {TARGET_FULL:g}x cp -r, {n} students, {label}: {verdict} ({ratio:.2f}x)")
        ratio = update["ours"] / full["ours"]
        verdict = "PASS" if ratio <= TARGET_UPDATE else "MISS"
        print(f"target one-file update <= {TARGET_UPDATE:.0%} of a full release, {n} students: {verdict} ({ratio:.1%}; 1 worker: {update['ours1'] / full['ours1']:.1%})")
        ratio = res["shared"] / BIG_BYTES
        verdict = "PASS" if ratio <= TARGET_SHARED else "MISS"
        print(f"target shared dataset <= {TARGET_SHARED:.0%} of its size per student, {n} students: {verdict} (worst home {ratio:.2%})")
    return results


if __name__ == "__main__":
    main()
