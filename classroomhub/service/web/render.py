"""Render a submitted notebook as a static HTML page for graders.

A student's notebook is untrusted: its outputs are whatever the student's
code (or the student) wrote, and may carry script meant to run in a grader's
session. Three layers keep it inert:

1. before rendering, outputs are reduced to mime types that need no script
   (no application/javascript, widget views, ...);
2. nbconvert renders only the cells; that fragment goes through bleach with
   an allowlist of presentational tags and attributes (no script, event
   handlers, frames, forms, javascript: URLs, images other than data: ones),
   and is placed in a page whose head we write ourselves, with nbconvert's
   own CSS and none of its script (MathJax, require.js, widgets);
3. the page is served with CONTENT_SECURITY_POLICY, which forbids script and
   every fetch outright and sandboxes the page into an opaque origin, so
   anything that slipped through could neither run nor read the service's
   cookies.

Math is shown as its LaTeX source, since rendering it would need MathJax.
"""

import functools
import html
import json
import logging
import re

import bleach
import nbformat
from bleach.css_sanitizer import CSSSanitizer
from jinja2 import DictLoader
from nbconvert import HTMLExporter
from nbformat.validator import get_validator

CONTENT_SECURITY_POLICY = "; ".join(
    [
        # nothing is allowed unless listed below: no script, fetch/XHR,
        # frames, objects, media, workers, manifests or external CSS
        "default-src 'none'",
        # nbconvert's inline <style> and sanitized style="" attributes (CSS
        # cannot run script; with the img/font rules below it cannot fetch)
        "style-src 'unsafe-inline'",
        # images are embedded in the notebook as data: URIs; refusing all
        # others means no beacon to a student's server, and no request to the
        # service itself carrying the grader's cookies
        "img-src data:",
        # nbconvert's CSS names only embedded fonts, if any
        "font-src data:",
        # no <base> may redirect relative links, no form may submit anywhere
        "base-uri 'none'",
        "form-action 'none'",
        # only the service's own pages may frame it (clickjacking)
        "frame-ancestors 'self'",
        # no allow-* flags: scripts, popups, forms, top navigation and
        # downloads are off, and the page gets an opaque origin, so it cannot
        # read the service's cookies or storage even if script did run
        "sandbox",
    ]
)

# Output mime types that display without script; the rest are dropped before
# rendering (nbconvert would emit application/javascript as a <script>).
_DISPLAYABLE = {"text/plain", "text/html", "text/markdown", "text/latex", "image/png", "image/jpeg", "image/svg+xml"}

# The cells only: the page around them is written by _page().
_CELLS_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block header -%}{%- endblock header -%}
{%- block body_header -%}{%- endblock body_header -%}
{%- block body_footer -%}{%- endblock body_footer -%}
{%- block footer -%}{%- endblock footer -%}
"""

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd", "del", "details",
    "div", "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i",
    "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strong",
    "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "u", "ul", "var",
}  # fmt: skip
_ATTRIBUTES = {
    # data-mime-type is what nbconvert's CSS selects outputs by; tabindex is
    # how it makes cells reachable from the keyboard
    "*": {"class", "id", "title", "lang", "dir", "style", "tabindex", "data-mime-type"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan", "align"},
    "th": {"colspan", "rowspan", "align", "scope"},
    "col": {"span"},
    "ol": {"start"},
}
# An image loaded through <img> never runs script, even an SVG one.
_DATA_IMAGE = re.compile(r"data:image/(png|jpeg|gif|webp|svg\+xml);base64,[A-Za-z0-9+/=\s]*\Z")
# bleach's own normalization before it checks a URL's scheme
_URL_NOISE = re.compile(r"[`\x00-\x20\x7f-\xa0\s]+")
# bleach keeps the text of the tags it strips; drop these elements whole so
# that CSS and code do not show up as text (cosmetic: bleach makes it safe)
_RAW_TEXT_ELEMENTS = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)


def _allowed_attribute(tag, name, value):
    if name not in _ATTRIBUTES["*"] and name not in _ATTRIBUTES.get(tag, ()):
        return False
    if name == "src":
        return bool(_DATA_IMAGE.match(value))
    if name == "href":
        # bleach checks the scheme against _clean's protocols, which must
        # include data: for images; links may not use it
        return not _URL_NOISE.sub("", value).lower().startswith("data:")
    return True


def _clean(fragment):
    # a Cleaner per call: bleach's are not safe to share between threads
    cleaner = bleach.Cleaner(
        tags=_TAGS,
        attributes=_allowed_attribute,
        protocols={"http", "https", "mailto", "data"},
        strip=True,
        strip_comments=True,
        css_sanitizer=CSSSanitizer(),
    )
    return cleaner.clean(_RAW_TEXT_ELEMENTS.sub("", fragment))


# nbconvert warns of every image without alt text (that is, of every plot)
_nbconvert_log = logging.getLogger(__name__ + ".nbconvert")
_nbconvert_log.setLevel(logging.ERROR)


def _exporter(template_file):
    return HTMLExporter(
        log=_nbconvert_log,
        template_name="lab",
        theme="light",
        template_file=template_file,
        extra_loaders=[DictLoader({"classroom_cells.html.j2": _CELLS_TEMPLATE})],
    )


@functools.cache
def _stylesheet():
    """nbconvert's CSS for the lab template, from rendering an empty notebook
    (so it holds nothing of a student's)."""
    page, _ = _exporter("index.html.j2").from_notebook_node(nbformat.v4.new_notebook())
    return "\n".join(re.findall(r"<style[^>]*>(.*?)</style>", page, re.DOTALL))


def _read(data):
    """The notebook in *data*, or ValueError saying why it is not one."""
    try:
        raw = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ValueError("not a notebook: the file is not UTF-8 text") from None
    except (ValueError, RecursionError) as e:
        raise ValueError(f"not a notebook: the file is not valid JSON ({e})") from None
    if not isinstance(raw, dict) or "nbformat" not in raw:
        raise ValueError("not a notebook: the JSON has no nbformat field")
    if raw["nbformat"] != 4:
        raise ValueError(f"unsupported notebook format {raw['nbformat']!r}: only nbformat 4 (Jupyter 4 and later)")
    minor = raw.get("nbformat_minor")
    validator = get_validator(version=4, version_minor=minor if isinstance(minor, int) else None)
    try:
        # the schema check is what lets nbconvert below assume a sound notebook
        # (not nbformat.validate: it mutates, and crashes on some bad input)
        validator.validate(raw)
        return nbformat.v4.nbjson.JSONReader().to_notebook(raw)
    except nbformat.ValidationError as e:
        raise ValueError(f"not a valid notebook: {e.message}") from None
    except RecursionError:
        raise ValueError("not a valid notebook: nested too deeply") from None


def _drop_scripted_outputs(nb):
    for cell in nb.cells:
        for output in cell.get("outputs", ()):
            if "data" in output:
                output.data = {mime: value for mime, value in output.data.items() if mime in _DISPLAYABLE}


def _page(title, cells):
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{html.escape(title)}</title>
<style>
{_stylesheet()}
</style>
</head>
<body class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
<main>
{cells}
</main>
</body>
</html>
"""


def render_notebook(data: bytes, title: str) -> str:
    """A standalone, script-free HTML page showing the notebook in *data*,
    to be served with CONTENT_SECURITY_POLICY. ValueError if *data* is not
    an nbformat 4 notebook."""
    nb = _read(data)
    _drop_scripted_outputs(nb)
    cells, _ = _exporter("classroom_cells.html.j2").from_notebook_node(nb)
    return _page(title, _clean(cells))
