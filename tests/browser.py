"""Debian's headless Chromium, driven by Playwright (no browser download),
for the tests of pages. A plugin (tests/conftest.py's ``pytest_plugins``): a
test asks for ``browser`` or ``sessions`` by name and is then e2e."""

import os

import pytest

from conftest import PASSWORD
from service_hub import service_url

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 60_000
# as the machine's notes say: no sandbox as root, and no background traffic
# (this machine's network is closed); Playwright gives every launch a new,
# empty profile (--user-data-dir) and removes it on close
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
async def browser():
    """Chromium for the module, in the test's own event loop (where the hub
    runs too: Playwright's asyncio API blocks nothing)."""
    if not os.path.exists(CHROMIUM):
        message = f"{CHROMIUM} is missing: `./dev setup` installs Debian's chromium (as root)"
        if os.geteuid() != 0:
            pytest.skip(message)
        pytest.fail(message)
    from playwright.async_api import async_playwright

    playwright = await async_playwright().start()
    try:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()
    finally:
        await playwright.stop()


@pytest.fixture(scope="module")
async def sessions(browser):
    """One browser context (cookie jar) per person, logged in on first use."""
    contexts = {}
    yield contexts
    for context in contexts.values():
        await context.close()


async def open_as(app, browser, sessions, login, path=""):
    """A page of *login*'s at the service's *path*; the first time, through
    the hub's login form: service -> hub OAuth -> hub login -> back."""
    context = sessions.get(login)
    if context is None:
        context = sessions[login] = await browser.new_context()
        context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    response = await page.goto(service_url(app, path))
    if "/hub/login" in page.url:
        await page.fill("#username_input", login)
        await page.fill("#password_input", PASSWORD)
        async with page.expect_navigation(url=lambda url: "/services/classroom/" in url):
            await page.click("#login_submit")
        response = await page.reload()  # the status of the page itself, after the redirects
    return page, response
