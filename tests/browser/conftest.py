"""Headless Debian Chromium, driven by Playwright, on pages of a real ``filekv serve``.

Playwright never downloads a browser here: it drives ``/usr/bin/chromium`` (``apt-get install
chromium``, done by ``make test``). Without it the tests fail under CI (``CI`` set) and are
skipped, saying why, on a developer's machine.

Every page is ``offline``: a request to any host but the server is aborted and recorded, and so
is every JavaScript error; each list must be empty when the test ends, so a page that needs a
CDN, or throws, fails loudly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

CHROMIUM: Final = Path("/usr/bin/chromium")
_SERVER_ANSWERED: Final = "Failed to load resource: the server responded with a status of"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}: the browser tests cannot run under CI", pytrace=False)
    pytest.skip(f"{reason} (make test installs it; under CI this fails)")


# Module scope, not session: while Playwright's sync API is up, it keeps an event loop running
# in the main thread, and every later test that calls asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@dataclass
class Offline:
    """What left the server's origin (aborted) and which JavaScript errors the pages raised."""

    origin: str
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def route(self, route: Route) -> None:
        url = route.request.url
        if url == self.origin or url.startswith(f"{self.origin}/"):
            route.continue_()
        else:
            self.outside.append(url)
            route.abort()

    def watch(self, page: Page) -> Page:
        # Only a request whose URL is not the origin's is routed here: Playwright matches the
        # pattern in its driver, so the page's own requests go on without a round trip through
        # this process each (about 0.1-0.3 s per page load on the 2-core machine); ``route``
        # still lets through anything of the origin's, should one be routed here all the same.
        page.route(re.compile(f"^(?!{re.escape(self.origin)}(?:/|$))"), self.route)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", self._console)
        return page

    def _console(self, message: Any) -> None:
        # Chromium logs every 4xx answer as "Failed to load resource": the server's answers,
        # which the tests check themselves, not errors of the page.
        if message.type == "error" and not message.text.startswith(_SERVER_ANSWERED):
            self.errors.append(f"console error: {message.text}")


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """``open_page(url, *, clock=False, **options)``: a page in a new browser context (no shared
    login), watched offline; ``options`` go to ``browser.new_context`` (a viewport, permissions).

    ``clock=True`` installs Playwright's clock before the page loads: its time still runs as the
    real one does, and ``page.clock.fast_forward(ms)`` lets it pass at once, so a test waits for
    the page's next poll without sleeping through the poll's interval."""
    watched: list[Offline] = []
    contexts = []

    def open_(url: str, *, clock: bool = False, **options: Any) -> Page:
        scheme, _, rest = url.partition("://")
        offline = Offline(f"{scheme}://{rest.partition('/')[0]}")
        watched.append(offline)
        context = browser.new_context(**options)
        contexts.append(context)
        page = offline.watch(context.new_page())
        page.set_default_timeout(30_000)
        if clock:
            page.clock.install()
        page.goto(url)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert [url for offline in watched for url in offline.outside] == [], "requests left the server"
    assert [error for offline in watched for error in offline.errors] == [], "JavaScript errors"
