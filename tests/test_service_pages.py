"""The classroom service's web pages in a real browser: Debian's headless
Chromium driven by Playwright, logging in through the hub's real login page
and OAuth through the real proxy, next to the real managed service and real
system users (as tests/test_service.py)."""

import asyncio
import os
import secrets
from urllib.parse import urljoin

import pytest
import requests
from jupyterhub.utils import random_port

from browser import TIMEOUT_MS, open_as
from service_hub import (
    data_dir,
    home,
    hub_config,
    material,
    read,
    service_url,
)

pytestmark = pytest.mark.root("creates system users and works as them")


TAG = "pg" + secrets.token_hex(2)
INES, TARA, SAM, SUE, BEA = (f"{TAG}-{n}" for n in ("ines", "tara", "sam", "sue", "bea"))
PEOPLE = [INES, TARA, SAM, SUE, BEA]
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
  bio202:
    students: [{BEA}]
"""


def HUB_CONFIG(c):
    hub_config(c, DATA_DIR, PORT)


async def report_rows(page):
    """{student: {status: count}} from a release page, once the delivery is done."""
    await page.wait_for_selector("#report, #no-report", timeout=TIMEOUT_MS)  # the page refreshes until then
    rows = {}
    for row in await page.query_selector_all("#report tbody tr"):
        student = await row.get_attribute("data-student")
        counts = {}
        for cell in await row.query_selector_all("td.count"):
            counts[await cell.get_attribute("data-status")] = int(await cell.inner_text())
        rows[student] = counts
    return rows


async def test_instructor_releases_through_the_form(app, ready, browser, sessions):
    page, response = await open_as(app, browser, sessions, INES)
    assert response.status == 200
    assert await page.inner_text("h1") == "My courses"
    assert await page.inner_text("#user-name") == INES
    assert await page.inner_text("#course-data101 .role") == "instructor"
    assert await page.query_selector("#course-bio202") is None
    # the hub's look: its stylesheet and navbar links
    stylesheet = await page.get_attribute("link[rel=stylesheet]", "href")
    assert stylesheet.endswith("hub/static/css/style.min.css")
    css = await page.request.get(urljoin(page.url, stylesheet))
    assert css.status == 200 and "navbar" in await css.text()
    assert (await page.get_attribute("#hub-home", "href")).endswith("hub/home")

    await page.click("#course-data101 h2 a")
    assert await page.inner_text("#role") == "instructor"
    assert SAM in await page.inner_text("#members")
    src = material(INES, {"hw1.ipynb": "hw1\n", "data/x.csv": "1,2\n"})
    await page.fill("#material", "week1")
    await page.fill("#source", src)
    async with page.expect_navigation(url=lambda url: "/releases/" in url):
        await page.click("#release-submit")
    assert page.url.endswith("courses/data101/materials/week1/releases/1")
    rows = await report_rows(page)
    assert set(rows) == {SAM, SUE}
    assert all(counts["added"] == 2 and counts["failed"] == 0 for counts in rows.values())
    for student in (SAM, SUE):
        assert read(os.path.join(home(student), "data101", "week1", "hw1.ipynb")) == "hw1\n"
    assert "hw1.ipynb" in await page.text_content("#files")  # in a closed <details>

    # back on the course page, the material is listed with its latest version
    await page.click("#course-link")
    assert "v1" in await page.inner_text("#materials")


async def test_a_bad_release_shows_the_reason_with_400(app, ready, browser, sessions):
    page, response = await open_as(app, browser, sessions, INES, "courses/data101")
    await page.fill("#material", "week9")
    await page.fill("#source", "relative/path")
    async with page.expect_navigation() as nav:
        await page.click("#release-submit")
    response = await nav.value
    assert response.status == 400
    assert "absolute path" in await page.inner_text("#release-error")
    assert await page.input_value("#material") == "week9"  # the form keeps what was typed
    assert "Traceback" not in await page.content()

    await page.fill("#source", os.path.join(home(INES), "no-such-folder"))
    async with page.expect_navigation() as nav:
        await page.click("#release-submit")
    assert (await nav.value).status == 400
    assert "Cannot release" in await page.inner_text("#release-error")


async def test_a_form_without_its_xsrf_token_is_refused(app, ready, browser, sessions):
    page, response = await open_as(app, browser, sessions, INES, "courses/data101")
    src = material(INES, {"x.txt": "x\n"})
    # the browser's cookies, but not the form's _xsrf field: a cross-site post
    r = await page.request.post(service_url(app, "courses/data101"), form={"material": "forged", "source": src})
    assert r.status == 403
    assert r.headers["content-type"].startswith("text/html")
    assert "valid hub login" in await r.text()
    page, response = await open_as(app, browser, sessions, INES, "courses/data101")
    assert "forged" not in await page.inner_text("main")


async def test_ta_sees_every_student_but_cannot_release(app, ready, browser, sessions):
    page, response = await open_as(app, browser, sessions, TARA, "courses/data101")
    assert response.status == 200
    assert await page.inner_text("#role") == "ta"
    assert await page.query_selector("#release-form") is None
    page, response = await open_as(app, browser, sessions, TARA, "courses/data101/materials/week1/releases/1")
    assert set(await report_rows(page)) == {SAM, SUE}


async def test_student_sees_only_their_own_report_line(app, ready, browser, sessions):
    page, response = await open_as(app, browser, sessions, SAM)
    assert await page.inner_text("#course-data101 .role") == "student"
    assert "week1" in await page.inner_text("#course-data101 .materials")
    await page.click("#course-data101 .materials a")  # the latest version: its report
    rows = await report_rows(page)
    assert list(rows) == [SAM]
    assert rows[SAM]["added"] == 2
    assert SUE not in await page.content()
    assert await page.query_selector("#files") is None

    page, response = await open_as(app, browser, sessions, SAM, "courses/data101")
    assert response.status == 200
    assert await page.query_selector("#release-form") is None
    assert await page.query_selector("#members") is None


async def test_student_of_another_course_gets_a_403_page(app, ready, browser, sessions):
    page, response = await open_as(app, browser, sessions, BEA, "courses/data101")
    assert response.status == 403
    assert response.headers["content-type"].startswith("text/html")
    assert "is not a member of course 'data101'" in await page.inner_text("#error-message")
    assert "Traceback" not in await page.content()
    page, response = await open_as(app, browser, sessions, BEA, "courses/data101/materials/week1/releases/1")
    assert response.status == 403


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("courses/nope", 404, "No course 'nope'"),
        ("courses/data101/materials/week1/releases/7", 404, "No version 7 of material 'week1'"),
        ("no/such/page", 404, "No such page"),
    ],
)
async def test_errors_are_pages_with_a_message(app, ready, browser, sessions, path, status, message):
    page, response = await open_as(app, browser, sessions, INES, path)
    assert response.status == status
    assert message in await page.inner_text("#error-message")


async def test_the_api_is_still_json(app, ready):
    r = await asyncio.to_thread(requests.get, service_url(app, "api/courses"), timeout=10)
    assert r.status_code == 403
    assert r.headers["Content-Type"].startswith("application/json")
    r = await asyncio.to_thread(requests.get, service_url(app, "api/no/such"), timeout=10)
    assert r.status_code == 404 and "No such endpoint" in r.json()["message"]
