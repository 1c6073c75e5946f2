"""A hostile student at the due date, against the real collection and release
engines: real system users, real worker processes (both runners), the real
cgroup v1 freezer.

What a student does after their due date must never enter the deadline
snapshot unflagged; they cannot stop the worker that copies their work; one
student's home never holds up everyone else's release; their syncs and
hand-ins are bounded.
"""

import asyncio
import logging
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from classroomhub.service.files import runas
from classroomhub.service.domain.collect import Collector
from classroomhub.service.domain.context import ServiceContext
from classroomhub.service.files.freezer import Freezer, freezer_cgroup_of, processes_of
from classroomhub.service.domain.limits import TooMany
from classroomhub.service.db.models import DeliveryReport, Release, open_database
from classroomhub.service.domain.releases import ReleaseService

from fixtures.accounts import stored
from fixtures.hostile import as_user, student_loop

# accounts, homes, store: fixtures/accounts.py; both ways of starting workers
# (a process per home, the fork server) for every test
pytestmark = [
    pytest.mark.root("creates system users and works as them"),
    pytest.mark.usefixtures("runner"),
    pytest.mark.skipif(
        not os.access("/sys/fs/cgroup/freezer/cgroup.procs", os.W_OK), reason="needs a writable cgroup v1 freezer"
    ),
]

TAG = "h5" + secrets.token_hex(2)
ALICE, BOB, STUCK = f"{TAG}-alice", f"{TAG}-bob", f"{TAG}-stuck"
OTHERS = [f"{TAG}-s{i:02d}" for i in range(10)]
PEOPLE = [ALICE, BOB, STUCK, *OTHERS]
COURSE, MATERIAL = "data101", "hw1"
LOG = logging.getLogger("test")


@pytest.fixture
def freezer():
    freezer = Freezer(parent=f"classroomhub-{TAG}", log=LOG)
    yield freezer
    freezer.sweep()  # even after a failure: nobody stays frozen
    try:
        os.rmdir(freezer.base)
    except FileNotFoundError:
        pass


@pytest.fixture
def sessions(tmp_path):
    sessions = open_database(f"sqlite:///{tmp_path}/service.sqlite")
    yield sessions
    sessions.kw["bind"].dispose()


@pytest.fixture
def collector(sessions, store, runner, freezer):
    context = ServiceContext(sessions, store, LOG, runner=runner, worker_timeout=20)
    return Collector(context, max_bytes=50 * 1024**2, max_file_bytes=5 * 1024**2, freezer=freezer, max_files=30_000)


def folder_of(account):
    return os.path.join(account.home, COURSE, MATERIAL)


def work(account, files, many=0):
    """~/data101/hw1/ with *files* {relpath: bytes} and *many* files f/NNNNN.txt, made as the student."""
    folder = folder_of(account)
    code = f"""
import os
folder, files = {folder!r}, {files!r}
files.update({{f'f/{{i:05d}}.txt': b'x' for i in range({many})}})
for rel, data in files.items():
    path = os.path.join(folder, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(data)
"""
    as_user(account, "python3", "-c", code)
    return folder


def utcnow():
    return datetime.now(timezone.utc)


def frozen_groups(freezer):
    try:
        return [e.name for e in os.scandir(freezer.base) if e.is_dir()]
    except FileNotFoundError:
        return []


# A student's process that waits for a new process of theirs (the worker),
# stops it, edits their notebook, and lets it go on: the attack of issue #12.3.
WATCHER = r"""
import os, signal, sys, time
folder, report = sys.argv[1], sys.argv[2]
uid, me = os.getuid(), os.getpid()

def mine():
    for name in os.listdir('/proc'):
        if name.isdigit() and int(name) != me:
            try:
                with open(f'/proc/{name}/status') as f:
                    for line in f:
                        if line.startswith('Uid:'):
                            if int(line.split()[2]) == uid:  # effective uid: theirs
                                yield int(name)
                            break
            except OSError:
                pass

known = set(mine())
with open(report, 'w') as f:
    f.write('ready\n')
while not os.path.exists(folder + '/STOP'):
    for pid in set(mine()) - known:
        known.add(pid)
        try:
            os.kill(pid, signal.SIGSTOP)
        except OSError as e:
            outcome = e.errno
        else:
            with open(folder + '/hw.ipynb', 'w') as f:
                f.write('edited after the due date')
            time.sleep(0.3)
            os.kill(pid, signal.SIGCONT)
            outcome = 0
        with open(report, 'a') as f:
            f.write(f'{pid} {outcome}\n')
    time.sleep(0.0005)
"""


async def wait_for_file(path, text, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                if text in f.read():
                    return
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, f"{path} never said {text!r}"
        await asyncio.sleep(0.02)


def watcher(account):
    """The WATCHER running as *account*; yields the path of its report."""
    folder = folder_of(account)
    report = os.path.join(account.home, "report.txt")
    proc = subprocess.Popen(["python3", "-c", WATCHER, folder, report], user=account.uid, group=account.gid, cwd="/")
    return proc, report


def stop_watcher(account, proc):
    with open(os.path.join(folder_of(account), "STOP"), "w"):
        pass
    proc.kill()
    proc.wait(timeout=10)


async def test_stopping_the_worker_at_the_due_date_does_not_get_edits_in(homes, collector, store):
    """The student's own process stops the worker and edits: with the
    freezer it is frozen before the worker starts; nothing edited is stored
    and the snapshot is on time."""
    alice = homes[ALICE]
    work(alice, {"hw.ipynb": b"on time"}, 3000)
    proc, report = watcher(alice)
    try:
        await wait_for_file(report, "ready")
        row = await collector.snapshot(COURSE, MATERIAL, ALICE, "deadline", deadline=utcnow())
    finally:
        stop_watcher(alice, proc)
    assert not row.error
    assert stored(store, row)["hw.ipynb"] == b"on time"
    assert not row.late and row.changed == []
    assert row.finished >= row.taken


async def test_the_worker_cannot_be_signalled_by_the_student(homes, collector, store):
    """Without the freezer (a cgroup v2 host, say) the student's watcher sees
    the worker but cannot stop it: every kill fails with EPERM."""
    alice = homes[ALICE]
    collector.freezer = None
    work(alice, {"hw.ipynb": b"on time"}, 3000)
    proc, report = watcher(alice)
    try:
        await wait_for_file(report, "ready")
        row = await collector.snapshot(COURSE, MATERIAL, ALICE, "deadline", deadline=utcnow())
        await asyncio.sleep(0.2)
    finally:
        stop_watcher(alice, proc)
    with open(report) as f:
        outcomes = [line.split()[1] for line in f.read().splitlines()[1:]]
    assert outcomes, "the watcher never saw the worker"
    assert set(outcomes) == {"1"}  # EPERM: never stopped
    assert stored(store, row)["hw.ipynb"] == b"on time"
    assert not row.late


async def test_a_new_login_editing_during_the_copy_is_flagged(homes, collector, store, freezer, monkeypatch):
    """A process the student starts after the freeze (an ssh login) edits and
    adds files while the copy runs: every file is stored as it was at the
    due date or listed as changed, and the snapshot is late."""
    alice = homes[ALICE]
    folder = work(alice, {"a.txt": b"old", "zz/last.txt": b"old"}, 5000)
    edit = f"""
import os
for rel in ('a.txt', 'zz/last.txt'):
    with open(os.path.join({folder!r}, rel), 'w') as f:
        f.write('new')
open(os.path.join({folder!r}, 'new.txt'), 'w').close()
"""
    logins = []
    copied_one = runas.Export.done_with_one

    def log_in_after_the_first_file(export, path=None, fd=None):
        # the login happens while the copy runs (a.txt is copied first, the rest after)
        if not logins:
            assert str(alice.uid) in frozen_groups(freezer)
            logins.append(subprocess.run(["python3", "-c", edit], user=alice.uid, group=alice.gid, cwd="/"))
        return copied_one(export, path, fd)

    monkeypatch.setattr(runas.Export, "done_with_one", log_in_after_the_first_file)
    row = await collector.snapshot(COURSE, MATERIAL, ALICE, "deadline", deadline=utcnow())
    assert logins and logins[0].returncode == 0
    assert not row.error
    files = stored(store, row)
    for rel in ("a.txt", "zz/last.txt"):
        assert files[rel] == b"old" or rel in row.changed, (rel, files[rel], row.changed)
    assert files["zz/last.txt"] == b"new" and "zz/last.txt" in row.changed  # copied after the edit
    assert "./" in row.changed  # new.txt appeared in the folder
    assert row.late


async def test_a_tight_edit_loop_across_the_due_date(homes, collector, store):
    """A loop rewrites the notebook with the time, across the due date: the
    stored copy was written before the due date, or it is flagged; the loop
    runs again once the snapshot is done."""
    alice = homes[ALICE]
    folder = work(alice, {"hw.txt": b"0"}, 2000)
    loop = f"""
import os, time
path = {folder!r} + '/hw.txt'
while not os.path.exists({folder!r} + '/STOP'):
    with open(path + '.tmp', 'w') as f:
        f.write(repr(time.time()))
    os.rename(path + '.tmp', path)
    with open(path + '.log', 'w') as f:
        f.write(repr(time.time()))
"""
    with student_loop(alice, loop, os.path.join(folder, "STOP")):
        due = utcnow() + timedelta(seconds=1)
        await asyncio.sleep((due - utcnow()).total_seconds())
        row = await collector.snapshot(COURSE, MATERIAL, ALICE, "deadline", deadline=due)
        first = open(os.path.join(folder, "hw.txt")).read()
        await asyncio.sleep(0.3)
        assert open(os.path.join(folder, "hw.txt")).read() != first, "the loop stayed frozen"
    files = stored(store, row)
    written = float(files["hw.txt"])
    # a file's ctime comes from the kernel's coarse clock (a few ms)
    assert written <= due.timestamp() + 0.02 or ("hw.txt" in row.changed and row.late), (written, due, row.changed)
    assert written < row.finished.timestamp()


async def test_the_student_stays_frozen_for_the_whole_copy(homes, collector, freezer):
    """A process logging the time every millisecond logs nothing while their
    snapshot is copied, then goes on."""
    alice = homes[ALICE]
    folder = work(alice, {}, 20_000)
    log = os.path.join(alice.home, "clock.log")
    loop = f"""
import os, time
with open({log!r}, 'a', buffering=1) as f:
    while not os.path.exists({folder!r} + '/STOP'):
        f.write(repr(time.time()) + '\\n')
        time.sleep(0.001)
"""
    with student_loop(alice, loop, os.path.join(folder, "STOP")):
        await asyncio.sleep(0.3)
        row = await collector.snapshot(COURSE, MATERIAL, ALICE, "deadline", deadline=utcnow())
        await asyncio.sleep(0.3)
    with open(log) as f:
        times = [float(line) for line in f if line.strip()]
    copy = (row.finished - row.taken).total_seconds()
    gap = max(b - a for a, b in zip(times, times[1:]))
    print(f"copy {copy:.3f} s, longest pause of the student's clock {gap:.3f} s")
    assert copy > 0.1 and gap >= copy - 0.1
    assert times[-1] > row.finished.timestamp()  # thawed
    assert frozen_groups(freezer) == []


async def test_forking_fast_does_not_escape_the_freezer(homes, freezer):
    """A process forking a child every millisecond: every process of the
    student ends up frozen, and thawed again."""
    alice = homes[ALICE]
    log = os.path.join(alice.home, "forks.log")
    stop = os.path.join(alice.home, "STOP")
    bomb = f"""
import os, time
while not os.path.exists({stop!r}):
    if os.fork() == 0:
        with open({log!r}, 'a') as f:
            f.write(repr(time.time()) + '\\n')
        time.sleep(0.05)
        os._exit(0)
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    time.sleep(0.001)
"""
    with student_loop(alice, bomb, stop):
        await asyncio.sleep(0.3)
        frozen = await asyncio.to_thread(freezer.freeze, alice.uid)
        try:
            assert frozen.complete
            at = time.time()
            await asyncio.sleep(0.5)
            with open(log) as f:
                during = [float(x) for x in f if x.strip() and float(x) > at + 0.05]
            assert during == [], "a process of the student ran while frozen"
            inside = set(open(os.path.join(frozen.folder, "cgroup.procs")).read().split())
            assert {str(p) for p in processes_of(alice.uid)} <= inside
        finally:
            await asyncio.to_thread(freezer.thaw, frozen)
        size = os.path.getsize(log)
        await asyncio.sleep(0.3)
        assert os.path.getsize(log) > size  # running again
    assert frozen_groups(freezer) == []


async def test_a_group_left_frozen_by_a_killed_service_is_thawed_at_start(homes, freezer):
    """The service froze a student and died: the next one thaws them first."""
    alice = homes[ALICE]
    log = os.path.join(alice.home, "clock.log")
    stop = os.path.join(alice.home, "STOP")
    loop = f"""
import os, time
while not os.path.exists({stop!r}):
    with open({log!r}, 'w') as f:
        f.write(repr(time.time()))
    time.sleep(0.01)
"""
    with student_loop(alice, loop, stop) as proc:
        await asyncio.sleep(0.2)
        await asyncio.to_thread(freezer.freeze, alice.uid)  # and never thawed: the service "died"
        await asyncio.sleep(0.1)
        assert freezer_cgroup_of(proc.pid) == f"/{os.path.basename(freezer.base)}/{alice.uid}"
        before = open(log).read()
        await asyncio.sleep(0.3)
        assert open(log).read() == before
        next_service = Freezer(parent=os.path.basename(freezer.base), log=LOG)
        assert next_service.sweep() == [str(alice.uid)]
        await asyncio.sleep(0.3)
        assert open(log).read() != before
    assert frozen_groups(freezer) == []


async def test_the_worker_runs_with_the_students_file_rights_and_a_memory_limit(homes, store, runner):
    """What the student could do to the worker: nothing. Its effective and
    file-system uid are theirs, its real and saved uid root's (no signal, no
    trace), its address space is bounded."""
    alice = homes[ALICE]
    work(alice, {}, 20_000)
    job = {"home": alice.home, "base": [COURSE, MATERIAL], "max_bytes": 10**9, "max_entries": 100_000}
    export = await asyncio.to_thread(runner.open_export, alice, job, 20)
    try:
        message, fd = await asyncio.to_thread(export.message)
        os.close(fd)
        with open(f"/proc/{export.pid}/status") as f:
            uids = next(line.split()[1:] for line in f if line.startswith("Uid:"))
        with open(f"/proc/{export.pid}/limits") as f:
            limit = next(line.split()[3] for line in f if line.startswith("Max address space"))
        denied = subprocess.run(
            ["python3", "-c", f"import os, signal; os.kill({export.pid}, signal.SIGSTOP)"],
            user=alice.uid,
            group=alice.gid,
            capture_output=True,
            text=True,
        )
        traced = subprocess.run(
            ["python3", "-c", f"open('/proc/{export.pid}/mem', 'rb')"],
            user=alice.uid,
            group=alice.gid,
            capture_output=True,
            text=True,
        )
    finally:
        export.kill()
        export.close()
    assert uids == ["0", str(alice.uid), "0", str(alice.uid)]
    assert int(limit) == runas.WORKER_MEMORY
    assert "PermissionError" in denied.stderr
    assert "PermissionError" in traced.stderr


async def test_a_hundred_thousand_files_are_cut_at_the_limit_with_bounded_memory(homes, collector, store, runner):
    """100,000 files with long names in one folder: the snapshot stops at
    max_files with one note, and the worker never holds every name
    (its address space is limited to 48 MiB)."""
    alice = homes[ALICE]
    folder = folder_of(alice)
    code = f"""
import os
os.makedirs({folder!r})
for i in range(100_000):
    open(os.path.join({folder!r}, f'{{i:06d}}' + 'n' * 240), 'w').close()
"""
    as_user(alice, "python3", "-c", code)
    collector.max_files = 10_000
    saved = runner.memory
    # a worker starts at about 20 MiB of address space; every name of the
    # folder (100,000 x ~300 bytes as Python strings) would need 30 MiB more
    runner.memory = 48 * 1024**2
    try:
        t0 = time.monotonic()
        row = await collector.snapshot(COURSE, MATERIAL, ALICE, "collected")
        took = time.monotonic() - t0
    finally:
        runner.memory = saved
    assert not row.error, row.error
    assert len(row.files) == 10_000
    assert [reason for _, reason in row.skipped] == ["over the limit of 10000 entries"]
    assert took < 60  # a hang guard on a loaded machine, not a speed test


async def test_a_hand_in_runs_inside_the_students_own_limits(homes, collector, monkeypatch):
    """The worker of a hand-in joins the memory and pids groups of the
    student's running server (ClassroomSpawner's layout), so what it uses
    counts against the student's limits, not the service's."""
    from classroomhub.spawner.cgroups import CgroupV1
    from classroomhub.spawner.enforcement import Limits, group_key

    alice = homes[ALICE]
    work(alice, {"hw.ipynb": b"work"}, 2000)
    parent = f"classroomhub-{TAG}-servers"
    backend = CgroupV1.from_host(parent)  # as the hub's ClassroomSpawner does, for Alice's server
    key = group_key(ALICE)
    backend.create(key, Limits(mem_bytes=256 * 1024**2, pids=64))
    collector.cgroup_parent = parent
    seen = {}  # worker pid -> the groups of Alice's server it is in
    copied_one = runas.Export.done_with_one

    def look(export, path=None, fd=None):
        if export.pid not in seen:
            dirs = backend.group_dirs(key)
            seen[export.pid] = [d for d in dirs if str(export.pid) in open(d + "/cgroup.procs").read().split()]
        return copied_one(export, path, fd)

    monkeypatch.setattr(runas.Export, "done_with_one", look)
    try:
        row = await collector.submit(COURSE, MATERIAL, ALICE, late=False, due=utcnow() + timedelta(hours=1))
        deadline_row = await collector.snapshot(COURSE, MATERIAL, ALICE, "deadline", deadline=utcnow())
    finally:
        await backend.destroy(key)
        backend.remove_parent()
    assert not row.error and len(row.files) == 2001 and not deadline_row.error
    hand_in, deadline = seen.values()
    assert sorted(hand_in) == sorted(d for d in backend.group_dirs(key) if "/memory/" in d or "/pids/" in d)
    assert deadline == []  # a frozen student's groups are not joined


async def test_hand_ins_are_rate_limited_and_counted(homes, collector):
    alice = homes[ALICE]
    work(alice, {"hw.ipynb": b"work"})
    collector.submit_rate.count, collector.submit_rate.window = 3, 60
    collector.max_submissions = 4
    due = utcnow() + timedelta(hours=1)
    for _ in range(3):
        row = await collector.submit(COURSE, MATERIAL, ALICE, late=False, due=due)
        assert not row.error
    with pytest.raises(TooMany) as e:
        await collector.submit(COURSE, MATERIAL, ALICE, late=False, due=due)
    assert e.value.retry_after and 0 < e.value.retry_after <= 60
    assert "at most 3 in 60 s" in str(e.value)
    # another student is not held back by Alice's limit
    work(homes[BOB], {"hw.ipynb": b"bob"})
    assert not (await collector.submit(COURSE, MATERIAL, BOB, late=False, due=due)).error
    collector.submit_rate.window = 0.01  # the window passed: only the count is left
    await asyncio.sleep(0.05)
    assert not (await collector.submit(COURSE, MATERIAL, ALICE, late=False, due=due)).error
    with pytest.raises(TooMany) as e:
        await collector.submit(COURSE, MATERIAL, ALICE, late=False, due=due)
    assert e.value.retry_after is None and "4 times, the most allowed" in str(e.value)
    assert len(collector.rules.submissions(COURSE, MATERIAL, ALICE)) == 4


async def test_a_hand_in_copied_after_the_due_date_with_changes_is_late(homes, collector, store):
    """A hand-in asked for just before the due date but copied after it, of a
    file the student changed after the due date, does not count as on time."""
    alice = homes[ALICE]
    folder = work(alice, {"hw.ipynb": b"before"})
    due = utcnow()
    await asyncio.sleep(0.05)
    with open(os.path.join(folder, "hw.ipynb"), "wb") as f:
        f.write(b"after")
    row = await collector.submit(COURSE, MATERIAL, ALICE, late=False, due=due)
    assert row.late and row.changed == ["hw.ipynb"]
    from classroomhub.service.domain.assignments import graded_choice

    assert graded_choice([row], due) is row  # the first late one, flagged as such


async def test_a_hand_in_and_the_deadline_snapshot_at_once(homes, collector, freezer):
    """The same student's hand-in and deadline snapshot run one after the
    other; neither thaws the other's freeze early, nobody stays frozen."""
    alice = homes[ALICE]
    work(alice, {}, 5000)
    due = utcnow()
    rows = await asyncio.gather(
        collector.submit(COURSE, MATERIAL, ALICE, late=False, due=due + timedelta(hours=1)),
        collector.snapshot(COURSE, MATERIAL, ALICE, "deadline", deadline=due),
    )
    assert all(not r.error and len(r.files) == 5000 for r in rows)
    spans = sorted((r.taken, r.finished) for r in rows)
    assert spans[0][1] <= spans[1][1]
    assert frozen_groups(freezer) == []


# -- releases: one student's home never holds up the others ------------------------


def releases_of(sessions, store, runner, timeout):
    return ReleaseService(ServiceContext(sessions, store, LOG, runner=runner, worker_timeout=timeout, concurrency=4))


def new_release(sessions, store, version, text, extra=0):
    """Version *version* of hw1: hw.ipynb holding *text*, and *extra* small files."""
    files = {}
    for rel, data in {"hw.ipynb": text, **{f"data/{i:04d}.csv": b"1,2\n" for i in range(extra)}}.items():
        digest, size = store.add_bytes(data)
        files[rel] = {"sha256": digest, "size": size, "mode": 0o644}
    with sessions() as db:
        row = Release(
            course=COURSE, material=MATERIAL, version=version, created_by="teacher", source="test", files=files
        )
        db.add(row)
        db.commit()
    return row


class HungHome:
    """Stops (as root, like a hung NFS server would) every process working in
    *account*'s home while it runs."""

    def __init__(self, account):
        self.uid = account.uid
        self.stop = threading.Event()
        self.stopped = set()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            for name in os.listdir("/proc"):
                if name.isdigit() and int(name) not in self.stopped:
                    try:
                        with open(f"/proc/{name}/status") as f:
                            euid = next(int(line.split()[2]) for line in f if line.startswith("Uid:"))
                        if euid == self.uid:
                            os.kill(int(name), signal.SIGSTOP)
                            self.stopped.add(int(name))
                    except (OSError, StopIteration):
                        pass
            time.sleep(0.001)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        for pid in self.stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


async def test_a_stuck_home_and_repeated_syncs_do_not_delay_a_release_to_others(homes, sessions, store, runner):
    """The stuck student's syncs are waiting on their home when the
    instructor releases to 11 students: the 10 others get it while the stuck
    one is still held (its report not written, the release not over); the
    stuck one fails at its own timeout."""
    # the stuck home's timeout only bounds how long the others may take, so
    # that they finish before it even on a loaded machine: not a speed test
    timeout = 20
    releases = releases_of(sessions, store, runner, timeout)
    releases.sync_rate.count = 0
    v1 = new_release(sessions, store, 1, b"v1", extra=300)  # a worker lives long enough to be caught
    with HungHome(homes[STUCK]):
        syncs = [asyncio.ensure_future(releases.sync(STUCK, [COURSE])) for _ in range(3)]
        await asyncio.sleep(0.5)  # their worker is stuck now
        t0 = time.monotonic()
        release = asyncio.ensure_future(releases.deliver(v1, [STUCK, *OTHERS]))

        def reported(students):
            with sessions() as db:
                return db.scalar(
                    select(func.count()).where(DeliveryReport.release_id == v1.id, DeliveryReport.student.in_(students))
                )

        try:
            while reported(OTHERS) < len(OTHERS):
                assert not release.done(), f"the release ended before the others were done ({reported(OTHERS)} done)"
                assert time.monotonic() - t0 < 5 * timeout, f"hung: {reported(OTHERS)} others done"
                await asyncio.sleep(0.02)
            others_took = time.monotonic() - t0
            # the order is the proof: the others were done while the stuck one still waited
            assert not release.done() and reported([STUCK]) == 0, "the others waited for the stuck home"
            reports = {r.student: r for r in await release}
            sync_answers = await asyncio.gather(*syncs)
        finally:  # after a failure, nothing left running into the next test
            for task in (release, *syncs):
                task.cancel()
    print(f"10 others delivered in {others_took:.2f} s; the stuck home's timeout is {timeout} s")
    assert all(reports[s].ok for s in OTHERS)
    assert "gave up after" in reports[STUCK].error
    # the three syncs were one: one delivery attempt, shared
    assert sync_answers[0] is sync_answers[1] is sync_answers[2]
    for login in OTHERS:
        with open(os.path.join(homes[login].home, COURSE, MATERIAL, "hw.ipynb")) as f:
            assert f.read() == "v1"


async def test_sync_storms_are_coalesced_and_rate_limited(homes, sessions, store, runner):
    releases = releases_of(sessions, store, runner, 20)
    releases.sync_rate.count, releases.sync_rate.window = 2, 60
    new_release(sessions, store, 1, b"v1")
    answers = await asyncio.gather(*(releases.sync(ALICE, [COURSE]) for _ in range(50)))
    assert all(a is answers[0] for a in answers)  # fifty calls, one sync
    ((release, report),) = answers[0]
    assert report.ok and release.version == 1
    with sessions() as db:
        assert db.scalar(select(func.count()).where(DeliveryReport.student == ALICE)) == 1
    assert await releases.sync(ALICE, [COURSE]) == []  # nothing new: nothing delivered
    with pytest.raises(TooMany) as e:
        await releases.sync(ALICE, [COURSE])
    assert re.search(r"at most 2 in 60 s; try again in \d+ s", str(e.value))
    assert await releases.sync(BOB, [COURSE])  # others are not limited by Alice's calls


async def test_two_releases_of_a_material_reach_one_home_in_order(homes, sessions, store, runner):
    """Without a lock over the whole material, two quick versions still
    reach each home one after the other: the newer one wins everywhere."""
    releases = releases_of(sessions, store, runner, 20)
    v1 = new_release(sessions, store, 1, b"v1")
    v2 = new_release(sessions, store, 2, b"v2")
    students = [ALICE, BOB, *OTHERS[:3]]
    first = asyncio.ensure_future(releases.deliver(v1, students))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(releases.deliver(v2, students))
    await asyncio.gather(first, second)
    for login in students:
        with open(os.path.join(homes[login].home, COURSE, MATERIAL, "hw.ipynb")) as f:
            assert f.read() == "v2", login
        assert not os.path.exists(os.path.join(homes[login].home, COURSE, MATERIAL, "hw.release-2.ipynb"))
    with sessions() as db:
        assert db.get(Release, v2.id).finished is not None

