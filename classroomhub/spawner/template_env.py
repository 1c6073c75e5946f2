"""What the spawn template's imports take from the environment, and how a
forked server gets values of its own instead.

Modules compute some values at import from the environment: JupyterHub's
``HubAuth.base_url`` (the cookie path of the server's login) from
``JUPYTERHUB_SERVICE_PREFIX``, JupyterLab's settings folder and
send2trash's trash from ``HOME``, jupyter_client's message user name from
``USER``. An exec'd server computes them from its owner's environment; the
template imports once, for everyone, before anyone's request exists.

So the template imports with a *placeholder* for each per-server variable
(:data:`PER_SERVER`) the first server's environment sets, finds where the placeholders ended up (module
globals, class attributes and trait defaults, function defaults, attributes
of module-level objects), and each forked child replaces them with its own
values (:meth:`Captures.apply`). Every other variable read during the
imports is recorded (:class:`RecordedReads`): a server whose environment
differs in one of them starts by exec (the hub checks, :func:`differs`).
"""

from __future__ import annotations

import os
import sys
import types

from traitlets import TraitType

#: string variables a spawner sets per server that imports may read
PER_SERVER = (
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "JUPYTERHUB_USER",
    "JUPYTERHUB_SERVER_NAME",
    "JUPYTERHUB_SERVICE_PREFIX",
    "JUPYTERHUB_SERVICE_URL",
    "JUPYTERHUB_BASE_URL",
    "JUPYTERHUB_API_URL",
    "JUPYTERHUB_ACTIVITY_URL",
    "JUPYTERHUB_HOST",
    "JUPYTERHUB_PUBLIC_URL",
    "JUPYTERHUB_PUBLIC_HUB_URL",
    "JUPYTERHUB_CLIENT_ID",
    "JUPYTERHUB_OAUTH_CALLBACK_URL",
    "JUPYTERHUB_OAUTH_SCOPES",
    "JUPYTERHUB_OAUTH_ACCESS_SCOPES",
    "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES",
    "JUPYTERHUB_SSL_KEYFILE",
    "JUPYTERHUB_SSL_CERTFILE",
    "JUPYTERHUB_SSL_CLIENT_CA",
    "JUPYTERHUB_ROOT_DIR",
    "JUPYTERHUB_DEFAULT_URL",
)

#: never rewritten: the environment itself (a child replaces it whole)
SKIP_MODULES = {"os", "posix", "__main__", "__mp_main__"}


def placeholders(tag, names):
    """``{variable: placeholder}`` for the per-server variables among
    *names*; path-shaped, so that path joins keep it whole."""
    return {name: f"/nonexistent/{tag}-{name}" for name in PER_SERVER if name in names}


class RecordedReads(type(os.environ)):
    """os.environ that notes which variables are looked up one by one (not
    when copied whole, as wsgiref does at import: that decides nothing)."""

    def __init__(self, environ):
        super().__init__(environ._data, environ.encodekey, environ.decodekey, environ.encodevalue, environ.decodevalue)
        self.read = set()
        self._bulk = 0

    def __getitem__(self, key):
        if not self._bulk:
            self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        if not self._bulk:
            self.read.add(key)
        return super().__contains__(key)

    def copy(self):
        self._bulk += 1
        try:
            return dict(self)
        finally:
            self._bulk -= 1

    def items(self):
        self._bulk += 1
        try:
            return list(super().items())
        finally:
            self._bulk -= 1

    def values(self):
        return [value for _, value in self.items()]


def _mentions(value, marks, depth=0):
    if isinstance(value, str):
        return any(mark in value for mark in marks)
    if isinstance(value, bytes):
        return any(mark.encode() in value for mark in marks)
    if depth < 3 and isinstance(value, (list, tuple, set, frozenset)):
        return any(_mentions(item, marks, depth + 1) for item in value)
    if depth < 3 and isinstance(value, dict):
        return any(_mentions(item, marks, depth + 1) for item in value.values())
    return False


def _replaced(value, swap):
    """*value* with each placeholder replaced (lists and dicts in place)."""
    if isinstance(value, str):
        for mark, real in swap:
            value = value.replace(mark, real)
        return value
    if isinstance(value, bytes):
        for mark, real in swap:
            value = value.replace(mark.encode(), os.fsencode(real))
        return value
    if isinstance(value, list):
        value[:] = [_replaced(item, swap) for item in value]
        return value
    if isinstance(value, dict):
        for key in list(value):
            value[key] = _replaced(value[key], swap)
        return value
    if isinstance(value, (tuple, set, frozenset)):
        return type(value)(_replaced(item, swap) for item in value)
    return value


class Captures:
    """Where the template's imports kept placeholders: ``(owner, attribute)``
    pairs (a module global, a class attribute, a trait's ``default_value``,
    a function's ``__defaults__``, an attribute of a module-level object)."""

    def __init__(self, marks):
        self.marks = marks  # {variable: placeholder}
        self.found = []
        self._seen = set()

    def scan(self):
        """Look through every loaded module once (after the imports)."""
        marks = list(self.marks.values())
        for module_name, module in list(sys.modules.items()):
            if module_name in SKIP_MODULES or not isinstance(module, types.ModuleType):
                continue
            for name, value in list(vars(module).items()):
                try:
                    self._scan_global(module, module_name, name, value, marks)
                except Exception:  # an odd object (lazy proxy, broken __dict__) keeps nothing we can rewrite
                    continue
        return self

    def _scan_global(self, module, module_name, name, value, marks):
        if _mentions(value, marks):
            self._add(module, name)
        elif isinstance(value, type):
            if value.__module__ == module_name:
                self._scan_class(value, marks)
        elif isinstance(value, types.FunctionType):
            self._scan_function(value, marks)
        elif not isinstance(value, (types.ModuleType, type(os.environ))) and isinstance(getattr(value, "__dict__", None), dict):
            for attr, inner in list(vars(value).items()):
                if _mentions(inner, marks):
                    self._add(value, attr)

    def _scan_class(self, cls, marks):
        for name, value in list(vars(cls).items()):
            if isinstance(value, TraitType):
                if _mentions(value.default_value, marks):
                    self._add(value, "default_value")
            elif isinstance(value, (staticmethod, classmethod)):
                self._scan_function(value.__func__, marks)
            elif isinstance(value, types.FunctionType):
                self._scan_function(value, marks)
            elif _mentions(value, marks):
                self._add(cls, name)  # incl. traitlets' _static_immutable_initial_values

    def _scan_function(self, function, marks):
        if _mentions(function.__defaults__, marks):
            self._add(function, "__defaults__")
        if _mentions(function.__kwdefaults__, marks):
            self._add(function, "__kwdefaults__")

    def _add(self, owner, name):
        key = (id(owner), name)
        if key not in self._seen:
            self._seen.add(key)
            self.found.append((owner, name))

    def describe(self):
        """Where, for the template's log: ``module.Class.name`` entries."""
        names = []
        for owner, name in self.found:
            if isinstance(owner, types.ModuleType):
                names.append(f"{owner.__name__}.{name}")
            elif isinstance(owner, TraitType):
                names.append(f"{getattr(owner.this_class, '__qualname__', '?')}.{owner.name}")
            else:
                label = getattr(owner, "__qualname__", None) or type(owner).__qualname__
                names.append(f"{label}.{name}")
        return sorted(set(names))

    def apply(self, environ):
        """In a forked child: the placeholders become *environ*'s values
        (the hub sends only requests that set the same per-server variables
        the template had placeholders for, :func:`differs`)."""
        swap = [(mark, environ.get(var, "")) for var, mark in self.marks.items()]
        for owner, name in self.found:
            value = getattr(owner, name)
            replaced = _replaced(value, swap)
            if replaced is not value:
                setattr(owner, name, replaced)


def differs(env, reads, marked):
    """Why *env* (a server's) cannot run in a template whose imports read
    *reads* (``{variable: its value then, None if unset}``), with
    placeholders for the per-server variables *marked*; "" if it can."""
    reasons = []
    for name, value in sorted(reads.items()):
        if name in PER_SERVER:
            if (name in env) != (name in marked):
                reasons.append(f"{name} is {'set' if name in env else 'unset'} here, not when the template imported")
        elif env.get(name) != value:
            reasons.append(f"{name} differs from the template's (read when it imported)")
    return "; ".join(reasons)
