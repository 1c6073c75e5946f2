"""The assignment page in a real browser: an instructor sets a due date in
their own time zone, watches the collection happen, opens a submission,
returns feedback; the student sees it. Debian's Chromium via Playwright,
the real hub login, the real managed service and real system users."""

import asyncio
import json
import os
import secrets

import pytest
from jupyterhub.utils import random_port

from browser import TIMEOUT_MS, open_as
from service_hub import (
    call,
    data_dir,
    home,
    hub_config,
    material,
    read,
    write_tree,
)

pytestmark = pytest.mark.root("creates system users and works as them")

TAG = "gp" + secrets.token_hex(2)
INES, TARA, SAM, SUE = (f"{TAG}-{n}" for n in ("ines", "tara", "sam", "sue"))
PEOPLE = [INES, TARA, SAM, SUE]
PORT = random_port()
DATA_DIR = data_dir(TAG)

ROSTER = f"""\
users:
  admin: {{tier: root}}
courses:
  data101:
    instructors: [{INES}]
    tas: [{TARA}]
    students: [{SAM}, {SUE}]
"""

NOTEBOOK = {
    "cells": [{"cell_type": "markdown", "metadata": {}, "source": "# Sam's answer"}],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 4,
}


def HUB_CONFIG(c):
    hub_config(c, DATA_DIR, PORT, "--ClassroomService.collect_interval=1")


async def test_due_date_collection_view_and_feedback(app, ready, browser, sessions):
    src = material(INES, {"hw.ipynb": json.dumps(NOTEBOOK)})
    r = await call(app, INES, "POST", "courses/data101/materials/hw/releases", json={"source": src, "wait": True})
    assert r.status_code == 201, r.text
    write_tree(SAM, os.path.join(home(SAM), "data101", "hw"), {"hw.ipynb": json.dumps(NOTEBOOK), "notes.txt": "n\n"})

    # the instructor sets the due date in the browser's own time zone (Berlin)
    context = await browser.new_context(timezone_id="Europe/Berlin")
    context.set_default_timeout(TIMEOUT_MS)
    sessions[INES] = context
    page, response = await open_as(app, browser, sessions, INES, "courses/data101/assignments/hw")
    assert response.status == 200
    assert await page.inner_text("#zone") == "Europe/Berlin"
    due_utc = await page.evaluate("() => new Date(Date.now() + 3000)")
    local_value = await page.evaluate(
        """(d) => { const t = new Date(d); t.setSeconds(t.getSeconds() + 1, 0);
                    const pad = (n) => String(n).padStart(2, "0");
                    return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())}T` +
                           `${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}`; }""",
        due_utc,
    )
    await page.fill("#due-local", local_value)
    await page.fill("#late-hours", "1")
    await page.click("#set-due")
    await page.wait_for_selector("#due[data-utc], #error:not(.d-none)")
    assert await page.get_attribute("#error", "class") == "alert alert-danger d-none", await page.inner_text("#error")
    r = await call(app, INES, "GET", "courses/data101/assignments/hw")
    stored = r.json()["due"]
    shown = await page.evaluate("(iso) => new Date(iso).toISOString()", stored)
    assert shown.startswith(stored[:19])  # the browser sent its local time as UTC

    # the collection happens at the due date by itself; the page shows it
    row = f'#submissions tr[data-student="{SAM}"]'
    await page.wait_for_function(
        f"() => document.querySelector('{row} .status') && "
        f"document.querySelector('{row} .status').textContent === 'on time'",
        timeout=30_000,
    )
    assert await page.inner_text(f'#submissions tr[data-student="{SUE}"] .status') == "on time"

    # the instructor has a link to Sam's live server on the hub; the TA (below) has none
    link = page.locator(f"#server-{SAM}")
    assert await link.get_attribute("href") == f"{app.base_url}user/{SAM}/"

    # open Sam's notebook: rendered, in a new tab, with nothing able to run
    async with context.expect_page() as opened:
        await page.click(f"{row} a.view")
    view = await opened.value
    await view.wait_for_load_state()
    assert "Sam's answer" in await view.inner_text("body")
    assert await view.evaluate("() => document.querySelectorAll('script').length") == 0

    # copy it into the TA's grading folder from the TA's page, annotate, return
    ta_page, _ = await open_as(app, browser, sessions, TARA, "courses/data101/assignments/hw")
    await ta_page.wait_for_selector(f"#copy-{SAM}")
    assert await ta_page.query_selector(f"#server-{SAM}") is None
    await ta_page.click(f"#copy-{SAM}")
    copy = os.path.join(home(TARA), "grading", "data101", "hw", SAM)
    for _ in range(50):
        if os.path.exists(os.path.join(copy, "notes.txt")):
            break
        await asyncio.sleep(0.1)
    write_tree(TARA, copy, {"comments.md": "well done\n"})
    await ta_page.click(f"#return-{SAM}")
    await ta_page.wait_for_selector("#feedback li.returned")
    assert read(os.path.join(home(SAM), "data101", "hw", "feedback", "comments.md")) == "well done\n"

    # the student sees their own line and the returned feedback, and can hand in again
    sam_page, _ = await open_as(app, browser, sessions, SAM, "courses/data101/assignments/hw")
    await sam_page.wait_for_selector("#feedback li.returned")
    assert TARA in await sam_page.inner_text("#feedback")
    rows = await sam_page.query_selector_all("#submissions tbody tr")
    assert [await r.get_attribute("data-student") for r in rows] == [SAM]
    assert await sam_page.query_selector("#due-form") is None
    await sam_page.click("#hand-in")
    await sam_page.wait_for_function(
        f"() => document.querySelector('{row} .copies').textContent === '2'", timeout=20_000
    )
    # late, within the window: the one that counts is still the deadline copy
    assert "deadline" in await sam_page.inner_text(f"{row} td:nth-child(5)")
