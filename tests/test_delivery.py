"""Releasing content into homes, for real: real system users, a worker that
runs as each of them, and homes booby-trapped the ways a student could.

Root must never be tricked into reading or writing outside the student's own
home, nothing may hang, and the report must say what failed.
"""

import asyncio
import hashlib
import os
import secrets
import stat
import subprocess
import time

import pytest

from classroomhub.service.files import runas
from classroomhub.service.files.delivery import DeliveryJob, deliver_all, deliver_to
from classroomhub.service.files.store import SourceError, import_folder

from fixtures.accounts import write_tree
from fixtures.hostile import HANG_LIMIT, as_user, link_swapper, plant_many_and_deep, student_loop, write_as

# accounts, homes, store: fixtures/accounts.py; every test runs with both worker runners
pytestmark = [pytest.mark.root("creates system users and works as them"), pytest.mark.usefixtures("runner")]

TAG = "cd" + secrets.token_hex(2)
TEACHER, ALICE, BOB = f"{TAG}-teach", f"{TAG}-alice", f"{TAG}-bob"
PEOPLE = [TEACHER, ALICE, BOB]


def material_folder(accounts, files):
    """A folder in the teacher's home with *files* {relpath: text}."""
    return write_tree(TEACHER, os.path.join(accounts[TEACHER].home, "week1-" + secrets.token_hex(2)), files)


def sha(text):
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def release(files, store, version=1, **kw):
    """A DeliveryJob of {relpath: text}, its objects put into *store* directly."""
    manifest = {}
    for rel, text in files.items():
        digest, size = store.add_bytes(text.encode())
        manifest[rel] = {"sha256": digest, "size": size, "mode": 0o644}
    return DeliveryJob("data101", "week1", version, manifest, **kw)


def by_path(report):
    return {r["path"]: (r["status"], r["detail"]) for r in report.results}


def read(path):
    with open(path) as f:
        return f.read()


V1 = {"hw1.ipynb": "hw1 v1\n", "hw2.ipynb": "hw2 v1\n", "notes/README.md": "readme\n"}
V2 = {"hw1.ipynb": "hw1 v2\n", "hw2.ipynb": "hw2 v2\n", "notes/README.md": "readme\n", "hw3.ipynb": "hw3\n"}


def delivered(rel):
    """{path: {sha256, size}} of what *rel* delivered, as the database will keep it."""
    return {p: {"sha256": m["sha256"], "size": m["size"]} for p, m in rel.files.items()}


# -- importing, with the instructor's privileges ----------------------------------------------


async def test_import_reads_as_the_instructor_and_keeps_only_regular_files(homes, store):
    src = material_folder(homes, {"a.ipynb": "A", "sub/b.py": "B", ".ipynb_checkpoints/a-checkpoint.ipynb": "X"})
    os.chmod(os.path.join(src, "sub/b.py"), 0o755)
    os.symlink("/etc/shadow", os.path.join(src, "shadow"))
    os.mkfifo(os.path.join(src, "pipe"))
    secret = os.path.join(src, "root-only.txt")
    with open(secret, "w") as f:  # root's, mode 0600, in the instructor's folder
        f.write("root secret")
    os.chmod(secret, 0o600)
    weird = os.fsencode(src) + b"/caf\xe9\nname.txt"
    with open(weird, "wb") as f:
        f.write(b"odd")
    files, skipped = await import_folder(store, homes[TEACHER], src)
    assert set(files) == {"a.ipynb", "sub/b.py", os.fsdecode(b"caf\xe9\nname.txt")}
    assert files["a.ipynb"] == {"sha256": sha("A"), "size": 1, "mode": 0o644}
    assert files["sub/b.py"]["mode"] == 0o755
    reasons = dict(skipped)
    assert reasons["shadow"] == "is a symbolic link; skipped"
    assert reasons["pipe"] == "is a FIFO; skipped"
    assert "permission denied" in reasons["root-only.txt"]
    with open(store.object_path(sha("A")), "rb") as f:
        assert f.read() == b"A"


async def test_import_of_a_folder_the_instructor_cannot_read_fails_clearly(homes, store):
    with pytest.raises(SourceError, match="/root.*permission denied"):
        await import_folder(store, homes[TEACHER], "/root")
    with pytest.raises(SourceError, match="No such file"):
        await import_folder(store, homes[TEACHER], "/nonexistent-" + TAG)


# -- delivery and updates -------------------------------------------------------------


async def test_first_release_lands_owned_by_each_student(homes, store):
    rel = release(V1, store)
    reports = await deliver_all(store, rel, [ALICE, BOB])
    for report in reports:
        assert report.ok, report
        assert report.counts()["added"] == 3
        account = homes[report.student]
        for path, text in V1.items():
            full = os.path.join(account.home, "data101", "week1", path)
            assert read(full) == text
            st = os.stat(full)
            assert (st.st_uid, st.st_gid) == (account.uid, account.gid)
        assert os.stat(os.path.join(account.home, "data101")).st_uid == account.uid
        assert not [n for n in os.listdir(os.path.join(account.home, "data101", "week1")) if "classroomhub" in n]


async def test_update_never_destroys_student_work(homes, store):
    rel1 = release(V1, store)
    await deliver_all(store, rel1, [ALICE, BOB])
    folder = os.path.join(homes[ALICE].home, "data101", "week1")
    write_as(homes[ALICE], os.path.join(folder, "hw1.ipynb"), "alice's answer\n")
    os.unlink(os.path.join(folder, "hw2.ipynb"))
    rel2 = release(V2, store, version=2)
    before = {login: delivered(rel1) for login in (ALICE, BOB)}
    alice, bob = await deliver_all(store, rel2, [ALICE, BOB], previous=before)

    assert by_path(alice) == {
        "hw1.ipynb": ("kept", "changed by its owner; the new version is hw1.release-2.ipynb"),
        "hw2.ipynb": ("left-deleted", "deleted by its owner; not restored"),
        "hw3.ipynb": ("added", ""),
        "notes/README.md": ("unchanged", ""),
    }
    assert read(os.path.join(folder, "hw1.ipynb")) == "alice's answer\n"
    assert read(os.path.join(folder, "hw1.release-2.ipynb")) == "hw1 v2\n"
    assert not os.path.exists(os.path.join(folder, "hw2.ipynb"))
    assert by_path(bob) == {
        "hw1.ipynb": ("updated", ""),
        "hw2.ipynb": ("updated", ""),
        "hw3.ipynb": ("added", ""),
        "notes/README.md": ("unchanged", ""),
    }
    assert read(os.path.join(homes[BOB].home, "data101", "week1", "hw2.ipynb")) == "hw2 v2\n"

    rel3 = release(V2, store, version=3, restore_deleted=True)
    alice = await deliver_to(store, ALICE, rel3, delivered(rel2))
    assert by_path(alice)["hw2.ipynb"] == ("restored", "")
    assert by_path(alice)["hw1.ipynb"][0] == "kept"
    assert read(os.path.join(folder, "hw2.ipynb")) == "hw2 v2\n"


def remembered(rel, report):
    """What the service records after *report*: hashes plus the stamps the worker returned."""
    return {
        r["path"]: {"sha256": rel.files[r["path"]]["sha256"], "size": rel.files[r["path"]]["size"], "stamp": r["stamp"]}
        for r in report.results
        if "stamp" in r
    }


async def test_stamps_spare_reading_untouched_files_but_not_edited_ones(homes, store):
    rel1 = release(V1, store)
    report = await deliver_to(store, ALICE, rel1)
    before = remembered(rel1, report)
    assert set(before) == set(V1)
    folder = os.path.join(homes[ALICE].home, "data101", "week1")
    # an edit that keeps the size: only the stamp (ctime) tells
    write_as(homes[ALICE], os.path.join(folder, "hw2.ipynb"), "hw2 XX\n")
    # a stamp that matches is trusted without reading: pretend v1 of hw1 had
    # other content; a worker that hashed would call the file changed
    before["hw1.ipynb"]["sha256"] = sha("something else")
    report = await deliver_to(store, ALICE, release(V2, store, version=2), before)
    assert by_path(report)["hw1.ipynb"] == ("updated", "")
    assert by_path(report)["hw2.ipynb"][0] == "kept"
    assert read(os.path.join(folder, "hw2.ipynb")) == "hw2 XX\n"
    assert by_path(report)["notes/README.md"] == ("unchanged", "")


async def test_the_new_version_never_lands_on_another_file_of_the_student(homes, store):
    rel1 = release(V1, store)
    await deliver_to(store, ALICE, rel1)
    folder = os.path.join(homes[ALICE].home, "data101", "week1")
    write_as(homes[ALICE], os.path.join(folder, "hw1.ipynb"), "mine\n")
    write_as(homes[ALICE], os.path.join(folder, "hw1.release-2.ipynb"), "also mine\n")
    rel2 = release(V2, store, version=2)
    report = await deliver_to(store, ALICE, rel2, delivered(rel1))
    assert by_path(report)["hw1.ipynb"] == ("kept", "changed by its owner; the new version is hw1.release-2-1.ipynb")
    assert read(os.path.join(folder, "hw1.release-2.ipynb")) == "also mine\n"
    assert read(os.path.join(folder, "hw1.release-2-1.ipynb")) == "hw1 v2\n"
    # delivering the same version again finds it there and writes nothing new
    report = await deliver_to(store, ALICE, rel2, delivered(rel1))
    assert by_path(report)["hw1.ipynb"] == ("kept", "changed by its owner; the new version is hw1.release-2-1.ipynb")
    assert sorted(n for n in os.listdir(folder) if n.startswith("hw1")) == [
        "hw1.ipynb",
        "hw1.release-2-1.ipynb",
        "hw1.release-2.ipynb",
    ]


async def test_a_file_the_student_made_read_only_is_still_updated_in_place(homes, store):
    rel1 = release(V1, store)
    await deliver_to(store, ALICE, rel1)
    path = os.path.join(homes[ALICE].home, "data101", "week1", "hw1.ipynb")
    os.chmod(path, 0o444)
    report = await deliver_to(store, ALICE, release(V2, store, version=2), delivered(rel1))
    assert by_path(report)["hw1.ipynb"] == ("updated", "")
    assert read(path) == "hw1 v2\n"


async def test_a_read_only_folder_fails_with_a_reason(homes, store):
    await deliver_to(store, ALICE, release(V1, store))
    folder = os.path.join(homes[ALICE].home, "data101", "week1")
    os.chmod(folder, 0o555)
    report = await deliver_to(store, ALICE, release({"new.ipynb": "n"}, store, version=2))
    assert by_path(report)["new.ipynb"] == ("failed", "permission denied (a folder made read-only?)")


# -- booby-trapped homes ------------------------------------------------------------


def tree_digest(path):
    """Names, sizes and contents below *path* (to prove nothing changed there)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            digest.update(full.encode())
            if os.path.isfile(full) and not os.path.islink(full):
                with open(full, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


async def deliver_timed(store, rel, students):
    t0 = time.monotonic()
    reports = await deliver_all(store, rel, students)
    assert time.monotonic() - t0 < HANG_LIMIT
    return {r.student: r for r in reports}


async def check_bob_unaffected(homes, reports):
    assert reports[BOB].ok, reports[BOB]
    assert read(os.path.join(homes[BOB].home, "data101", "week1", "hw1.ipynb")) == "hw1 v1\n"


@pytest.mark.parametrize("target", ["/etc", "other-home"])
async def test_course_folder_is_a_symlink(homes, store, target):
    target = homes[BOB].home if target == "other-home" else target
    os.symlink(target, os.path.join(homes[ALICE].home, "data101"))
    os.lchown(os.path.join(homes[ALICE].home, "data101"), homes[ALICE].uid, homes[ALICE].gid)
    before = tree_digest("/etc") if target == "/etc" else None
    reports = await deliver_timed(store, release(V1, store), [ALICE, BOB])
    assert {s for s, _ in by_path(reports[ALICE]).values()} == {"failed"}
    assert by_path(reports[ALICE])["hw1.ipynb"][1] == "~/data101 is a symbolic link, not a folder; left alone"
    assert not os.path.exists(os.path.join(target, "week1")) or target == homes[BOB].home
    if before:
        assert tree_digest("/etc") == before
    await check_bob_unaffected(homes, reports)
    # Bob's week1 is the one his own delivery made, owned by him
    assert os.stat(os.path.join(homes[BOB].home, "data101", "week1")).st_uid == homes[BOB].uid


async def test_material_file_is_a_symlink_to_shadow(homes, store):
    folder = os.path.join(homes[ALICE].home, "data101", "week1")
    as_user(homes[ALICE], "mkdir", "-p", folder)
    link = os.path.join(folder, "hw1.ipynb")
    as_user(homes[ALICE], "ln", "-s", "/etc/shadow", link)
    with open("/etc/shadow", "rb") as f:
        shadow = f.read()
    reports = await deliver_timed(store, release(V1, store), [ALICE, BOB])
    assert by_path(reports[ALICE])["hw1.ipynb"] == (
        "failed",
        "is a symbolic link where a file was expected; left alone",
    )
    assert by_path(reports[ALICE])["hw2.ipynb"] == ("added", "")
    assert os.readlink(link) == "/etc/shadow"
    with open("/etc/shadow", "rb") as f:
        assert f.read() == shadow
    await check_bob_unaffected(homes, reports)


async def test_hard_link_to_a_root_file_is_never_written(homes, store, tmp_path):
    rel1 = release(V1, store)
    await deliver_to(store, ALICE, rel1)
    # a root-owned file on the same file system as the home, hard-linked in
    secret = os.path.join(os.path.dirname(homes[ALICE].home), f".{TAG}-rootfile")
    with open(secret, "w") as f:
        f.write("hw1 v1\n")  # even with the delivered content, it is not the student's file
    try:
        path = os.path.join(homes[ALICE].home, "data101", "week1", "hw1.ipynb")
        os.unlink(path)
        os.link(secret, path)
        report = await deliver_to(store, ALICE, release(V2, store, version=2), delivered(rel1))
        assert by_path(report)["hw1.ipynb"] == ("kept", "has other hard links; the new version is hw1.release-2.ipynb")
        assert read(secret) == "hw1 v1\n"
        assert os.stat(secret).st_uid == 0
    finally:
        os.unlink(secret)


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
async def test_special_file_named_like_a_material_file(homes, store, kind):
    folder = os.path.join(homes[ALICE].home, "data101", "week1")
    as_user(homes[ALICE], "mkdir", "-p", folder)
    path = os.path.join(folder, "hw1.ipynb")
    if kind == "fifo":
        as_user(homes[ALICE], "mkfifo", path)
    elif kind == "device":
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    else:
        as_user(homes[ALICE], "mkdir", path)
    reports = await deliver_timed(store, release(V1, store), [ALICE, BOB])
    expected = {"fifo": "a FIFO", "device": "a device", "folder": "a folder"}[kind]
    assert by_path(reports[ALICE])["hw1.ipynb"] == ("failed", f"is {expected} where a file was expected; left alone")
    assert by_path(reports[ALICE])["hw2.ipynb"] == ("added", "")
    await check_bob_unaffected(homes, reports)


async def test_course_folder_replaced_by_a_file(homes, store):
    write_as(homes[ALICE], os.path.join(homes[ALICE].home, "data101"), "not a folder")
    reports = await deliver_timed(store, release(V1, store), [ALICE, BOB])
    assert set(by_path(reports[ALICE]).values()) == {("failed", "~/data101 is a file, not a folder; left alone")}
    assert read(os.path.join(homes[ALICE].home, "data101")) == "not a folder"
    await check_bob_unaffected(homes, reports)


async def test_huge_and_deep_trees_do_not_slow_delivery(homes, store):
    folder = os.path.join(homes[ALICE].home, "data101", "week1")
    as_user(homes[ALICE], "mkdir", "-p", folder)
    plant_many_and_deep(homes[ALICE], folder, 100_000)
    reports = await deliver_timed(store, release(V1, store), [ALICE, BOB])
    assert reports[ALICE].ok
    await check_bob_unaffected(homes, reports)


async def test_a_folder_swapped_for_a_symlink_mid_delivery_is_not_followed(homes, store, world_writable):
    """A student's loop renames week1 away and puts a link to a world-writable
    folder in its place, over and over, while 300 files are delivered."""
    trap = world_writable  # the student may write here: only no-follow stops the worker
    course = os.path.join(homes[ALICE].home, "data101")
    as_user(homes[ALICE], "mkdir", "-p", os.path.join(course, "week1"))
    with student_loop(homes[ALICE], link_swapper(course, "week1", trap), os.path.join(course, "STOP")):
        await asyncio.sleep(0.2)
        many = {f"f{i:03d}.txt": f"file {i}\n" for i in range(300)}
        for _ in range(3):
            report = await deliver_to(store, ALICE, release(many, store))
            assert {s for s, _ in by_path(report).values()} <= {"added", "unchanged", "failed"}
    assert os.listdir(trap) == []


async def test_odd_names_in_the_home_and_in_the_release(homes, store):
    folder = os.path.join(homes[ALICE].home, "data101", "week1")
    as_user(homes[ALICE], "mkdir", "-p", folder)
    with open(os.fsencode(folder) + b"/\xff\xfe bad\nname", "wb") as f:
        f.write(b"student's")
    odd = {os.fsdecode(b"caf\xe9\n.txt"): "odd name\n", "plain.txt": "plain\n"}
    report = await deliver_to(store, ALICE, release(odd, store))
    assert report.ok, report
    with open(os.fsencode(folder) + b"/caf\xe9\n.txt") as f:
        assert f.read() == "odd name\n"
    with open(os.fsencode(folder) + b"/\xff\xfe bad\nname", "rb") as f:
        assert f.read() == b"student's"


async def test_full_disk_is_reported_and_leaves_no_partial_file(homes, store):
    home = homes[ALICE].home
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,uid={homes[ALICE].uid},mode=0700", "tmpfs", home], check=True)
    try:
        big = "x" * (3 * 1024 * 1024)
        reports = await deliver_timed(store, release({"small.txt": "s\n", "big.bin": big}, store), [ALICE, BOB])
        assert by_path(reports[ALICE]) == {
            "big.bin": ("failed", "no space left (disk full or quota reached)"),
            "small.txt": ("added", ""),
        }
        assert os.listdir(os.path.join(home, "data101", "week1")) == ["small.txt"]
        assert reports[BOB].ok
    finally:
        subprocess.run(["umount", home], check=True)


async def test_a_student_without_an_account_is_reported_not_fatal(homes, store):
    reports = await deliver_timed(store, release(V1, store), [f"{TAG}-ghost", BOB])
    assert "has no system account" in reports[f"{TAG}-ghost"].error
    await check_bob_unaffected(homes, reports)


async def test_a_stuck_worker_is_killed_at_the_timeout(homes, store, monkeypatch, runner):
    if isinstance(runner, runas.ForkServer):
        # 20,000 files (one stored object) take seconds to write: far from done
        stuck, timeout = release({f"f{i:05d}": "x" for i in range(20_000)}, store), 0.2
    else:
        monkeypatch.setattr(runas, "worker_command", lambda mode: ["sleep", "60"])
        stuck, timeout = release(V1, store), 1
    t0 = time.monotonic()
    report = await deliver_to(store, ALICE, stuck, timeout=timeout)
    assert time.monotonic() - t0 < 30  # killed at the timeout: the worker alone would sleep 60 s
    assert report.error == f"gave up after {timeout:g} s in the home of {ALICE}"
    time.sleep(0.2)
    assert not subprocess.run(["pgrep", "-u", ALICE], capture_output=True).stdout


# -- shared datasets ----------------------------------------------------------------


def disk_usage(path):
    out = subprocess.run(["du", "-s", "--block-size=1", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


async def test_shared_dataset_is_stored_once_and_linked(homes, store):
    data = {"big.csv": "x" * (2 * 1024 * 1024), "README": "read me\n"}
    rel = release(data, store, shared=True)
    before = {s: disk_usage(homes[s].home) for s in (ALICE, BOB)}
    reports = await deliver_all(store, rel, [ALICE, BOB])
    for report in reports:
        assert by_path(report) == {"": ("added", "")}, report
        home = homes[report.student].home
        link = os.path.join(home, "data101", "week1")
        assert os.path.islink(link)
        assert read(os.path.join(link, "README")) == "read me\n"
        assert os.lstat(link).st_uid == homes[report.student].uid
        # a student cannot change the shared copy
        result = subprocess.run(
            ["sh", "-c", f"echo x >> '{link}/README'"], user=homes[report.student].uid, capture_output=True
        )
        assert result.returncode != 0
        assert disk_usage(home) - before[report.student] <= 0.01 * 2 * 1024 * 1024
    # one copy on disk: the tree's files are the store's objects
    target = os.readlink(os.path.join(homes[ALICE].home, "data101", "week1"))
    assert os.stat(os.path.join(target, "big.csv")).st_ino == os.stat(store.object_path(sha(data["big.csv"]))).st_ino

    rel2 = release({**data, "README": "v2\n"}, store, version=2, shared=True)
    report = await deliver_to(store, ALICE, rel2)
    assert by_path(report) == {"": ("updated", "")}
    assert read(os.path.join(homes[ALICE].home, "data101", "week1", "README")) == "v2\n"


async def test_shared_dataset_does_not_replace_a_students_folder(homes, store):
    as_user(homes[ALICE], "mkdir", "-p", os.path.join(homes[ALICE].home, "data101", "week1"))
    report = await deliver_to(store, ALICE, release({"a": "a"}, store, shared=True))
    assert by_path(report) == {"": ("failed", "~/data101/week1 is a folder; left alone")}
