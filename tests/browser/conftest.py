"""One service stack and one Chromium for the whole run; a fresh browser context
(its own sessionStorage) per test. Every request the page makes is recorded, and
after each test none may carry the token anywhere but the Authorization header."""
import json
import pathlib
import sys

import pytest
from playwright.sync_api import expect, sync_playwright

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from stack import CHROMIUM, CHROMIUM_ARGS, OTHER_TOKEN, TOKEN, Stack  # noqa: E402

# Nearly every check waits on another process (the page's fetch, the service, the
# simulator's next poll), and a loaded 2-core machine can take seconds for that:
# Playwright's 5 s default failed there once. A generous ceiling costs a passing
# test nothing; it only waits longer before calling a failure.
CROSS_PROCESS_TIMEOUT_MS = 30_000
expect.set_options(timeout=CROSS_PROCESS_TIMEOUT_MS)


@pytest.fixture(scope="session")
def stack():
    s = Stack()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Watched:
    """A page plus what it did: requests, console errors, dialogs."""

    def __init__(self, page):
        self.page = page
        self.requests = []
        self.console_errors = []
        self.dialogs = []
        page.on("request", lambda r: self.requests.append(r))
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))

        def dialog(d):
            self.dialogs.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)

    def unexpected_console_errors(self):
        # A refused token is answered 401, which Chromium logs as a failed load.
        return [e for e in self.console_errors if "status of 401" not in e]


@pytest.fixture
def watched(browser, stack, request):
    viewport = getattr(request, "param", {"width": 1280, "height": 900})
    # The service's test certificate is self-signed (tests/tls).
    ctx = browser.new_context(viewport=viewport, ignore_https_errors=True)
    page = ctx.new_page()
    page.set_default_timeout(CROSS_PROCESS_TIMEOUT_MS)
    w = Watched(page)
    yield w
    try:
        for r in w.requests:
            where = f"{r.method} {r.url}"
            for secret in (TOKEN, OTHER_TOKEN):
                assert secret not in r.url, f"token in a URL: {where}"
                assert secret not in (r.post_data or ""), f"token in a request body: {where}"
                for name, value in r.all_headers().items():
                    if secret in value:
                        assert name.lower() == "authorization", f"token in header {name}: {where}"
                        assert value == f"Bearer {secret}"
        assert ctx.cookies() == [], "the page set cookies"
        if not page.is_closed() and page.url.startswith(stack.api):
            local = page.evaluate("JSON.stringify(Object.entries(localStorage))")
            assert json.loads(local) == [], "the page wrote localStorage"
        assert w.dialogs == [], f"a dialog opened (a script ran?): {w.dialogs}"
    finally:
        ctx.close()
