"""Browser tests of the web app: one server per session on 127.0.0.1, chromium through Playwright."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from webtestutils import WebServer, launchBrowser, skipReason


@pytest.fixture(scope="session")
def server():
    reason = skipReason()
    if reason:
        pytest.skip(reason)
    s = WebServer()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launchBrowser(p)
        yield b
        b.close()
