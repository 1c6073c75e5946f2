"""Collection from booby-trapped homes, through the real Collector.

The service snapshots ``~/data101/hw1/`` of real system users with a worker
running as each of them (both ways of starting it: a process per home and
the fork server). Whatever a student plants there, nothing they could not
read themselves may reach the store, nothing may hang, and what the store
keeps must be exactly what its hash says.
"""

import asyncio
import logging
import os
import secrets
import subprocess
import time

import pytest

from classroomhub.service.files import runas
from classroomhub.service.domain.collect import Collector
from classroomhub.service.domain.context import ServiceContext
from classroomhub.service.db.models import open_database

from fixtures.accounts import stored
from fixtures.hostile import HANG_LIMIT, as_user, link_swapper, plant_many_and_deep, student_loop

# every test runs with both worker runners
pytestmark = [pytest.mark.root("creates system users and works as them"), pytest.mark.usefixtures("runner")]

# homes, store and runner are fixtures/accounts.py's, for PEOPLE
TAG = "tl" + secrets.token_hex(2)
ALICE, BOB = f"{TAG}-alice", f"{TAG}-bob"
PEOPLE = [ALICE, BOB]
COURSE, MATERIAL = "data101", "hw1"
MAX_BYTES, MAX_FILE_BYTES = 50 * 1024**2, 5 * 1024**2


@pytest.fixture
def collector(store, tmp_path, runner):
    sessions = open_database(f"sqlite:///{tmp_path}/collect.sqlite")
    context = ServiceContext(sessions, store, logging.getLogger("test"), runner=runner, worker_timeout=20)
    collector = Collector(context, max_bytes=MAX_BYTES, max_file_bytes=MAX_FILE_BYTES, max_files=30_000)
    yield collector
    sessions.kw["bind"].dispose()


def folder_of(account):
    return os.path.join(account.home, COURSE, MATERIAL)


def work(account, files):
    """~/data101/hw1/ with *files* {relpath: bytes}, made by the student."""
    folder = folder_of(account)
    as_user(account, "mkdir", "-p", folder)
    for rel, data in files.items():
        path = os.path.join(folder, rel)
        if os.path.dirname(rel):
            as_user(account, "mkdir", "-p", os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(data)
        os.chown(path, account.uid, account.gid)
    return folder


async def collect(collector, *students):
    """Snapshot each of *students*, timed; returns {student: Submission}."""
    t0 = time.monotonic()
    rows = await collector.collect(COURSE, MATERIAL, list(students))
    assert time.monotonic() - t0 < HANG_LIMIT
    return {row.student: row for row in rows}


def store_holds(store, needle):
    """Whether any object in the store contains *needle*."""
    for folder, _, names in os.walk(store.objects):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                if needle in f.read():
                    return True
    return False


def read_root(path):
    with open(path, "rb") as f:
        return f.read()


async def test_links_special_files_and_unreadable_files_stay_out(homes, store, collector):
    alice = homes[ALICE]
    folder = work(alice, {"hw1.ipynb": b"alice's work", "data/ok.csv": b"1,2\n"})
    as_user(alice, "ln", "-s", "/etc/shadow", os.path.join(folder, "shadow"))
    as_user(alice, "ln", "-s", "/etc", os.path.join(folder, "etc"))
    as_user(alice, "ln", "-s", os.path.join(homes[BOB].home, "data101"), os.path.join(folder, "bobs"))
    as_user(alice, "mkfifo", os.path.join(folder, "pipe"))
    os.mknod(os.path.join(folder, "null"), 0o666 | 0o020000, os.makedev(1, 3))
    # a root-only file hard-linked in (same file system): the student cannot read it
    secret = os.path.join(os.path.dirname(alice.home), f".{TAG}-root-secret")
    with open(secret, "wb") as f:
        f.write(b"ROOT-ONLY-" + TAG.encode())
    os.chmod(secret, 0o600)
    try:
        os.link(secret, os.path.join(folder, "hardlink"))
        work(homes[BOB], {"hw1.ipynb": b"bob's work " + TAG.encode()})
        rows = await collect(collector, ALICE, BOB)
    finally:
        os.unlink(secret)
    row = rows[ALICE]
    assert not row.error
    assert stored(store, row) == {"hw1.ipynb": b"alice's work", "data/ok.csv": b"1,2\n"}
    reasons = dict(tuple(s) for s in row.skipped)
    assert reasons["shadow"] == reasons["etc"] == reasons["bobs"] == "is a symbolic link; skipped"
    assert reasons["pipe"] == "is a FIFO; skipped"
    assert reasons["null"] == "is a device; skipped"
    assert "permission denied" in reasons["hardlink"]
    assert not store_holds(store, read_root("/etc/shadow")[:64])
    assert not store_holds(store, b"ROOT-ONLY-")
    # Bob's snapshot is his own, untouched by Alice's traps
    assert stored(store, rows[BOB]) == {"hw1.ipynb": b"bob's work " + TAG.encode()}


@pytest.mark.parametrize("link", ["course", "assignment"])
async def test_a_linked_course_or_assignment_folder_is_not_followed(homes, store, collector, link):
    alice, bob = homes[ALICE], homes[BOB]
    work(bob, {"hw1.ipynb": b"bob's work " + TAG.encode()})
    os.chmod(bob.home, 0o755)  # readable by Alice: only no-follow stops the worker
    try:
        if link == "course":
            as_user(alice, "ln", "-s", os.path.join(bob.home, COURSE), os.path.join(alice.home, COURSE))
        else:
            as_user(alice, "mkdir", "-p", os.path.join(alice.home, COURSE))
            as_user(alice, "ln", "-s", folder_of(bob), folder_of(alice))
        row = (await collect(collector, ALICE))[ALICE]
    finally:
        os.chmod(bob.home, 0o700)
    assert row.files == {}
    shown = f"~/{COURSE}" if link == "course" else f"~/{COURSE}/{MATERIAL}"
    assert row.error == f"nothing collected: {shown} is a symbolic link, not a folder; left alone"


async def test_files_over_the_limits_are_left_out_without_being_read(homes, store, collector):
    alice = homes[ALICE]
    folder = work(alice, {"hw1.ipynb": b"small"})
    # a 100 GB sparse file: reading it would take minutes; it must be skipped by its size
    as_user(alice, "truncate", "-s", "100G", os.path.join(folder, "huge.bin"))
    row = (await collect(collector, ALICE))[ALICE]
    assert stored(store, row) == {"hw1.ipynb": b"small"}
    assert dict(tuple(s) for s in row.skipped) == {"huge.bin": f"larger than {MAX_FILE_BYTES} bytes; skipped"}


async def test_huge_and_deep_trees_end_in_time_with_a_note(homes, store, collector):
    alice = homes[ALICE]
    folder = work(alice, {"hw1.ipynb": b"work"})
    plant_many_and_deep(alice, folder, 20_000)
    row = (await collect(collector, ALICE))[ALICE]
    assert not row.error
    assert len(row.files) == 20_001 and row.files["hw1.ipynb"]["size"] == 4
    deep = [path for path, reason in row.skipped if "levels" in reason]
    assert len(deep) == 1 and deep[0].count("d/") == 64


async def test_a_folder_swapped_for_a_link_during_collection_is_not_followed(homes, store, collector, world_writable):
    """A student's loop keeps replacing ~/data101/hw1/sub by a link to a
    folder whose files they may read, while their work is collected again
    and again: no snapshot may hold a file from behind the link."""
    alice = homes[ALICE]
    trap = world_writable
    with open(os.path.join(trap, "planted.txt"), "wb") as f:
        f.write(b"FROM-BEHIND-THE-LINK")
    os.chmod(os.path.join(trap, "planted.txt"), 0o644)
    folder = work(alice, {f"sub/f{i:03d}.txt": f"file {i}\n".encode() for i in range(200)})
    with student_loop(alice, link_swapper(folder, "sub", trap), os.path.join(folder, "STOP")):
        await asyncio.sleep(0.2)
        rows = [row for _ in range(10) for row in (await collect(collector, ALICE)).values()]
    for row in rows:
        assert not row.error
        assert all(data.startswith(b"file ") for data in stored(store, row).values())
    assert not store_holds(store, b"FROM-BEHIND-THE-LINK")


async def test_files_changing_during_the_snapshot_are_stored_true_to_their_hash(homes, store, collector):
    """A student's loop rewrites, truncates and appends to files while they
    are collected: each stored copy is whatever was copied, and its hash and
    size are those of the stored bytes (never a mix of two states)."""
    alice = homes[ALICE]
    folder = work(alice, {"grow.bin": b"", "flip.bin": b"a" * 4_000_000})
    writer = f"""
import os
folder = {folder!r}
i = 0
while not os.path.exists(folder + '/STOP'):
    i += 1
    with open(folder + '/grow.bin', 'ab') as f:
        f.write(os.urandom(65536))
    if i % 50 == 0:
        os.truncate(folder + '/grow.bin', 0)
    with open(folder + '/flip.bin', 'r+b') as f:
        f.write(bytes([97 + i % 2]) * (4_000_000 if i % 3 else 1_000))
        f.truncate()
"""
    with student_loop(alice, writer, os.path.join(folder, "STOP")):
        await asyncio.sleep(0.2)
        rows = [row for _ in range(15) for row in (await collect(collector, ALICE)).values()]
    sizes = set()
    for row in rows:
        assert not row.error
        files = stored(store, row)  # checks every object against its hash and size
        assert set(files) == {"grow.bin", "flip.bin"}
        sizes.add(len(files["grow.bin"]))
    assert len(sizes) > 1  # the file really changed between snapshots


async def test_a_stuck_export_is_killed_at_the_timeout(homes, store, collector, monkeypatch, runner):
    """An export that does not finish in time fails that student at the
    timeout and leaves no process behind."""
    if isinstance(runner, runas.ForkServer):
        # 20,000 files take seconds to hand over: far from done at 0.2 s
        work(homes[ALICE], {f"f{i:05d}": b"x" for i in range(20_000)})
        collector.context.worker_timeout = 0.2
    else:
        work(homes[ALICE], {"hw1.ipynb": b"work"})
        monkeypatch.setattr(runas, "worker_command", lambda mode: ["sleep", "60"])
        collector.context.worker_timeout = 1
    t0 = time.monotonic()
    row = (await collector.collect(COURSE, MATERIAL, [ALICE]))[0]
    assert time.monotonic() - t0 < 30  # killed at the timeout: the worker alone would sleep 60 s
    assert row.error == f"nothing collected: gave up after {collector.context.worker_timeout:g} s in the home of {ALICE}"
    time.sleep(0.2)
    assert not subprocess.run(["pgrep", "-u", ALICE], capture_output=True).stdout
