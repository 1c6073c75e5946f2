"""Debian's headless Chromium, driven by Playwright (no browser download),
for the tests of pages: import the ``browser`` fixture from here."""

import os

import pytest

CHROMIUM = "/usr/bin/chromium"
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
