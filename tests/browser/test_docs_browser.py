"""/docs and /redoc in a real browser, with nothing but the server reachable (issues 14, 15).

The newcomer's flow, done the way a person does it in Swagger UI: "Try it out" on
``POST /auth/register`` with the example as it is, **Authorize** with username and password, begin
a transaction, write while holding it (staged, not 423), read the staged value, commit (1
applied), and a second browser, not logged in, reads the committed value.

The tests that only look at the pages share one server (``docs_server``, for the module); the
two that write get a fresh one each (``server``): the newcomer registers the example user and
reads revision 1, the compare-and-set test counts revisions from the first.
"""

from __future__ import annotations

import html
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from support.server import Server, running

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

OpenPage = Callable[[str], "Page"]


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that only read the pages (they write nothing)."""
    with running(tmp_path_factory.mktemp("docs")) as served:
        yield served


def _operations(server: Server) -> dict[tuple[str, str], dict[str, Any]]:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    return {
        (method.upper(), path): operation
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
    }


class SwaggerUI:
    """The /docs page, driven by its buttons and fields as a person would.

    One operation is open at a time: the one done with is collapsed when another is opened, as
    its live answer and "Try it out" form would otherwise be rendered again on every later
    click (Swagger UI re-renders every open operation; with them all left open, each Execute
    of the newcomer's flow got slower than the one before).
    """

    def __init__(self, page: Page, operations: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.page = page
        self.operations = operations
        self.opened: tuple[str, str] | None = None  # (method, path)
        page.wait_for_selector(".opblock-tag")

    def operation(self, method: str, path: str) -> Locator:
        found = self.operations[(method, path)]
        return self.page.locator(f"#operations-{found['tags'][0]}-{found['operationId']}")

    def open(self, method: str, path: str) -> Locator:
        """Expand the operation (collapsing the one open before): its block."""
        if self.opened is not None and self.opened != (method, path):
            done = self.operation(*self.opened)
            done.locator(".opblock-summary").click()
            done.locator(".opblock-body").wait_for(state="hidden")
        self.opened = (method, path)
        block = self.operation(method, path)
        if not block.locator(".opblock-body").is_visible():
            block.locator(".opblock-summary").click()
        return block

    def execute(
        self, method: str, path: str, *, params: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """Open the operation, "Try it out", fill ``params``, Execute: (status, JSON body)."""
        block = self.open(method, path)
        try_out = block.locator("button.try-out__btn")
        if try_out.inner_text().strip() == "Try it out":
            try_out.click()
        answers = block.locator(".live-responses-table")
        if answers.count():  # an earlier Execute's answer: cleared, so a fresh one is read
            block.locator("button.btn-clear").click()
            answers.wait_for(state="hidden")
        for name, value in (params or {}).items():
            block.locator(f'tr[data-param-name="{name}"] input').fill(value)
        block.locator("button.execute").click()
        status = answers.locator("tbody .response-col_status")
        status.wait_for()
        code = int(status.inner_text().strip())
        body = answers.locator("tbody .response-col_description pre")
        text = body.first.inner_text() if body.count() else ""
        return code, json.loads(text) if text.strip() else None

    def authorize(self, username: str, password: str) -> None:
        self.page.locator(".auth-wrapper button.authorize").click()
        dialog = self.page.locator(".auth-container")
        visible = [
            label.inner_text().strip()
            for label in dialog.locator("label").all()
            if label.is_visible()
        ]
        assert visible == ["username:", "password:"]  # no client_id / client_secret clutter
        dialog.locator("#oauth_username").fill(username)
        dialog.locator("#oauth_password").fill(password)
        dialog.locator(".auth-btn-wrapper button.authorize").click()
        dialog.locator("h6", has_text="Authorized").wait_for()  # the token was issued
        dialog.locator(".auth-btn-wrapper button.btn-done").click()


def test_docs_shows_every_operation_group(docs_server: Server, open_page: OpenPage) -> None:
    operations = _operations(docs_server)
    docs = SwaggerUI(open_page(f"{docs_server.url}/docs"), operations)
    tags = {operation["tags"][0] for operation in operations.values()}
    shown = {tag.get_attribute("data-tag") for tag in docs.page.locator(".opblock-tag").all()}
    assert shown == tags
    for method, path in operations:
        assert docs.operation(method, path).count() == 1, (method, path)


def test_docs_root_redirects_to_the_docs(docs_server: Server, open_page: OpenPage) -> None:
    page = open_page(f"{docs_server.url}/")
    assert page.url == f"{docs_server.url}/docs"
    page.wait_for_selector(".opblock-tag")


def test_docs_newcomer_transaction_flow(server: Server, open_page: OpenPage) -> None:
    operations = _operations(server)
    docs = SwaggerUI(open_page(f"{server.url}/docs"), operations)

    # The register example is a real user: Execute as it is.
    assert docs.execute("POST", "/auth/register") == (201, {"username": "alice"})
    docs.authorize("alice", "alice-secret-1")
    assert docs.execute("GET", "/auth/me") == (200, {"username": "alice", "role": "user"})

    assert docs.execute("POST", "/transactions") == (201, {"depth": 1})
    # The PUT's example body is {"value": "hello"}; the token goes with it, so it is staged.
    status, body = docs.execute("PUT", "/keys/{key}", params={"key": "greeting"})
    assert (status, body) == (
        201,
        {
            "key": "greeting",
            "value": "hello",
            "revision": None,
            "expires_in": None,
            "staged": True,
        },
    )
    status, body = docs.execute("GET", "/keys/{key}", params={"key": "greeting"})
    assert (status, body) == (
        200,
        {"key": "greeting", "value": "hello", "revision": None, "expires_in": None},
    )
    status, body = docs.execute("GET", "/transactions")
    assert (status, body["mine"], body["depth"]) == (200, True, 1)
    assert docs.execute("POST", "/transactions/commit") == (200, {"depth": 0, "applied": 1})

    # Another browser, not logged in, sees the committed value.
    other = SwaggerUI(open_page(f"{server.url}/docs"), operations)
    status, body = other.execute("GET", "/keys/{key}", params={"key": "greeting"})
    assert (status, body) == (
        200,
        {"key": "greeting", "value": "hello", "revision": 1, "expires_in": None},
    )


def test_docs_compare_and_set_from_the_page(server: Server, open_page: OpenPage) -> None:
    operations = _operations(server)
    docs = SwaggerUI(open_page(f"{server.url}/docs"), operations)
    assert docs.execute("PUT", "/keys/{key}", params={"key": "greeting"})[0] == 201
    # If-Match and If-None-Match are fields of the form.
    status, body = docs.execute("PUT", "/keys/{key}", params={"key": "greeting", "If-Match": '"7"'})
    assert status == 412, body
    status, body = docs.execute("PUT", "/keys/{key}", params={"key": "greeting", "If-Match": '"1"'})
    assert (status, body["revision"]) == (200, 2)
    status, body = docs.execute(
        "PUT", "/keys/{key}", params={"key": "greeting", "If-Match": "", "If-None-Match": "*"}
    )
    assert status == 412, body


def test_docs_412_description_keeps_its_placeholder(
    docs_server: Server, open_page: OpenPage
) -> None:
    operations = _operations(docs_server)
    docs = SwaggerUI(open_page(f"{docs_server.url}/docs"), operations)
    block = docs.operation("PUT", "/keys/{key}")
    block.locator(".opblock-summary").click()
    description = block.locator('tr.response[data-code="412"] .response-col_description__inner')
    # The placeholder in angle brackets is shown, not eaten as an unknown HTML tag.
    assert 'the strong tags: "<rev>"' in description.inner_text()


def test_redoc_renders_every_operation(docs_server: Server, open_page: OpenPage) -> None:
    operations = _operations(docs_server)
    page = open_page(f"{docs_server.url}/redoc")
    page.wait_for_selector("[data-section-id^='operation/']")
    for operation in operations.values():
        section = page.locator(f"[data-section-id='operation/{operation['operationId']}']")
        assert section.count() >= 1, operation["operationId"]
        assert operation["summary"] in section.first.inner_text()


# -- security headers: no page of another site may frame the docs ----------------------------


@pytest.fixture(scope="module")
def framer() -> Iterator[str]:
    """A page of another origin (another port) on this machine that frames ``?src=``: a public
    page would not even be allowed a frame of a local one."""

    class Framing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            src = parse_qs(urlsplit(self.path).query)["src"][0]
            body = f'<iframe id="framed" src="{html.escape(src)}"></iframe>'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Framing) as served:
        thread = threading.Thread(target=served.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{served.server_address[1]}/"
        served.shutdown()


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_refuse_to_be_framed_by_another_site(
    docs_server: Server, browser: Browser, framer: str, path: str
) -> None:
    """A page of another origin that frames the docs (clickjacking) gets an empty frame."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{framer}?{urlencode({'src': docs_server.url + path})}")
        page.wait_for_timeout(2_000)  # long enough for the docs to render, were they allowed
        frame = page.frame_locator("#framed")
        assert frame.locator("#swagger-ui, redoc").count() == 0
    finally:
        context.close()
