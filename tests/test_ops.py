"""What a server needs, for real: the config `generate-config` writes is the
packaged example and a real jupyterhub runs it; the unit `systemd-unit`
writes passes `systemd-analyze verify`; `term-end` archives homes as their
owners and removes only the accounts the hub created."""

import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import requests

from classroomhub import cli
from classroomhub.accounts import MANAGED_GROUP
from classroomhub.demo import free_ports
from classroomhub.ops.config import example_config_text
from classroomhub.spawner.users import ensure_system_user

from fixtures.real_hub import running_hub

# builds a wheel, starts a real jupyterhub, makes system users (fixtures/selection.py)
pytestmark = pytest.mark.e2e

SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"
TAG = "h7t" + secrets.token_hex(2)


def test_generate_config_writes_the_packaged_example(tmp_path, capsys):
    out = tmp_path / "etc" / "classroomhub" / "jupyterhub_config.py"  # folders made as needed
    assert cli.main(["generate-config", "-o", str(out)]) == 0
    assert out.read_text() == example_config_text() == (Path(__file__).parent.parent / "jupyterhub_config.example.py").read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    # never over an existing file, unless asked
    assert cli.main(["generate-config", "-o", str(out)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"classroomhub generate-config: {out} exists: pass --force to replace it"
    out.write_text("# mine\n")
    assert cli.main(["generate-config", "-o", str(out), "--force"]) == 0
    assert out.read_text() == example_config_text()


def test_a_wheel_built_from_the_checkout_carries_the_example_config(tmp_path):
    """The README's way to install without the checkout: a wheel."""
    checkout = Path(__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(checkout)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("classroomhub-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("classroomhub/data/jupyterhub_config.example.py").decode() == example_config_text()
        assert "classroomhub/service/web/openapi.yaml" in archive.namelist()
        entry_points = archive.read(next(n for n in archive.namelist() if n.endswith("entry_points.txt"))).decode()
    assert "classroomhub = classroomhub.cli:main" in entry_points


def test_a_real_jupyterhub_runs_the_generated_config(tmp_path):
    config = tmp_path / "jupyterhub_config.py"
    assert cli.main(["generate-config", "-o", str(config)]) == 0
    port, hub_port, proxy_port, service_port = free_ports(4)
    (tmp_path / "roster.yaml").write_text("users:\n  alice: {tier: root}\n")
    env = dict(
        os.environ,
        CLASSROOMHUB_STATE_DIR=str(tmp_path / "state"),
        CLASSROOMHUB_ROSTER=str(tmp_path / "roster.yaml"),
        CLASSROOMHUB_BIND_URL=f"http://127.0.0.1:{port}",
        CLASSROOMHUB_HUB_PORT=str(hub_port),
        CLASSROOMHUB_PROXY_API_URL=f"http://127.0.0.1:{proxy_port}",
        CLASSROOMHUB_SERVICE_DIR=str(tmp_path / "classroom"),
        CLASSROOMHUB_SERVICE_PORT=str(service_port),
        GITHUB_CLIENT_ID="id",
        GITHUB_CLIENT_SECRET="secret",
        OAUTH_CALLBACK_URL=f"http://127.0.0.1:{port}/hub/oauth_callback",
    )
    command = [os.path.join(os.path.dirname(sys.executable), "jupyterhub"), "-f", str(config)]
    with running_hub(command, tmp_path, env, tmp_path / "hub.log", f"http://127.0.0.1:{port}/hub/api/") as r:
        assert "version" in r.json()
        r = requests.get(f"http://127.0.0.1:{port}/hub/login", timeout=10)
        assert r.status_code == 200 and "GitHub" in r.text


@pytest.mark.skipif(not os.path.exists(SYSTEMD_ANALYZE), reason="systemd-analyze is not installed (Debian package systemd)")
def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path, capsys):
    unit = tmp_path / "classroomhub.service"
    env_file = tmp_path / "etc" / "classroomhub.env"
    state = tmp_path / "srv" / "jupyterhub"  # systemd enters it before the hub starts: made, private
    argv = ["systemd-unit", "-o", str(unit), "--env-file", str(env_file), "--state-dir", str(state)]
    assert cli.main([*argv, "--config", str(tmp_path / "jupyterhub_config.py")]) == 0
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    text = unit.read_text()
    for line in ("Delegate=yes", "Restart=on-failure", f"EnvironmentFile={env_file}", f"WorkingDirectory={state}"):
        assert line in text.splitlines(), line
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split("=", 1)[1].split()[0] == os.path.join(os.path.dirname(sys.executable), "jupyterhub")
    proxy = next(line for line in text.splitlines() if line.startswith("Environment=CLASSROOMHUB_PROXY="))
    assert os.path.isabs(proxy.split("=", 2)[2]) and os.access(proxy.split("=", 2)[2], os.X_OK)
    # the secrets' template, private
    assert "GITHUB_CLIENT_SECRET=" in env_file.read_text()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600

    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr

    # verify does check: a unit whose command is missing fails it
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace(exec_start, "ExecStart=/nonexistent/jupyterhub -f x"))
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "/nonexistent/jupyterhub" in result.stderr

    # relative paths are refused: systemd would not find them
    capsys.readouterr()
    assert cli.main([*argv, "--force", "--config", "jupyterhub_config.py"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "classroomhub systemd-unit: --config must be an absolute path, not 'jupyterhub_config.py'"
    ]


# -- end of term -----------------------------------------------------------------------


STUDENT, OTHER, KEPT, FOREIGN = (f"{TAG}-{n}" for n in ("stud", "other", "kept", "foreign"))


@pytest.fixture
def accounts():
    if os.geteuid() != 0:
        pytest.skip("needs root: creates and removes system users")
    for login in (STUDENT, OTHER, KEPT):
        ensure_system_user(login, skeleton="")
    # an account made by other means (e.g. a colleague's): never touched
    subprocess.run(["useradd", "--create-home", "--comment", "not the hub's", FOREIGN], check=True)
    try:
        yield
    finally:
        for login in (STUDENT, OTHER, KEPT, FOREIGN):
            subprocess.run(["pkill", "-KILL", "-u", login], check=False, stderr=subprocess.DEVNULL)
            subprocess.run(["userdel", "--remove", login], check=False, stderr=subprocess.DEVNULL)


def exists(login):
    try:
        pwd.getpwnam(login)
        return True
    except KeyError:
        return False


def test_term_end_archives_as_the_owner_and_removes_only_the_hubs_accounts(accounts, tmp_path, capsys):
    home = Path(pwd.getpwnam(STUDENT).pw_dir)
    entry = pwd.getpwnam(STUDENT)
    (home / "work").mkdir()
    (home / "work" / "nb.ipynb").write_text("{}\n")
    os.symlink("/etc/shadow", home / "work" / "shadow")  # stored as a link, never read
    for path in (home / "work", home / "work" / "nb.ipynb"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    os.lchown(home / "work" / "shadow", entry.pw_uid, entry.pw_gid)
    sleeper = subprocess.Popen(["sleep", "600"], user=entry.pw_uid, group=entry.pw_gid)  # still logged in
    roster = tmp_path / "next-term.yaml"
    roster.write_text(f"users:\n  {KEPT.upper()}: {{}}\n")  # logins are case-insensitive
    archive = tmp_path / "archive"
    base = ["term-end", "--match", f"{TAG}-*", "--keep-roster", str(roster)]

    # a dry run: the plan, nothing changed
    assert cli.main([*base, "--archive", str(archive)]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == [OTHER, STUDENT]  # not KEPT (next term's roster), not FOREIGN (not the hub's)
    assert "dry run: nothing changed" in out
    assert all(exists(login) for login in (STUDENT, OTHER, KEPT, FOREIGN)) and not archive.exists()
    assert sleeper.poll() is None

    # --yes without saying where the homes go: refused
    assert cli.main([*base, "--yes"]) == 2
    assert "--archive DIR" in capsys.readouterr().err

    assert cli.main([*base, "--archive", str(archive), "--yes"]) == 0, capsys.readouterr()
    assert not exists(STUDENT) and not exists(OTHER) and not home.exists()
    assert exists(KEPT) and exists(FOREIGN)
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    assert stat.S_IMODE(archive.stat().st_mode) == 0o700
    (archived,) = archive.glob(f"{STUDENT}-*.tar.gz")
    assert stat.S_IMODE(archived.stat().st_mode) == 0o600
    with tarfile.open(archived) as tar:
        names = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("./work/nb.ipynb").read() == b"{}\n"
        assert names["./work/shadow"].issym() and names["./work/shadow"].linkname == "/etc/shadow"
        assert names["./work/nb.ipynb"].uid == entry.pw_uid
    assert len(list(archive.glob(f"{OTHER}-*.tar.gz"))) == 1

    # nothing left to do
    assert cli.main([*base, "--archive", str(archive)]) == 0
    assert "no accounts to remove" in capsys.readouterr().out
