"""The package's shape: the layering of docs/architecture.md holds.

import-linter checks the contracts in pyproject.toml ([tool.importlinter]):
every module imports only from its own layer or below (imports inside
functions count too), the classroom service's own layers likewise, and no
two sibling modules or packages import each other, directly or round about.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "classroomhub"
#: docs/architecture.md: a module longer than this has more than one job
MAX_MODULE_LINES = 500


def test_import_contracts_are_kept():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    # a contract that names no module would be "kept" vacuously
    assert "BROKEN" not in report and report.count("KEPT") == 3, report


def test_the_contracts_catch_an_upward_import(tmp_path):
    """The same check, on a copy of the package with one upward import added,
    fails: the contracts are not vacuous."""
    copy = tmp_path / "classroomhub"
    subprocess.run(["cp", "-r", str(PACKAGE), str(copy)], check=True)
    tiers = copy / "tiers.py"
    tiers.write_text(tiers.read_text() + "\nfrom .spawner import ClassroomSpawner  # noqa\n")
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint_imports), "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = result.stdout + result.stderr
    assert result.returncode != 0, report
    assert "classroomhub.tiers -> classroomhub.spawner" in report, report


def test_no_module_is_too_long():
    lengths = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
        if "migrations/versions" not in path.as_posix()
    }
    too_long = {path: n for path, n in lengths.items() if n > MAX_MODULE_LINES}
    assert not too_long, f"split these by job (over {MAX_MODULE_LINES} lines): {too_long}"
