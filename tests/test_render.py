"""classroomhub.service.web.render: a student's notebook as a script-free page for
graders, checked statically and, adversarially, in Debian's Chromium."""

import asyncio
import json
import os
import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from classroomhub.service.web.render import CONTENT_SECURITY_POLICY, render_notebook


TIMEOUT_MS = 30_000

# a 1x1 PNG
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PWN = "document.title='pwned'"


def dump(nb):
    return nbformat.writes(nb).encode()


def html_output(markup):
    return new_output("display_data", data={"text/html": markup, "text/plain": "[html]"})


def normal_notebook():
    return new_notebook(
        cells=[
            new_markdown_cell("# Heading One\n\nSome *emphasis* and `a < b`."),
            new_code_cell(
                "print('hello')\n6 * 7",
                execution_count=1,
                outputs=[
                    new_output("stream", name="stdout", text="hello grader\n"),
                    new_output("execute_result", execution_count=1, data={"text/plain": "42"}),
                    new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"}),
                    new_output("display_data", data={"image/svg+xml": "<svg xmlns='http://www.w3.org/2000/svg'/>"}),
                    html_output("<table><tr><th>col</th><td>cell</td></tr></table>"),
                    new_output(
                        "error",
                        ename="ZeroDivisionError",
                        evalue="division by zero",
                        traceback=["\x1b[0;31mZeroDivisionError\x1b[0m: division by zero"],
                    ),
                ],
            ),
        ]
    )


def adversarial_notebook():
    return new_notebook(
        cells=[
            new_markdown_cell(
                "# Benign Heading\n\n"
                f"<script>window.parent.pwned=1; {PWN}</script>\n\n"
                f"<a id='jslink' href=\"javascript:{PWN}\">click</a>\n\n"
                f"<img src=x onerror=\"{PWN}\">\n"
            ),
            new_code_cell(
                "attack()",
                execution_count=1,
                outputs=[
                    new_output("stream", name="stdout", text="benign text output\n"),
                    html_output(f"<script>window.pwned=1; {PWN}</script><p>after script</p>"),
                    html_output(f"<img src=x onerror=\"{PWN}\">"),
                    html_output(f"<a id='jslink2' href=\"JaVa&#x09;ScRiPt:{PWN}\">click2</a>"),
                    new_output(
                        "display_data",
                        data={
                            "image/svg+xml": f"<svg xmlns='http://www.w3.org/2000/svg' onload=\"{PWN}\">"
                            f"<script>{PWN}</script></svg>",
                            "text/plain": "<svg>",
                        },
                    ),
                    html_output(f"<svg onload=\"{PWN}\"><script>{PWN}</script></svg>"),
                    html_output(f'<iframe src="javascript:parent.{PWN}"></iframe>'),
                    html_output('<object data="javascript:alert(1)"></object><embed src="/x-embed">'),
                    html_output(f'<meta http-equiv="refresh" content="0;url=javascript:{PWN}">'),
                    html_output("<script>fetch('/x?'+document.cookie)</script><img src=\"/x-img\">"),
                    html_output("<img src=x onerror=\"new Image().src='/x?'+document.cookie\">"),
                    html_output('<base href="/x-base/"><form action="/x-form"><button>go</button></form>'),
                    html_output("<style>@import url(/x-css);</style><link rel=stylesheet href=/x-link>"),
                    new_output("display_data", data={"application/javascript": PWN, "text/plain": "[js]"}),
                ],
            ),
        ]
    )


# -- rendering ----------------------------------------------------------------


def test_renders_markdown_code_and_outputs():
    page = render_notebook(dump(normal_notebook()), "sam's <notebook>")
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>sam&#x27;s &lt;notebook&gt;</title>" in page
    assert re.search(r"<h1[^>]*>Heading One", page)
    assert "<em>emphasis</em>" in page and "<code>a &lt; b</code>" in page
    assert ">print</span>" in page  # highlighted source
    assert "hello grader" in page and "<pre>42</pre>" in page
    assert f'src="data:image/png;base64,{PNG}"' in page
    # SVG only as an image, which cannot run script
    assert 'src="data:image/svg+xml;base64,' in page and "<svg" not in page
    assert "<td>cell</td>" in page
    assert '<span class="ansi-red-fg">ZeroDivisionError</span>: division by zero' in page
    assert "\x1b" not in page
    assert "jp-Notebook" in page and "<style>" in page  # nbconvert's styling, inline


def test_adversarial_notebook_static():
    page = render_notebook(dump(adversarial_notebook()), "attack")
    lowered = page.lower()
    for needle in (
        "<script", "javascript:", "onerror=", "onload=", "<iframe", "<object", "<embed", "<meta http-equiv",
        "<base", "<form", "<link", "@import", "<svg", "/x-", "document.cookie", "pwned",
    ):  # fmt: skip
        assert needle not in lowered, needle
    assert "Benign Heading" in page and "benign text output" in page and "after script" in page


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"this is not json", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b"[1, 2]", "no nbformat"),
        (b'{"cells": []}', "no nbformat"),
        (json.dumps({"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": []}).encode(), "format 3"),
        (json.dumps({"nbformat": 4, "nbformat_minor": 5, "cells": "oops"}).encode(), "not a valid notebook"),
        (
            json.dumps(
                {"nbformat": 4, "nbformat_minor": 4, "metadata": {}, "cells": [{"cell_type": "code", "source": 1}]}
            ).encode(),
            "not a valid notebook",
        ),
        (
            b'{"nbformat": 4, "nbformat_minor": 5, "cells": [], "metadata": {"a": ' + b"[" * 950 + b"]" * 950 + b"}}",
            "not a valid notebook",
        ),
    ],
)
def test_invalid_input_is_a_value_error(data, message):
    with pytest.raises(ValueError, match=message):
        render_notebook(data, "bad")


# -- in the browser -------------------------------------------------------------


class PageHandler(web.RequestHandler):
    """Serves the pages in settings["pages"] ({path: (html, csp or None)}) as
    the service would, with a cookie to steal; logs every request."""

    def get(self):
        self.settings["requests"].append(self.request.uri)
        if self.request.path not in self.settings["pages"]:
            raise web.HTTPError(404)
        page, csp = self.settings["pages"][self.request.path]
        if csp:
            self.set_header("Content-Security-Policy", csp)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_cookie("secret", "1")
        self.finish(page)


@pytest.fixture(scope="module")
async def server():
    """(base URL, pages, requests) of a tornado server on a free port."""
    pages, requests = {}, []
    sockets = bind_sockets(0, "127.0.0.1")
    http = HTTPServer(web.Application([(r"/.*", PageHandler)], pages=pages, requests=requests))
    http.add_sockets(sockets)
    try:
        yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}", pages, requests
    finally:
        http.stop()
        await http.close_all_connections()


async def visit(browser, url):
    """Open *url*, click every link (the javascript: ones included), wait for
    anything deferred; return the context (for the caller to close), the page
    and the console messages."""
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    console = []
    page.on("console", lambda message: console.append(message.text))
    await page.goto(url)
    for link in await page.locator("a:not(.anchor-link)").all():
        await link.click()
    await asyncio.sleep(1)
    return context, page, console


async def test_no_script_runs_for_a_grader(browser, server):
    base, pages, requests = server
    pages["/notebook"] = (render_notebook(dump(adversarial_notebook()), "Submission"), CONTENT_SECURITY_POLICY)
    requests.clear()
    context, page, console = await visit(browser, base + "/notebook")
    try:
        assert await page.title() == "Submission"
        assert await page.locator("script").count() == 0
        assert await page.evaluate("typeof window.pwned") == "undefined"
        # the sandbox's opaque origin: no cookie of the service's to be read
        assert await page.evaluate("(() => { try { return document.cookie } catch (e) { return e.name } })()") == (
            "SecurityError"
        )
        assert page.url == base + "/notebook"
        await page.get_by_role("heading", name="Benign Heading").wait_for(state="visible")
        await page.get_by_text("benign text output").wait_for(state="visible")
        await page.get_by_text("after script").wait_for(state="visible")
        # no image, stylesheet, fetch, frame, refresh or navigation reached the
        # server: only the page itself (Chromium's own favicon probe aside)
        assert [uri for uri in requests if uri != "/favicon.ico"] == ["/notebook"]
        # and the policy had nothing to block: the sanitizer had removed it all
        assert not [text for text in console if "Content Security Policy" in text or "sandboxed" in text]
    finally:
        await context.close()


async def test_policy_alone_stops_script(browser, server):
    """The second layer on its own: nbconvert's unsanitized rendering of the
    same notebook (scripts, handlers and all) is inert under the policy, while
    without it the attack does run (so the checks above can see an attack)."""
    from nbconvert import HTMLExporter

    base, pages, requests = server
    raw, _ = HTMLExporter(template_name="lab").from_notebook_node(adversarial_notebook())
    assert "<script>window.pwned=1" in raw
    pages["/raw-with-policy"] = (raw, CONTENT_SECURITY_POLICY)
    pages["/raw"] = (raw, None)

    requests.clear()
    context, page, console = await visit(browser, base + "/raw-with-policy")
    try:
        assert await page.title() == "Notebook"
        assert await page.evaluate("typeof window.pwned") == "undefined"
        assert [uri for uri in requests if uri != "/favicon.ico"] == ["/raw-with-policy"]
        assert any("sandboxed" in text for text in console)  # it did have script to block
    finally:
        await context.close()

    requests.clear()
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(base + "/raw")
        await page.wait_for_function("window.pwned === 1", timeout=TIMEOUT_MS)
        assert await page.title() == "pwned"
    finally:
        await context.close()
