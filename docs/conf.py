"""Sphinx configuration for the classroomhub documentation."""

import dataclasses
import os
import sys

# Document the package from this checkout, even if it is not installed.
sys.path.insert(0, os.path.abspath(".."))

from classroomhub import __version__  # noqa: E402
from traitlets import MetaHasTraits  # noqa: E402

project = "classroomhub"
author = "classroomhub contributors"
copyright = "classroomhub contributors"
version = release = __version__

extensions = [
    "myst_parser",
    "autodoc_traits",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: ```{directive} fences, ::: blocks, and anchors for "page.md#heading" links.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc: keep signatures readable; members are listed explicitly per page.
autodoc_member_order = "bysource"
autodoc_typehints = "none"
add_module_names = False

html_theme = "pydata_sphinx_theme"
html_title = f"classroomhub {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path = []


def _skip_inherited_traits(app, what, name, obj, skip, options):
    """Show only the traits classroomhub defines.

    ``autoconfigurable`` lists every configurable trait, including the many
    inherited from JupyterHub and oauthenticator; those are documented by
    their projects (and their help strings are not written for this build).
    The reference pages point to them instead.
    """
    this_class = getattr(obj, "this_class", None)
    if this_class is not None and not this_class.__module__.startswith("classroomhub"):
        return True
    return skip


def _hide_configurable_signature(app, what, name, obj, options, signature, return_annotation):
    """Configurable classes are set up from config, not called by users:
    their ``(*args, **kwargs)`` signature only adds noise."""
    if what in ("class", "configurable") and isinstance(obj, MetaHasTraits):
        return "", None
    if what in ("class", "exception") and dataclasses.is_dataclass(obj):
        # dataclass signatures carry quoted annotations; the names suffice
        names = [f.name for f in dataclasses.fields(obj) if f.init and f.repr]
        return f"({', '.join(names)})", None
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_inherited_traits)
    app.connect("autodoc-process-signature", _hide_configurable_signature)
