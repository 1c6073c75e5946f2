"""What an environment is made of: a name, a package list, who may use it.

Package lists are accepted in three formats, all reduced to one list of
PEP 508 requirement strings (``pandas>=2``, ``requests[socks]``):

* ``requirements.txt``: one requirement per line, ``#`` comments and blank
  lines ignored. pip *options* (``-r``, ``-e``, ``--index-url``, ...) are
  refused: they would make a root build read other files or other indexes.
* ``pyproject.toml``: the ``[project] dependencies`` list (PEP 621), what
  a course repository that is a Python project already has.
* ``environment.yml``-like: the ``dependencies:`` list, with pip packages
  either as plain strings or under ``- pip:``. Conda packages proper
  (``python=3.11``, channels) are not installable by pip and are refused.

Direct references (``pkg @ https://...``, local paths) are refused too:
every package comes from the configured index, as a wheel (no build code
runs as root, see :attr:`EnvironmentManager.allow_builds`).
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from dataclasses import dataclass, field

import yaml
from packaging.requirements import InvalidRequirement, Requirement

from ..roster import COURSE_PATTERN
from ..tiers import TIERS, unknown_tier

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: environment names: they become folder names and kernel names
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
#: the formats :func:`read_packages` accepts
FORMATS = ("requirements", "pyproject", "environment")

EVERYONE = "everyone"


class SpecError(ValueError):
    """A package list or declaration is invalid; the message names the file and line."""


def check_name(name):
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise SpecError(
            f"invalid environment name {name!r}: lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 63 characters"
        )
    return name


def check_requirement(text, where):
    """*text* as a normalized requirement string, or a :class:`SpecError` naming *where*."""
    text = text.strip()
    # pip reads a requirements file with str.splitlines(): a line separator kept in a
    # marker string (TOML and YAML escapes let one in) would start an option line
    if len(text.splitlines()) > 1 or any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in text):
        raise SpecError(f"{where}: a requirement is one line of printable text (no control characters or line separators): {text!r}")
    if text.startswith("-"):
        raise SpecError(f"{where}: pip options are not accepted ({text.split()[0]}): list packages only")
    try:
        req = Requirement(text)
    except InvalidRequirement as e:
        raise SpecError(f"{where}: not a package requirement: {text!r} ({e})") from None
    if req.url:
        raise SpecError(f"{where}: direct references ({req.name} @ ...) are not accepted: packages come from the index")
    return str(req)


def check_audience(entry):
    """``everyone``, ``course:<id>`` or ``tier:<tier>``; returned as given when valid."""
    if entry == EVERYONE:
        return entry
    kind, _, value = str(entry).partition(":")
    if kind == "course":
        if not COURSE_PATTERN.fullmatch(value):
            raise SpecError(f"invalid audience {entry!r}: {value!r} is not a course id a roster accepts")
        return entry
    if kind == "tier":
        if value not in TIERS:
            raise SpecError(unknown_tier(value))
        return entry
    raise SpecError(f"invalid audience {entry!r}: expected 'everyone', 'course:<id>' or 'tier:<tier>'")


def _requirements(text, source):
    packages = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if line:
            packages.append(check_requirement(line, f"{source}:{number}"))
    return packages


def _line_of(text, needle):
    # up to the first character a TOML string would write as an escape
    needle = re.split(r'[\\"\x00-\x1f\x7f-\x9f\u2028\u2029]', needle, maxsplit=1)[0] or needle
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number
    return 1


def _pyproject(text, source):
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{source}: not valid TOML: {e}") from None
    deps = data.get("project", {}).get("dependencies")
    if not isinstance(deps, list):
        raise SpecError(f"{source}: no [project] dependencies list")
    return [check_requirement(str(d), f"{source}:{_line_of(text, str(d))}") for d in deps]


def _environment(text, source):
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: not valid YAML: {e}") from None
    deps = None
    if isinstance(root, yaml.MappingNode):
        deps = next((v for k, v in root.value if k.value == "dependencies"), None)
    if not isinstance(deps, yaml.SequenceNode):
        raise SpecError(f"{source}: no 'dependencies:' list")
    packages = []
    for node in deps.value:
        where = f"{source}:{node.start_mark.line + 1}"
        if isinstance(node, yaml.ScalarNode):
            if re.match(r"^[A-Za-z0-9_.-]+=[^=]", node.value) or node.value.split("=")[0] in ("python", "pip"):
                raise SpecError(f"{where}: {node.value!r} is a conda package; only pip packages are installed")
            packages.append(check_requirement(node.value, where))
        elif isinstance(node, yaml.MappingNode) and [k.value for k, _ in node.value] == ["pip"]:
            pip_list = node.value[0][1]
            if not isinstance(pip_list, yaml.SequenceNode):
                raise SpecError(f"{where}: 'pip:' must be a list")
            for item in pip_list.value:
                packages.append(check_requirement(str(item.value), f"{source}:{item.start_mark.line + 1}"))
        else:
            raise SpecError(f"{where}: expected a package name or '- pip: [...]'")
    return packages


def guess_format(path):
    base = os.path.basename(path)
    if base == "pyproject.toml" or base.endswith(".toml"):
        return "pyproject"
    if base.endswith((".yml", ".yaml")):
        return "environment"
    return "requirements"


def parse_packages(text, source="<packages>", format=None):
    """The requirement strings of a package list in one of :data:`FORMATS`
    (guessed from *source*'s file name when *format* is None)."""
    format = format or guess_format(source)
    parsers = {"requirements": _requirements, "pyproject": _pyproject, "environment": _environment}
    if format not in parsers:
        raise SpecError(f"unknown package list format {format!r} (expected one of {', '.join(FORMATS)})")
    packages = parsers[format](text, source)
    if not packages:
        raise SpecError(f"{source}: no packages listed")
    return packages


def read_packages(path, format=None):
    """:func:`parse_packages` of a file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read: {e}") from None
    return parse_packages(text, path, format)


@dataclass
class EnvironmentSpec:
    """An environment's declaration (kept in ``<name>/environment.json``).

    ``audience`` lists who may use its kernel: ``everyone``,
    ``course:<id>`` (the course's instructors, TAs and students) and/or
    ``tier:<tier>`` (that tier and the more privileged ones). ``default``
    makes it the environment on its users' PATH.
    """

    name: str
    packages: list
    audience: list = field(default_factory=lambda: [EVERYONE])
    display_name: str = ""
    default: bool = False

    def __post_init__(self):
        check_name(self.name)
        self.packages = [check_requirement(p, f"environment {self.name}") for p in self.packages]
        if not self.packages:
            raise SpecError(f"environment {self.name}: no packages listed")
        if not self.audience:
            raise SpecError(f"environment {self.name}: no audience (use 'everyone')")
        self.audience = [check_audience(a) for a in self.audience]
        if not self.display_name:
            self.display_name = f"Python 3 ({self.name})"

    @property
    def kernel_name(self):
        return f"env-{self.name}"

    def to_dict(self):
        return {
            "name": self.name,
            "packages": list(self.packages),
            "audience": list(self.audience),
            "display_name": self.display_name,
            "default": self.default,
        }

    @classmethod
    def from_dict(cls, data):
        return cls(
            name=data["name"],
            packages=list(data["packages"]),
            audience=list(data.get("audience") or [EVERYONE]),
            display_name=data.get("display_name", ""),
            default=bool(data.get("default", False)),
        )
