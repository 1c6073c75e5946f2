"""Managed environments (classroomhub.environments): real environments built
with uv from small real PyPI packages, used by a real system user.

Builds run as the module's build account (``eb-build``) and are fast because
uv's cache is kept between runs in the project's
``.state/uv-cache-environments`` (the account's; same file system as the
test data, so files are hard links); a fresh machine downloads it once. Two successful builds
and one failing build are shared by the whole module.
"""

import asyncio
import contextlib
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest

from classroomhub.access import course_group
from classroomhub.environments import (
    BuildError,
    EnvError,
    EnvironmentManager,
    EnvironmentSpec,
    SpecError,
    kernel_dirs,
    may_use,
    parse_packages,
    server_environment,
)
from classroomhub.environments import installers
from classroomhub.environments.buildaccount import LOCK_DIR, ensure_build_account
from classroomhub.environments.visibility import choose_default
from classroomhub.spawner import ClassroomSpawner
from classroomhub.tiers import tier_group

from fixtures.accounts import shared_tempdir, system_users
from fixtures.servers import kernel_client, kernel_pids_of, remove_spawned, server_api, start, stop

HERE = os.path.dirname(os.path.abspath(__file__))
# this module's own: a cache belongs to one build account, and other modules build as theirs
UV_CACHE = os.path.join(os.path.dirname(HERE), ".state", "uv-cache-environments")
TAG = f"eb{secrets.token_hex(3)}"
STUDENT, OTHER = f"{TAG}-stu", f"{TAG}-oth"
# the module's own build account (EnvironmentManager.build_user), removed at its end
BUILDER = "eb-build"
COURSE = "ev101"
OTHER_COURSE = "ev202"
# not below pytest's 0700 tmp_path: the students must reach the environments
ENV_DATA_DIR = os.path.join(tempfile.gettempdir(), f"{TAG}-data")

# the cgroup folder of the hub's servers (ClassroomSpawner.cgroup_parent), removed at the end
SERVER_CGROUP = f"{TAG}-servers"
# the hub of the spawner test: ClassroomSpawner gives each server its owner's kernels
ROSTER = f"""\
users:
  admin: {{tier: root}}
  {OTHER}: {{tier: power}}
courses:
  {COURSE}:
    students: [{STUDENT}]
  {OTHER_COURSE}:
    students: [{OTHER}]
"""


def HUB_CONFIG(c):
    c.JupyterHub.spawner_class = ClassroomSpawner
    c.Spawner.cmd = [os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")]
    c.Spawner.start_timeout = 60
    c.Spawner.http_timeout = 60
    # in cgroups: a server's PATH keeps a version only for a process in the servers' cgroups
    c.ClassroomSpawner.enforcement = "cgroup-v1"
    c.ClassroomSpawner.cgroup_parent = SERVER_CGROUP
    c.ClassroomSpawner.memory_reserve = 0
    c.ClassroomSpawner.environments_data_dir = ENV_DATA_DIR
    # this network's TLS proxy: uv in a server (a power user's own build) needs the host's CA bundle
    c.Spawner.environment = {k: os.environ[k] for k in ("SSL_CERT_FILE", "SSL_CERT_DIR") if k in os.environ}

needs_root = pytest.mark.root("builds shared environments and runs them as real system users")
# builds real environments with uv and pip: not in the fast tier (fixtures/selection.py)
E2E_FIXTURES = {"manager", "student", "build_account"}


def groups_of(tier="student", **courses):
    """JupyterHub group names of a person: a tier and {course: role}."""
    return [tier_group(tier)] + [course_group(c, role) for c, role in courses.items()]


# -- package lists (no build) ------------------------------------------------------------


def test_requirements_lines():
    text = "# course packages\nsix==1.17.0\n\niniconfig>=2  # inline note\nrequests[socks] ; python_version >= '3.8'\n"
    assert parse_packages(text, "requirements.txt") == [
        "six==1.17.0",
        "iniconfig>=2",
        'requests[socks]; python_version >= "3.8"',
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("six\n--index-url https://evil.example/simple\n", "requirements.txt:2: pip options are not accepted"),
        ("six\n-r other.txt\n", "requirements.txt:2: pip options"),
        ("evil @ https://evil.example/evil.whl\n", "requirements.txt:1: direct references"),
        ("six\nnot a package!!\n", "requirements.txt:2: not a package requirement"),
        ("# nothing\n", "no packages listed"),
    ],
)
def test_requirements_refused(text, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[")):
        parse_packages(text, "requirements.txt")


def test_pyproject_dependencies():
    text = textwrap.dedent(
        """\
        [project]
        name = "week3"
        dependencies = [
            "six==1.17.0",
            "iniconfig",
        ]
        """
    )
    assert parse_packages(text, "pyproject.toml") == ["six==1.17.0", "iniconfig"]
    with pytest.raises(SpecError, match=r"pyproject.toml:4: direct references"):
        parse_packages(text.replace('"six==1.17.0"', '"six @ file:///etc/passwd"'), "pyproject.toml")
    with pytest.raises(SpecError, match="no \\[project\\] dependencies"):
        parse_packages("[tool.x]\n", "pyproject.toml")


def test_environment_yml_pip_packages():
    text = "name: week3\ndependencies:\n  - six==1.17.0\n  - pip:\n    - iniconfig\n"
    assert parse_packages(text, "environment.yml") == ["six==1.17.0", "iniconfig"]
    with pytest.raises(SpecError, match=r"environment.yml:3: 'numpy=1.26' is a conda package"):
        parse_packages("dependencies:\n  - six\n  - numpy=1.26\n", "environment.yml")


# a marker string may hold a line separator that packaging keeps and pip's requirements
# reader splits on: the text after it would be read as an installer option line
LINE_BREAKERS = ["\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"]


@pytest.mark.parametrize("breaker", LINE_BREAKERS, ids=lambda b: f"U+{ord(b):04X}")
def test_a_line_separator_in_a_requirement_is_refused(breaker):
    escaped = f"\\u{ord(breaker):04x}"  # as TOML and YAML escapes write it
    marker = f"idna; os_name == 'y{escaped}-r /etc/shadow{escaped}'"
    pyproject = f'[project]\nname = "w"\ndependencies = [\n  "six",\n  "{marker}",\n]\n'
    with pytest.raises(SpecError, match=r"pyproject.toml:5: .*one line of printable text"):
        parse_packages(pyproject, "pyproject.toml")
    yml = f'dependencies:\n  - six\n  - pip:\n    - "{marker}"\n'
    with pytest.raises(SpecError, match=r"environment.yml:4: .*one line of printable text"):
        parse_packages(yml, "environment.yml")
    with pytest.raises(SpecError, match="one line of printable text"):
        EnvironmentSpec("x", ["six", marker.encode().decode("unicode_escape")])


def test_the_requirements_file_has_one_line_per_package(manager, build_account):
    """The second guard: a package that would still span lines is never written for the installer."""
    spec = EnvironmentSpec("twolines", ["six"])
    spec.packages.append("idna; os_name == 'y\x0c--no-binary six'")  # past the declaration's check
    with pytest.raises(EnvError, match="one line per package"):
        asyncio.run(manager.create(spec))
    assert "twolines" not in manager.names()
    assert not os.path.exists(manager.layout.version_dir("twolines", 1))


def test_declaration_checks():
    with pytest.raises(SpecError, match="invalid environment name"):
        EnvironmentSpec("../etc", ["six"])
    with pytest.raises(SpecError, match="unknown tier 'wizard'"):
        EnvironmentSpec("x", ["six"], audience=["tier:wizard"])
    with pytest.raises(SpecError, match="invalid audience"):
        EnvironmentSpec("x", ["six"], audience=["group:staff"])
    with pytest.raises(SpecError, match="'Data 101' is not a course id"):
        EnvironmentSpec("x", ["six"], audience=["course:Data 101"])
    assert EnvironmentSpec("geo", ["six"]).display_name == "Python 3 (geo)"


def test_data_dir_outside_the_hubs_environment():
    with pytest.raises(SpecError, match="inside the hub's own environment"):
        EnvironmentManager(data_dir=os.path.join(sys.prefix, "data"))


# -- who may use what (no build) -----------------------------------------------------------


def test_may_use_by_course_tier_and_everyone():
    course = EnvironmentSpec("c", ["six"], audience=[f"course:{COURSE}"])
    power = EnvironmentSpec("p", ["six"], audience=["tier:power"])
    everyone = EnvironmentSpec("e", ["six"])
    for role in ("instructor", "ta", "student"):
        assert may_use(course, groups_of(**{COURSE: role}))
    assert not may_use(course, groups_of(**{OTHER_COURSE: "student"}))
    assert not may_use(course, groups_of("root"))  # a course's kernel is for its people only
    assert may_use(power, groups_of("power")) and may_use(power, groups_of("root"))
    assert not may_use(power, groups_of("student", **{COURSE: "instructor"}))
    assert may_use(everyone, []) and may_use(everyone, groups_of("student"))


def test_default_environment_most_specific_wins():
    specs = [
        EnvironmentSpec("base", ["six"], default=True),
        EnvironmentSpec("research", ["six"], audience=["tier:power"], default=True),
        EnvironmentSpec("course", ["six"], audience=[f"course:{COURSE}"], default=True),
        EnvironmentSpec("extra", ["six"], audience=[f"course:{COURSE}"]),  # not a default
    ]
    assert choose_default(specs, groups_of()).name == "base"
    assert choose_default(specs, groups_of("power")).name == "research"
    assert choose_default(specs, groups_of("power", **{COURSE: "student"})).name == "course"
    assert choose_default(specs[3:], groups_of(**{COURSE: "student"})) is None


# -- real builds ------------------------------------------------------------------------------


def hostile_wheel(folder, marker):
    """A wheel whose .pth file (run by every start of an interpreter with it installed)
    creates *marker*-<uid>: code a package list could make root run."""
    import zipfile

    path = os.path.join(folder, "evpth-1.0-py3-none-any.whl")
    files = {
        "evpth.pth": f"import os; open({marker!r} + '-%d' % os.getuid(), 'a').close()\n",
        "evpth.py": "VALUE = 1\n",
        "evpth-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: evpth\nVersion: 1.0\n",
        "evpth-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files["evpth-1.0.dist-info/RECORD"] = "".join(f"{name},,\n" for name in [*files, "evpth-1.0.dist-info/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


@needs_root
@pytest.mark.parametrize("kind", ["uv", "pip"])
def test_build_runs_no_code_of_the_packages(manager, build_account, kind):
    """uv's --compile-bytecode and ``pip freeze`` start the new environment's
    interpreter, whose site module runs the installed .pth files as the builder."""
    from classroomhub.environments.installers import INSTALLERS, build_venv

    folder = shared_tempdir("pth")
    os.chmod(folder, 0o777)  # the wheel's .pth may write its marker here, as anyone
    try:
        marker = os.path.join(folder, "ran")
        wheel = hostile_wheel(folder, marker)
        requirements = os.path.join(folder, "requirements.txt")
        with open(requirements, "w") as f:
            f.write(f"evpth @ file://{wheel}\n")
        cache = manager.cache_dir if kind == "uv" else os.path.join(folder, "pip-cache")
        target = os.path.join(folder, "env")
        for made in {cache, target}:
            os.makedirs(made, exist_ok=True)
            os.chown(made, build_account.uid, build_account.gid)
        installer = INSTALLERS[kind](cache, account=build_account)
        with open(os.path.join(folder, "build.log"), "w") as log:
            installed = asyncio.run(build_venv(installer, manager.base_python, target, requirements, log))
        assert "evpth==1.0" in installed
        assert not [p for p in os.listdir(folder) if p.startswith("ran-")], "a package's code ran during the build"
        assert subprocess.run([os.path.join(target, "bin", "python"), "-c", "pass"]).returncode == 0
        assert os.path.exists(f"{marker}-{os.getuid()}"), "the test wheel's .pth runs when its environment starts"
    finally:
        shutil.rmtree(folder)


@pytest.fixture(scope="module")
def data_dir():
    folder = ENV_DATA_DIR
    os.makedirs(folder, mode=0o755)
    yield folder
    for top, dirs, _ in os.walk(folder):
        os.chmod(top, 0o755)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def manager(data_dir):
    """Builds as the module's build account, with uv's cache kept between runs
    (given to each run's account: see EnvironmentManager._prepare_root)."""
    os.makedirs(UV_CACHE, exist_ok=True)
    yield EnvironmentManager(data_dir=data_dir, cache_dir=UV_CACHE, build_user=BUILDER, server_cgroup=SERVER_CGROUP)
    remove_spawned([], SERVER_CGROUP)  # the servers' cgroups, after the hub's servers


@pytest.fixture(scope="module")
def build_account(manager):
    """The module's build account, made as the manager makes it; removed at the end."""
    account = ensure_build_account(BUILDER, manager.log)
    manager._prepare_root(account)
    yield account
    subprocess.run(["pkill", "-KILL", "-u", BUILDER], check=False)
    subprocess.run(["userdel", BUILDER], check=False, stderr=subprocess.DEVNULL)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(LOCK_DIR, f"build-{BUILDER}.lock"))


@pytest.fixture(scope="module")
def student():
    with system_users([STUDENT, OTHER]):
        yield STUDENT


@pytest.fixture(scope="module")
async def course_env(manager, build_account):
    """Environment ``course`` for ev101 at version 1 (six 1.17.0)."""
    lines = []
    version = await manager.create(
        EnvironmentSpec("course", ["six==1.17.0"], audience=[f"course:{COURSE}"], default=True), lines.append
    )
    assert version == 1
    assert any("six==1.17.0" in line for line in lines), "the installer's output reaches the progress callback"
    return manager


def as_user(login, *cmd, env=None, timeout=120):
    return subprocess.run(
        list(cmd), user=login, group=login, extra_groups=[], env=env or {"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
        capture_output=True, text=True, timeout=timeout, cwd="/",
    )


@needs_root
def test_build_publishes_a_read_only_kernel(course_env):
    layout = course_env.layout
    assert layout.current("course") == 1
    version_dir = layout.version_dir("course", 1)
    with open(os.path.join(layout.kernels_dir("course"), "kernels", "env-course", "kernel.json")) as f:
        kernel = json.load(f)
    assert kernel["argv"][0] == os.path.join(version_dir, "bin", "python")  # the version, not `current`
    assert kernel["display_name"] == "Python 3 (course)"
    info = course_env.info("course")
    assert "six==1.17.0" in info.versions[0].manifest["installed"]
    assert any(p.startswith("ipykernel==") for p in info.versions[0].manifest["installed"])
    assert "Installed" in course_env.build_log("course", 1)
    assert f"as {BUILDER}" in course_env.build_log("course", 1)
    # the bytecode is valid for the sources root took (copies of the cache's links keep their
    # mtime): a stale .pyc would be compiled again at every import, in every kernel
    site = installers.site_packages(version_dir)
    for module in ("six", "ipykernel/kernelbase"):
        source = os.path.join(site, f"{module}.py")
        pyc = importlib.util.cache_from_source(source)
        with open(pyc, "rb") as f:
            recorded = int.from_bytes(f.read(12)[8:12], "little")
        assert recorded == int(os.stat(source).st_mtime) & 0xFFFFFFFF, f"{pyc} is stale"
    for top, dirs, files in os.walk(version_dir):
        for entry in [top] + [os.path.join(top, f) for f in files]:
            st = os.lstat(entry)
            assert (st.st_uid, st.st_gid) == (0, 0), f"{entry} is not root's (built as {BUILDER})"
            if not stat.S_ISLNK(st.st_mode):
                assert not st.st_mode & 0o222, f"{entry} is writable ({oct(st.st_mode)})"
                assert st.st_mode & stat.S_IROTH, f"{entry} is not readable by others"


@needs_root
def test_student_uses_but_cannot_change_a_shared_environment(course_env, student):
    layout = course_env.layout
    python = layout.python("course", 1)
    result = as_user(student, python, "-c", "import six; print(six.__version__)")
    assert result.returncode == 0 and result.stdout.strip() == "1.17.0", result.stderr
    site = as_user(student, python, "-c", "import six, os; print(os.path.dirname(six.__file__))").stdout.strip()
    attempts = {
        "new file": f"open({os.path.join(site, 'evil.py')!r}, 'w')",
        "change a module": f"open({os.path.join(site, 'six.py')!r}, 'a')",
        "new version": f"import os; os.mkdir({layout.version_dir('course', 99)!r})",
        "switch current": f"import os; os.symlink('/tmp', {layout.current_link('course') + '.x'!r})",
        "kernelspec": f"open({os.path.join(layout.kernels_dir('course'), 'kernels', 'env-course', 'kernel.json')!r}, 'a')",
    }
    for what, code in attempts.items():
        result = as_user(student, python, "-c", code)
        assert result.returncode != 0 and "PermissionError" in result.stderr, f"{what}: {result.stdout}{result.stderr}"
    # and the installer itself, run as the student, cannot install into it
    result = as_user(student, shutil.which("uv"), "pip", "install", "--no-config", "--offline", "--python", python, "iniconfig")
    assert result.returncode != 0, result.stdout + result.stderr


HOSTILE_SETUP = """\
import json, os, time
from setuptools import setup

# run by the build backend at build time (several times: each records a report)
report = {{"uid": os.getuid()}}
for what, path in {targets!r}.items():
    try:
        with open(path, "a") as f:
            f.write("# changed by a package's build\\n")
        report[what] = "written"
    except OSError as e:
        report[what] = type(e).__name__
if os.fork() == 0:  # a process that outlives the build, with the new version's file open
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):  # the installer waits for the end of the build's output
        os.dup2(null, std)
    try:
        late = open({late!r}, "a")
        deadline = time.monotonic() + 300
        while os.fstat(late.fileno()).st_uid != 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # until root has taken the version
        late.write("# changed after the build\\n")
        late.flush()
    finally:
        os._exit(0)
with open(os.path.join({reports!r}, "report-%d.json" % os.getpid()), "w") as f:
    json.dump(report, f)
setup(name="ebsdist", version="1.0", py_modules=["ebsdist"])
"""


def hostile_sdist(folder, setup_py, project="ebsdist"):
    """An sdist (*project* 1.0) whose setup.py is *setup_py*, in *folder* (a find-links folder)."""
    import io
    import tarfile

    files = {
        "setup.py": setup_py,
        f"{project}.py": "VALUE = 42\n",
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {project}\nVersion: 1.0\n",
    }
    with tarfile.open(os.path.join(folder, f"{project}-1.0.tar.gz"), "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{project}-1.0/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))


def build_account_pids(account):
    """The account's processes that run (a killed one whose parent died stays a zombie
    until this machine's init, not always a reaper, collects it)."""
    return [
        p.pid for p in psutil.process_iter(["uids", "status"])
        if p.info["uids"] and p.info["uids"].real == account.uid and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


@needs_root
async def test_a_packages_build_code_runs_as_the_build_account(course_env, build_account, monkeypatch):
    """With allow_builds, an sdist's setup.py runs at build time: as the build
    account, it can write neither a root-owned folder nor an existing version,
    and nothing it starts outlives the build."""
    layout = course_env.layout
    six_py = os.path.join(installers.site_packages(layout.version_dir("course", 1)), "six.py")
    with open(six_py) as f:
        six_before = f.read()
    folder = shared_tempdir("sdist")
    os.chmod(folder, 0o755)  # a find-links folder: listed by the build account
    reports = os.path.join(folder, "reports")
    os.mkdir(reports, 0o777)
    os.chmod(reports, 0o777)
    new_version = layout.version_dir("sdist", 1)
    targets = {"root's folder": os.path.join(layout.root, "planted-by-a-build"), "existing version": six_py}
    hostile_sdist(folder, HOSTILE_SETUP.format(targets=targets, late=os.path.join(new_version, "pyvenv.cfg"), reports=reports))
    monkeypatch.setenv("UV_FIND_LINKS", folder)  # passed on to the installer, as a mirror setting would be
    builder = EnvironmentManager(data_dir=course_env.data_dir, cache_dir=course_env.cache_dir, build_user=BUILDER, allow_builds=True)
    try:
        assert await builder.create(EnvironmentSpec("sdist", ["ebsdist==1.0"], audience=[f"course:{COURSE}"])) == 1
        found = [json.load(open(os.path.join(reports, r))) for r in os.listdir(reports)]
        assert found, "the sdist's build code did not run"
        for report in found:
            assert report == {"uid": build_account.uid, "root's folder": "PermissionError", "existing version": "PermissionError"}
        assert not os.path.exists(targets["root's folder"])
        with open(six_py) as f:
            assert f.read() == six_before
        # the build works: the package is in the new version, which is root's
        python = layout.python("sdist", 1)
        result = subprocess.run([python, "-c", "import ebsdist; print(ebsdist.VALUE)"], capture_output=True, text=True)
        assert result.stdout.strip() == "42", result.stderr
        assert os.lstat(new_version).st_uid == 0 and os.lstat(os.path.join(new_version, "pyvenv.cfg")).st_uid == 0
        # what the build started was killed with it: the version stays as built
        assert build_account_pids(build_account) == []
        await asyncio.sleep(5)
        with open(os.path.join(new_version, "pyvenv.cfg")) as f:
            assert "changed after the build" not in f.read()
    finally:
        if "sdist" in builder.names():
            builder.remove("sdist", force=True)
        shutil.rmtree(folder)


KERNEL_SCRIPT = """\
import sys
from jupyter_client.kernelspec import NoSuchKernel
from jupyter_client.manager import start_new_kernel
try:
    km, kc = start_new_kernel(kernel_name="env-course", startup_timeout=90)
except NoSuchKernel:
    print("NO SUCH KERNEL")
    sys.exit(0)
try:
    reply = kc.execute_interactive("import six, sys; print(six.__version__, sys.prefix)", timeout=60)
    assert reply["content"]["status"] == "ok", reply
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
"""


def start_kernel_as(login, groups, manager, runtime):
    """Start ``env-course`` with jupyter_client as *login*, with the JUPYTER_PATH a server of *groups* gets."""
    env = {"PATH": "/usr/bin:/bin", "HOME": runtime, "JUPYTER_RUNTIME_DIR": runtime, "JUPYTER_DATA_DIR": runtime}
    env.update(server_environment(manager, groups, env))
    return as_user(login, sys.executable, "-c", KERNEL_SCRIPT, env=env)


@needs_root
def test_course_kernel_for_its_people_only(course_env, student, tmp_path_factory):
    runtime = tempfile.mkdtemp(prefix="ev-runtime-")
    shutil.chown(runtime, student, student)
    try:
        result = start_kernel_as(student, groups_of(**{COURSE: "student"}), course_env, runtime)
        assert result.returncode == 0, result.stderr
        assert f"1.17.0 {course_env.layout.version_dir('course', 1)}" in result.stdout, result.stdout + result.stderr
        result = start_kernel_as(student, groups_of(**{OTHER_COURSE: "student"}), course_env, runtime)
        assert result.stdout.strip() == "NO SUCH KERNEL", result.stdout + result.stderr
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    assert kernel_dirs(course_env, groups_of(**{OTHER_COURSE: "student"})) == []


@needs_root
def test_server_environment(course_env):
    env = {"PATH": "/usr/bin:/bin", "JUPYTER_PATH": "/opt/extra"}
    ours = server_environment(course_env, groups_of(**{COURSE: "ta"}), env)
    assert ours["JUPYTER_PATH"].split(os.pathsep) == [course_env.layout.kernels_dir("course"), "/opt/extra"]
    assert ours["PATH"].split(os.pathsep)[0] == os.path.join(course_env.layout.version_dir("course", 1), "bin")
    assert server_environment(course_env, groups_of(**{OTHER_COURSE: "ta"}), env) == {}


def server_path(spawner):
    with open(f"/proc/{spawner.pid}/environ", "rb") as f:
        env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    return env[b"PATH"].decode().split(os.pathsep)


SIX_AND_PREFIX = "import importlib.metadata, sys; print(importlib.metadata.version('six'), sys.prefix)"


async def run_in_kernel(name, kernel_id, code=SIX_AND_PREFIX):
    """What *code* prints in kernel *kernel_id* of *name*'s server, split in words."""
    client = await kernel_client(name, kernel_id)
    out = []
    try:
        reply = await asyncio.to_thread(
            client.execute_interactive, code, timeout=60, output_hook=lambda msg: out.append(msg["content"].get("text", ""))
        )
    finally:
        client.stop_channels()
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(out).split()


async def start_course_kernel(app, name):
    r = await server_api(app, name, "kernels", "POST", json={"name": "env-course"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def stop_servers(app):
    for name in (STUDENT, OTHER):
        if app.users[name].spawner.active:
            await stop(app, name)


@needs_root
async def test_a_server_offers_its_owners_kernels_only(app, synced, course_env, student):
    layout = course_env.layout
    v1 = layout.version_dir("course", 1)
    # the power user's own kernel, the usual way (what `ipykernel install --user` writes in their home)
    home = pwd.getpwnam(OTHER).pw_dir
    own = as_user(OTHER, sys.executable, "-m", "ipykernel", "install", "--user", "--name", "own-ev", env={"PATH": "/usr/bin:/bin", "HOME": home})
    assert own.returncode == 0, own.stderr
    try:
        spawner = await start(app, STUDENT)
        specs = (await server_api(app, STUDENT, "kernelspecs")).json()["kernelspecs"]
        assert specs["env-course"]["spec"]["display_name"] == "Python 3 (course)"
        assert "own-ev" not in specs
        kernel = await start_course_kernel(app, STUDENT)
        assert await run_in_kernel(STUDENT, kernel, "import six, sys; print(six.__version__, sys.prefix)") == ["1.17.0", v1]
        # the course environment is its default: first on the server's PATH, by its version
        assert server_path(spawner)[0] == os.path.join(v1, "bin")
        # ... and the server itself still runs from the hub's environment
        assert spawner.cmd == app.config.Spawner.cmd

        other = await start(app, OTHER)
        specs = (await server_api(app, OTHER, "kernelspecs")).json()["kernelspecs"]
        assert "env-course" not in specs and {"python3", "own-ev"} <= specs.keys()
        r = await server_api(app, OTHER, "kernels", "POST", json={"name": "env-course"})
        # classroomhub's kernel manager in the server (jupyter_server alone answers 500)
        assert r.status_code == 404, r.text
        assert "No kernel named 'env-course' on this server" in r.json()["message"]
        assert (await server_api(app, OTHER, "kernels")).json() == []
        assert v1 not in ":".join(server_path(other))
        # the version is in use by the student's server (its PATH) and kernel, not by the other's server
        users = course_env.info("course", with_processes=True).versions[0].pids
        assert spawner.pid in users and other.pid not in users and len(users) >= 2
    finally:
        await stop_servers(app)


@needs_root
async def test_an_update_leaves_running_kernels_working(app, synced, course_env, student):
    layout = course_env.layout
    assert layout.current("course") == 1
    v1 = layout.version_dir("course", 1)
    try:
        spawner = await start(app, STUDENT)
        old_kernel = await start_course_kernel(app, STUDENT)
        assert await run_in_kernel(STUDENT, old_kernel) == ["1.17.0", v1]

        version = await course_env.update("course", packages=["six==1.16.0"])
        assert layout.current("course") == version == 2
        # the running kernel still reads its own version's files (metadata is read from disk each time)
        assert await run_in_kernel(STUDENT, old_kernel) == ["1.17.0", v1]
        # a kernel started now, in the same server, gets the new version
        new_kernel = await start_course_kernel(app, STUDENT)
        assert await run_in_kernel(STUDENT, new_kernel) == ["1.16.0", layout.version_dir("course", 2)]

        removed, kept = course_env.prune("course")
        assert removed == [] and spawner.pid in kept[1] and len(kept[1]) >= 3  # the server and both kernels
        with pytest.raises(EnvError, match=r"environment course is in use \(1: pids \["):
            course_env.remove("course")
        r = await server_api(app, STUDENT, f"kernels/{old_kernel}", "DELETE")
        assert r.status_code == 204, r.text
        # still in use: the server started with version 1's bin on its PATH (its terminals use it)
        removed, kept = course_env.prune("course")
        assert removed == [] and spawner.pid in kept[1]
        await stop(app, STUDENT)
        removed, kept = course_env.prune("course")
        assert removed == [1] and kept == {}
        assert layout.versions("course") == [2] and not os.path.exists(v1)
    finally:
        await stop_servers(app)


async def run_command_in_server(app, name, argv, timeout=600):
    """Run *argv* inside *name*'s server (from a python3 kernel, as its owner, with
    the server's environment); its exit status and output."""
    from fixtures.servers import start_kernel

    kernel = await start_kernel(app, name)
    code = (
        "import subprocess\n"
        f"r = subprocess.run({argv!r}, capture_output=True, text=True)\n"
        "print(r.returncode)\nprint(r.stdout + r.stderr)\n"
    )
    client = await kernel_client(name, kernel)
    out = []
    try:
        reply = await asyncio.to_thread(
            client.execute_interactive, code, timeout=timeout, output_hook=lambda msg: out.append(msg["content"].get("text", ""))
        )
    finally:
        client.stop_channels()
        await server_api(app, name, f"kernels/{kernel}", "DELETE")
    assert reply["content"]["status"] == "ok", reply["content"]
    status, _, output = "".join(out).partition("\n")
    return int(status), output


@needs_root
async def test_a_power_user_builds_their_own_environment_in_their_server(app, synced, student):
    """``classroomhub env`` inside a power user's server builds in their home, as
    them, and their server offers the kernel; a student's server refuses."""
    home = pwd.getpwnam(OTHER).pw_dir
    try:
        await start(app, OTHER)
        status, output = await run_command_in_server(app, OTHER, ["classroomhub", "env", "create", "mine", "-p", "six==1.17.0", "-q"])
        assert status == 0, output
        assert output.strip() == "mine: version 1 built and in force"
        version_dir = os.path.join(home, ".local/share/classroomhub/environments/mine/1")
        assert os.lstat(version_dir).st_uid == pwd.getpwnam(OTHER).pw_uid
        specs = (await server_api(app, OTHER, "kernelspecs")).json()["kernelspecs"]
        assert specs["env-mine"]["spec"]["display_name"] == "Python 3 (mine)"
        r = await server_api(app, OTHER, "kernels", "POST", json={"name": "env-mine"})
        assert r.status_code == 201, r.text
        assert await run_in_kernel(OTHER, r.json()["id"]) == ["1.17.0", version_dir]
        status, output = await run_command_in_server(app, OTHER, ["classroomhub", "env", "list"])
        assert status == 0 and "mine" in output, output

        await start(app, STUDENT)
        status, output = await run_command_in_server(app, STUDENT, ["classroomhub", "env", "create", "mine", "-p", "six"])
        assert status == 2, output
        assert "your tier (student) uses the environments it is given" in output
        assert not os.path.exists(os.path.join(pwd.getpwnam(STUDENT).pw_dir, ".local/share/classroomhub"))
    finally:
        await stop_servers(app)


@needs_root
async def test_a_restarted_kernel_gets_the_version_in_force(app, synced, course_env, student):
    """A kernel that died is restarted by jupyter with its kernelspec read again:
    the version in force, even when its own version was removed meanwhile (nothing
    runs from it while the kernel is dead, so a prune then removes it)."""
    layout = course_env.layout
    await course_env.create(EnvironmentSpec("restart", ["six==1.17.0"], audience=[f"course:{COURSE}"]))
    old = layout.version_dir("restart", 1)
    try:
        spawner = await start(app, STUDENT)
        r = await server_api(app, STUDENT, "kernels", "POST", json={"name": "env-restart"})
        assert r.status_code == 201, r.text
        kernel = r.json()["id"]
        assert await run_in_kernel(STUDENT, kernel) == ["1.17.0", old]
        assert await course_env.update("restart", packages=["six==1.16.0"]) == 2
        [pid] = kernel_pids_of(spawner, kernel)
        # the kernel dies while its server cannot restart it yet: then nothing uses version 1
        os.kill(spawner.pid, signal.SIGSTOP)
        try:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert course_env.prune("restart") == ([1], {})
        finally:
            os.kill(spawner.pid, signal.SIGCONT)
        # jupyter restarts it (same id), from the version in force
        deadline = time.monotonic() + 60
        while not kernel_pids_of(spawner, kernel) - {pid}:
            assert time.monotonic() < deadline, "the kernel was not restarted"
            await asyncio.sleep(0.2)
        assert await run_in_kernel(STUDENT, kernel) == ["1.16.0", layout.version_dir("restart", 2)]
    finally:
        await stop_servers(app)
        course_env.remove("restart", force=True)


@needs_root
async def test_broken_package_list_keeps_the_version_in_force(course_env):
    layout = course_env.layout
    current, versions, packages = layout.current("course"), layout.versions("course"), course_env.spec("course").packages
    failed = layout.next_version("course")
    with pytest.raises(BuildError) as caught:
        await course_env.update("course", packages=["six==0.0.999"])
    message = str(caught.value)
    assert f"version {failed} failed to build; version {current} stays in force" in message
    assert "six==0.0.999" in message and "unsatisfiable" in message  # the installer's own error
    assert layout.current("course") == current
    assert layout.versions("course") == versions
    assert not os.path.exists(layout.version_dir("course", failed))
    assert "unsatisfiable" in course_env.build_log("course", failed)
    assert course_env.spec("course").packages == packages


# a build that never ends: it sleeps, and leaves a process in a session of its own
ENDLESS_SETUP = """\
import subprocess, time
from setuptools import setup
subprocess.Popen(["sleep", "600"], start_new_session=True)
time.sleep(600)
setup(name="ebslow", version="1.0", py_modules=["ebslow"])
"""


@needs_root
async def test_a_build_past_its_time_limit_is_stopped(course_env, build_account, monkeypatch):
    layout = course_env.layout
    current, versions = layout.current("course"), layout.versions("course")
    folder = shared_tempdir("slow")
    os.chmod(folder, 0o755)
    hostile_sdist(folder, ENDLESS_SETUP, project="ebslow")
    monkeypatch.setenv("UV_FIND_LINKS", folder)
    builder = EnvironmentManager(
        data_dir=course_env.data_dir, cache_dir=course_env.cache_dir, build_user=BUILDER, allow_builds=True, build_timeout=5
    )
    started = time.monotonic()
    try:
        with pytest.raises(BuildError) as failed:
            await builder.update("course", packages=["six==1.17.0", "ebslow==1.0"])
        took = time.monotonic() - started
    finally:
        shutil.rmtree(folder)
    message = str(failed.value)
    assert f"failed to build; version {current} stays in force" in message
    assert "stopped after 5 s (EnvironmentManager.build_timeout)" in message
    assert took < 60, took
    assert build_account_pids(build_account) == []  # the installer, setup.py and the sleep it left
    assert layout.current("course") == current and layout.versions("course") == versions
    assert "stopped after 5 s" in course_env.build_log("course")


@needs_root
def test_a_build_is_refused_when_the_disk_is_short(course_env):
    layout = course_env.layout
    current = layout.current("course")
    short = EnvironmentManager(data_dir=course_env.data_dir, cache_dir=course_env.cache_dir, build_user=BUILDER, build_reserve=2**60)
    with pytest.raises(EnvError, match=r"only .* free in .*, less than the 1073741824.0 GiB kept free for builds \(EnvironmentManager.build_reserve\): not built"):
        asyncio.run(short.update("course", rebuild=True))
    assert layout.current("course") == current
    assert not os.path.exists(layout.version_dir("course", layout.next_version("course")))


def forged_users_of(version_dir, login):
    """Processes of *login* that only name *version_dir*: a PATH entry and an argv[0]
    (as ``runuser ... env PATH=...`` and bash's ``exec -a``); started in their own session."""
    python = os.path.join(version_dir, "bin", "python")
    procs = [
        subprocess.Popen(["runuser", "-u", login, "--", "env", f"PATH={version_dir}/bin:/usr/bin:/bin", "sleep", "120"], cwd="/", start_new_session=True),
        subprocess.Popen(["runuser", "-u", login, "--", "bash", "-c", f"exec -a {python} sleep 120"], cwd="/", start_new_session=True),
    ]
    deadline = time.monotonic() + 30
    while not all(any(c.name() == "sleep" for c in psutil.Process(p.pid).children()) for p in procs):
        assert time.monotonic() < deadline, "the forging processes did not start"  # both have exec'd sleep
        time.sleep(0.1)
    [named] = [c for p in procs for c in psutil.Process(p.pid).children() if c.cmdline()[0] == python]
    return procs


@needs_root
def test_a_forged_path_or_argv0_blocks_no_removal(course_env, student):
    """Only what the kernel says (the executable, the folder a process works in, the
    files it maps or holds open) counts, and PATH only for the hub's servers: any user
    can name a version in their own PATH or argv[0]."""
    layout = course_env.layout
    old = layout.current("course")
    new = asyncio.run(course_env.update("course", rebuild=True))
    assert layout.versions("course")[-2:] == [old, new]
    procs = []
    try:
        for version in (old, new):
            procs += forged_users_of(layout.version_dir("course", version), STUDENT)
        assert course_env.info("course", with_processes=True).versions[-1].pids == ()
        removed, kept = course_env.prune("course")
        assert old in removed and kept == {}
        course_env.remove("course")
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert course_env.names() == []
    assert not os.path.exists(course_env.layout.env_dir("course"))
    with pytest.raises(EnvError, match="no environment named 'course'"):
        course_env.info("course")


@needs_root
def test_a_process_in_a_version_folder_blocks_removal(manager, build_account, student):
    """Kernel-given evidence still counts: a process working in a version's folder."""
    asyncio.run(manager.create(EnvironmentSpec("held", ["six==1.17.0"])))
    folder = manager.layout.version_dir("held", 1)
    proc = subprocess.Popen(["runuser", "-u", STUDENT, "--", "sleep", "120"], cwd=folder, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not any(p.name() == "sleep" for p in psutil.Process(proc.pid).children()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with pytest.raises(EnvError, match=r"environment held is in use \(1: pids \["):
            manager.remove("held")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    manager.remove("held")
    assert "held" not in manager.names()


@needs_root
def test_cli(manager, build_account, tmp_path, capsys):
    from classroomhub.cli import main

    where = ["--data-dir", manager.data_dir, "--cache-dir", manager.cache_dir, "--build-user", BUILDER]
    assert main(["env", "create", "cli", "-p", "six==1.17.0", "--audience", "tier:power", "-q", *where]) == 0
    assert capsys.readouterr().out == "cli: version 1 built and in force\n"

    assert main(["env", "update", "cli", "-p", "six==0.0.999", "-q", *where]) == 1
    err = capsys.readouterr().err
    assert err.startswith("classroomhub env update: environment cli: version 2 failed to build; version 1 stays in force\n")
    assert "six==0.0.999" in err and "unsatisfiable" in err

    assert main(["env", "update", "cli", "--audience", f"course:{COURSE}", *where]) == 0
    assert capsys.readouterr().out == "cli: declaration updated\n"
    # a new version; the old one goes at once, as no process uses it
    assert main(["env", "update", "cli", "--rebuild", "-q", *where]) == 0
    assert capsys.readouterr().out == "cli: version 3 built and in force\ncli: removed versions 1\n"
    assert main(["env", "remove", "cli", "--old-versions", *where]) == 0
    assert capsys.readouterr().out == "cli: no old versions\n"
    assert main(["env", "list", "--json", *where]) == 0
    [record] = [r for r in json.loads(capsys.readouterr().out) if r["name"] == "cli"]
    assert record["current"] == 3 and record["audience"] == [f"course:{COURSE}"]
    assert [v["version"] for v in record["versions"]] == [3]
    assert main(["env", "show", "cli", "--log", "2", *where]) == 0
    assert "unsatisfiable" in capsys.readouterr().out  # the failed build's log

    bad = tmp_path / "requirements.txt"
    bad.write_text("six\n--extra-index-url https://evil.example/simple\n")
    assert main(["env", "create", "bad", "-r", str(bad), *where]) == 2
    assert capsys.readouterr().err == f"classroomhub env create: {bad}:2: pip options are not accepted (--extra-index-url): list packages only\n"
    assert "bad" not in manager.names()
    assert main(["env", "create", "broken", "-p", "six==0.0.999", "-q", *where]) == 1
    assert "environment broken: version 1 failed to build; nothing was created\n" in capsys.readouterr().err
    assert "broken" not in manager.names()

    assert main(["env", "remove", "cli", *where]) == 0
    assert capsys.readouterr().out == "cli: removed\n"
    assert main(["env", "show", "cli", *where]) == 1
    assert capsys.readouterr().err == "classroomhub env show: no environment named 'cli'\n"
