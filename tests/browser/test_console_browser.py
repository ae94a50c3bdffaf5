"""The web console at /ui in headless Chromium, against a real ``filekv serve`` (issue 13).

Driven as a person drives it: clicks, typing and keys, in browser contexts of their own (each
its own login, as two people on two machines), with every request to another host refused and
any JavaScript error failing the test (``conftest.py``). What the console claims is checked
against the server over plain HTTP.

One server serves the whole module (each test has keys of its own prefix, and the fixture
``no_lock_left`` ends any transaction a test leaves open); the lease-expiry test has its own,
with a short ``transaction_timeout`` and registration closed.

Screenshots of the main views go to ``$FILEKV_SCREENSHOTS`` if it is set (the README's, under
``docs/``, were made that way), else to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import pytest
from support.server import PASSWORD, Server, running, user_command

from filekv.engine.expiry import MAX_TTL

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Request, Response

OpenPage = Callable[..., "Page"]
Expect = Any  # playwright.sync_api.expect, imported once the browser fixture said it is there

ROOT_USER = "root"
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# The console's own intervals (ui/assets): a console that does not hold the lock asks for it
# every LOCK_POLL_MS (transaction.js), the server panel reads /stats every STATS_REFRESH_MS
# (server.js). A test that waits for one of them lets that much of the page's time pass at once
# (``let_time_pass``); with longer intervals it would still pass, waiting in real time.
LOCK_POLL_MS = 2000
STATS_REFRESH_MS = 3000


# -- fixtures ------------------------------------------------------------------------------------


def _user_command(data_dir: Path, *args: str) -> None:
    """``filekv user ARGS --data-dir D``, the way an operator adds users beside the server."""
    done = user_command(data_dir, *args, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("console")) as served:
        _user_command(served.data_dir, "add", ROOT_USER, "--admin")
        yield served


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def _token(http: httpx.Client, name: str) -> dict[str, str]:
    answer = http.post("/auth/token", data={"username": name, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@pytest.fixture(scope="module")
def root(http: httpx.Client) -> dict[str, str]:
    """The admin's session, logged in once for the module."""
    return _token(http, ROOT_USER)


@pytest.fixture(autouse=True)
def no_lock_left(http: httpx.Client, root: dict[str, str]) -> Iterator[None]:
    """A test that fails while a console holds the lock must not lock the next one out."""
    yield
    assert http.delete("/transactions", headers=root).status_code == 200


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("FILEKV_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def expect(browser: Browser) -> Expect:
    from playwright.sync_api import expect as playwright_expect

    playwright_expect.set_options(timeout=20_000)  # generous: a busy 2-core machine, 2 workers
    return playwright_expect


# -- driving the console ---------------------------------------------------------------------------


def register(http: httpx.Client, name: str) -> None:
    answer = http.post("/auth/register", json={"username": name, "password": PASSWORD})
    assert answer.status_code in (201, 409), answer.text


def path_of(key: str) -> str:
    # Every "/" escaped too: httpx, like a browser, would drop a "/../" part of a key.
    return f"/keys/{quote(key, safe='')}"


def put(http: httpx.Client, key: str, value: str, **headers: str) -> int:
    answer = http.put(path_of(key), json={"value": value}, headers=headers)
    assert answer.status_code in (200, 201), answer.text
    revision: int = answer.json()["revision"]
    return revision


def value_of(http: httpx.Client, key: str) -> str | None:
    answer = http.get(path_of(key))
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    text: str = answer.json()["value"]
    return text


def open_console(open_page: OpenPage, server: Server, fragment: str = "", **options: Any) -> Page:
    options.setdefault("viewport", LAPTOP)
    page = open_page(f"{server.url}/ui{fragment}", **options)
    page.wait_for_selector("body[data-ready='true']")
    wait_listed(page)
    return page


def let_time_pass(page: Page, ms: int) -> None:
    """The page's timers run as if ``ms`` had passed (its clock installed by ``open_console(...,
    clock=True)``): what it does by itself every so often, it does now, with no user action."""
    page.clock.fast_forward(ms)


def wait_listed(page: Page) -> None:
    # A selector, not wait_for_function: the page's policy forbids eval, Playwright's too.
    page.wait_for_selector("#key-list:not([aria-busy])")


def log_in(page: Page, expect: Expect, name: str) -> None:
    page.click("#login-open")
    page.fill("#login-username", name)
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    expect(page.locator("#session-status")).to_contain_text(f"Logged in as {name}")


def key_names(page: Page) -> list[str]:
    wait_listed(page)
    return page.locator("#key-list .row.key .row-name").all_text_contents()


def folder_names(page: Page) -> list[str]:
    wait_listed(page)
    return page.locator("#key-list .row.folder .row-name").all_text_contents()


def open_key(page: Page, expect: Expect, shown: str, key: str | None = None) -> None:
    """Click the key row whose text is ``shown``; wait until the viewer shows ``key`` (in a
    tree the row shows the key without the prefix; in a flat list, whole)."""
    names = key_names(page)
    assert shown in names, (shown, names)
    page.locator("#key-list .row.key").nth(names.index(shown)).click()
    expect(page.locator("#value-key")).to_have_text(printable(key) if key else shown)


def create_key(page: Page, expect: Expect, key: str, value: str) -> None:
    page.click("#new-key")
    page.fill("#create-key", key)
    page.fill("#edit-value", value)
    page.click("#save")
    expect(page.locator("#value-key")).to_have_text(printable(key))


def clear_notices(page: Page) -> None:
    """Dismiss every notice, for a screenshot of the page itself."""
    while page.locator(".notice-close").count():
        page.locator(".notice-close").first.click()


def expect_error(page: Page, expect: Expect, text: str) -> None:
    """An error notice saying ``text`` is shown."""
    expect(page.locator(".notice.error").filter(has_text=text)).to_have_count(1)


def printable(text: str) -> str:
    """As the console shows a key: control characters as their Unicode pictures."""
    return re.sub(
        "[\x00-\x1f\x7f]", lambda m: "\u2421" if m[0] == "\x7f" else chr(0x2400 + ord(m[0])), text
    )


def batch_put(http: httpx.Client, items: list[tuple[str, str]]) -> None:
    for start in range(0, len(items), 1000):
        ops = [{"op": "put", "key": k, "value": v} for k, v in items[start : start + 1000]]
        answer = http.post("/batch", json={"ops": ops})
        assert answer.status_code == 200, answer.text


SHOP = [
    ("shop/config.json", json.dumps({"currency": "EUR", "tax": 0.2, "open": ["Mon", "Sat"]})),
    ("shop/customers/alice/email", "alice@example.org"),
    ("shop/customers/bob/email", "bob@example.org"),
    ("shop/orders/2026-12-01/1001", json.dumps({"customer": "alice", "items": 3})),
    ("shop/orders/2026-12-02/1002", json.dumps({"customer": "bob", "items": 1})),
    ("shop/products/kettle", "Kettle, 1.7 l, steel"),
    ("shop/products/teapot", "Teapot, porcelain"),
    ("shop/welcome message", "Grüß Gott! Welcome to the shop."),
]


# -- keys ----------------------------------------------------------------------------------------


def test_console_browses_folders_as_a_tree_and_as_a_flat_list(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect, shots: Path
) -> None:
    batch_put(http, SHOP)
    page = open_console(open_page, server, "#prefix=shop/")
    assert folder_names(page) == ["customers/", "orders/", "products/"]
    assert key_names(page) == ["config.json", "welcome message"]
    open_key(page, expect, "config.json", "shop/config.json")
    page.screenshot(path=shots / "console-keys.png")

    page.locator("#key-list .row.folder", has_text="customers/").click()
    expect(page.locator("#crumbs .crumb")).to_have_text(["all keys", "shop/", "customers/"])
    assert folder_names(page) == ["alice/", "bob/"]
    assert key_names(page) == []
    page.locator("#key-list .row.folder", has_text="alice/").click()
    expect(page.locator("#key-list .row.key .row-name")).to_have_text(["email"])
    open_key(page, expect, "email", "shop/customers/alice/email")
    expect(page.locator("#value")).to_have_text("alice@example.org")

    page.locator("#crumbs .crumb", has_text="shop/").click()
    expect(page.locator("#key-list .row.folder .row-name")).to_have_count(3)
    page.click("#view-flat")
    expect(page.locator("#key-list .row.key .row-name")).to_have_text([k for k, _ in SHOP])
    expect(page.locator("#view-flat")).to_have_attribute("aria-pressed", "true")
    # Any prefix, not only a folder: the flat list of keys starting with it.
    page.fill("#prefix", "shop/products/t")
    page.press("#prefix", "Enter")
    expect(page.locator("#key-list .row.key .row-name")).to_have_text(["shop/products/teapot"])
    page.click("#view-tree")  # rows named from the last "/" of the prefix, folders grouped
    expect(page.locator("#key-list .row.key .row-name")).to_have_text(["teapot"])
    page.fill("#prefix", "shop/c")
    page.press("#prefix", "Enter")
    expect(page.locator("#key-list .row.folder .row-name")).to_have_text(["customers/"])
    expect(page.locator("#key-list .row.key .row-name")).to_have_text(["config.json"])


def test_console_finds_keys_by_exact_value(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    batch_put(http, [("find/a", "blue"), ("find/b", "green"), ("find/c/d", "blue")])
    batch_put(http, [("elsewhere/x", "blue"), ("find/e", "blue sky")])
    page = open_console(open_page, server, "#prefix=find/&view=flat")
    page.fill("#find-value", "blue")
    page.press("#find-value", "Enter")
    expect(page.locator("#key-list .row.key .row-name")).to_have_text(["find/a", "find/c/d"])
    expect(page.locator("#list-status")).to_contain_text('whose value is "blue" under "find/"')
    page.click("#view-tree")  # the same search, as folders
    expect(page.locator("#key-list .row.folder .row-name")).to_have_text(["c/"])
    expect(page.locator("#key-list .row.key .row-name")).to_have_text(["a"])
    page.click("#find-clear")
    expect(page.locator("#key-list .row.key .row-name")).to_have_text(["a", "b", "e"])


def test_console_pages_through_a_10000_key_prefix(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    expected = [f"big/k{i:05d}" for i in range(10_000)]
    batch_put(http, [(key, str(i)) for i, key in enumerate(expected)])
    page = open_console(open_page, server, "#prefix=big/&view=flat")
    page.select_option("#page-size", "1000")
    seen: list[str] = []
    for page_number in range(1, 20):  # bounded: 10 pages are expected
        expect(page.locator("#page-label")).to_have_text(f"page {page_number}")
        seen.extend(key_names(page))
        if page.locator("#page-next").is_disabled():
            break
        page.click("#page-next")
    assert seen == expected
    expect(page.locator("#list-status")).to_have_text('keys 9001\u201310000 under "big/"')
    page.click("#page-prev")
    expect(page.locator("#list-status")).to_contain_text("keys 8001\u20139000")
    assert key_names(page) == expected[8000:9000]

    # The tree shows the folder once, on one page: its 10,000 keys are skipped in one request.
    tree = open_console(open_page, server, "#prefix=")
    assert folder_names(tree).count("big/") == 1
    assert tree.locator("#page-next").is_disabled()


ODD = [
    "odd/a b",
    " odd/ leading and trailing ",
    "odd/100%",
    "odd/%2F is not a slash",
    "odd/Zürich/ключ/κλειδί",
    "odd/a/../b",
    "odd/q?x=1&y=2#frag",
    "odd/plus+sign",
    "odd/new\nline\ttab",
    "odd//double//slash/",
]


@pytest.mark.parametrize("made_by", ["console", "api"])
def test_console_odd_keys_round_trip(
    made_by: str, server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    keys = [f"{made_by}-{key}" for key in ODD]
    page = open_console(open_page, server, f"#prefix={made_by}-&view=flat")
    for number, key in enumerate(keys):
        if made_by == "console" and "\n" not in key:  # an <input> holds one line
            create_key(page, expect, key, f"value {number} of {key}")
        else:
            put(http, key, f"value {number} of {key}")
    page.click("#keys-refresh")
    expect(page.locator("#key-list .row.key")).to_have_count(len(keys))
    assert key_names(page) == [printable(key) for key in sorted(keys)]
    for number, key in enumerate(keys):
        assert value_of(http, key) == f"value {number} of {key}"  # the exact key, on the server
        open_key(page, expect, printable(key))
        expect(page.locator("#value")).to_have_text(f"value {number} of {key}")

    edited, deleted = keys[2], keys[5]  # the "%" key, the "/../" key
    open_key(page, expect, edited)
    page.click("#edit")
    page.fill("#edit-value", "changed")
    page.click("#save")
    expect(page.locator("#value")).to_have_text("changed")
    assert value_of(http, edited) == "changed"
    open_key(page, expect, deleted)
    page.click("#delete")
    page.click("#confirm-ok")
    expect(page.locator("#key-list .row.key")).to_have_count(len(keys) - 1)
    assert value_of(http, deleted) is None


def test_console_says_which_keys_a_browser_cannot_address(
    server: Server, open_page: OpenPage, expect: Expect
) -> None:
    page = open_console(open_page, server)
    page.click("#new-key")
    page.fill("#create-key", "..")
    page.fill("#edit-value", "x")
    page.click("#save")
    expect_error(page, expect, 'the key ".." cannot be sent in a URL')


# -- one key -------------------------------------------------------------------------------------


def test_console_shows_json_pretty_with_its_revision_and_copies(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect, shots: Path
) -> None:
    document = {"name": "filekv", "ports": [8000, 8001], "owner": {"team": "storage"}}
    raw = json.dumps(document, separators=(",", ":"))
    revision = put(http, "view/settings.json", raw)
    page = open_console(
        open_page,
        server,
        "#prefix=view/&key=view/settings.json",
        permissions=["clipboard-read", "clipboard-write"],
    )
    expect(page.locator("#value-key")).to_have_text("view/settings.json")
    expect(page.locator("#value-revision")).to_have_text(f"revision {revision}")
    expect(page.locator("#value")).to_have_text(json.dumps(document, indent=2))
    page.screenshot(path=shots / "console-value.png")
    page.click("#toggle-pretty")
    expect(page.locator("#value")).to_have_text(raw)

    page.click("#copy-key")
    expect(page.locator(".notice.success .notice-text").last).to_have_text("Key copied.")
    assert page.evaluate("navigator.clipboard.readText()") == "view/settings.json"
    page.click("#copy-value")
    expect(page.locator(".notice.success .notice-text").last).to_have_text("Value copied.")
    assert page.evaluate("navigator.clipboard.readText()") == raw

    put(http, "view/plain", "not {json")
    page.goto(f"{server.url}/ui#prefix=view/&key=view/plain")
    expect(page.locator("#value")).to_have_text("not {json")
    expect(page.locator("#toggle-pretty")).to_have_count(0)


def test_console_edit_sends_the_revision_it_showed_and_reports_a_conflict(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    first = put(http, "edit/doc", "v1")
    page = open_console(open_page, server, "#prefix=edit/&key=edit/doc")
    page.click("#edit")
    page.fill("#edit-value", "v2")
    page.click("#save")
    expect(page.locator("#value-revision")).to_have_text(re.compile(r"revision \d+"))
    second = int(page.locator("#value-revision").inner_text().split()[1])
    assert second > first and value_of(http, "edit/doc") == "v2"

    page.click("#edit")
    page.fill("#edit-value", "mine")
    theirs = put(http, "edit/doc", "theirs")  # someone else, meanwhile
    page.click("#save")
    conflict = page.locator("#conflict")
    expect(conflict).to_contain_text("Someone else changed this key while you were editing")
    expect(conflict).to_contain_text(f"revision mismatch: expected {second}, current {theirs}")
    expect(conflict.locator(".theirs")).to_have_text("theirs")
    expect_error(page, expect, "Not saved")
    assert value_of(http, "edit/doc") == "theirs"  # nothing overwritten unseen
    expect(page.locator("#edit-value")).to_have_value("mine")  # and nothing typed lost

    page.click("#conflict-overwrite")
    expect(page.locator("#value")).to_have_text("mine")
    assert value_of(http, "edit/doc") == "mine"

    # "Discard mine" after a conflict on a key deleted meanwhile.
    page.click("#edit")
    page.fill("#edit-value", "lost")
    assert http.delete("/keys/edit/doc").status_code == 204
    page.click("#save")
    expect(page.locator("#conflict")).to_contain_text("It has been deleted since.")
    page.click("#conflict-theirs")
    expect(page.locator("#missing")).to_have_text("Not readable: no such key")
    assert value_of(http, "edit/doc") is None


def test_console_deletes_only_after_confirmation(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    put(http, "del/x", "1")
    put(http, "del/y", "2")
    page = open_console(open_page, server, "#prefix=del/&key=del/x")
    page.click("#delete")
    expect(page.locator("#confirm-dialog")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text('"del/x" is deleted for good')
    page.click("#confirm-cancel")
    expect(page.locator("#confirm-dialog")).to_be_hidden()
    assert value_of(http, "del/x") == "1"

    page.click("#delete")
    page.click("#confirm-ok")
    expect(page.locator("#key-list .row.key .row-name")).to_have_text(["y"])
    expect(page.locator(".notice.success")).to_contain_text('Deleted "del/x".')
    assert value_of(http, "del/x") is None

    # A delete is guarded by the revision shown, like an edit.
    open_key(page, expect, "y", "del/y")
    put(http, "del/y", "changed meanwhile")
    page.click("#delete")
    page.click("#confirm-ok")
    expect_error(page, expect, "changed since you opened it")
    expect(page.locator("#value")).to_have_text("changed meanwhile")
    assert value_of(http, "del/y") == "changed meanwhile"


# -- users ---------------------------------------------------------------------------------------


def test_console_register_log_in_who_am_i_log_out(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    page = open_console(open_page, server)
    expect(page.locator("#session-status")).to_have_text("Not logged in")
    page.click("#register-open")
    page.fill("#login-username", "erin")
    page.fill("#login-password", "short")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_contain_text("password")  # the server's detail
    page.fill("#login-password", PASSWORD)
    page.click("#login-submit")
    expect(page.locator("#session-status")).to_have_text("Logged in as erin user")

    # The token is in sessionStorage, never a cookie, and it is a real one.
    assert page.context.cookies() == []
    token = page.evaluate("sessionStorage.getItem('filekv.token')")
    me = http.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json() == {"username": "erin", "role": "user"}
    page.reload()  # the same tab keeps its login
    expect(page.locator("#session-status")).to_have_text("Logged in as erin user")

    page.click("#logout")
    expect(page.locator("#login-open")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('filekv.token')") is None
    assert http.get("/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401

    page.click("#login-open")
    page.fill("#login-username", "erin")
    page.fill("#login-password", "wrong password")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_have_text("incorrect username or password")
    page.keyboard.press("Escape")
    log_in(page, expect, ROOT_USER)
    expect(page.locator("#session-status")).to_have_text("Logged in as root admin")


def test_console_notices_a_login_revoked_elsewhere(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    register(http, "gina")
    page = open_console(open_page, server)
    log_in(page, expect, "gina")
    token = page.evaluate("sessionStorage.getItem('filekv.token')")
    assert (
        http.post("/auth/logout", headers={"Authorization": f"Bearer {token}"}).status_code == 204
    )
    page.click("#keys-refresh")  # a read with the dead token (unless the 3 s poll came first)
    expect_error(page, expect, "You are logged out: invalid or expired")
    expect(page.locator("#session-status")).to_have_text("Not logged in")
    # This store lets anyone read: a 401 to a request that carried a token says the login is
    # over, not that the store needs one; the list is read again, anonymously, and no login
    # dialog pops up (it did, claiming "nobody may read without a login", and blocked clicks).
    wait_listed(page)
    expect(page.locator("#login-dialog")).not_to_have_attribute("open", "")
    expect(page.locator("#list-status")).not_to_contain_text("Log in")


# -- transactions --------------------------------------------------------------------------------


def test_console_transaction_levels_with_staged_writes(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect, shots: Path
) -> None:
    register(http, "tina")
    page = open_console(open_page, server, "#prefix=tx/&view=flat")
    expect(page.locator("#tx-begin")).to_be_disabled()  # log in first
    log_in(page, expect, "tina")
    state, lease = page.locator("#tx-state"), page.locator("#tx-lease")

    page.click("#tx-begin")
    expect(state).to_have_text("Your transaction · depth 1")
    expect(lease).to_have_text(re.compile(r"^lease: ([12]?[0-9]|30) s left$"))
    create_key(page, expect, "tx/a", "staged a")
    expect(page.locator("#value-revision")).to_have_text("staged: not committed yet")
    expect(page.locator("#key-list .row.key", has_text="tx/a").locator(".badge")).to_have_text(
        "staged"
    )
    assert value_of(http, "tx/a") is None  # nobody else sees it

    page.click("#tx-begin")
    expect(state).to_have_text("Your transaction · depth 2")
    create_key(page, expect, "tx/b", "staged b")
    expect(page.locator("#tx-staged li")).to_have_count(2)
    clear_notices(page)
    page.screenshot(path=shots / "console-transaction.png")
    page.click("#tx-rollback")
    expect(state).to_have_text("Your transaction · depth 1")
    expect(page.locator("#key-list .row.key .row-name")).to_have_text(["tx/a"])

    page.click("#tx-begin")
    create_key(page, expect, "tx/c", "staged c")
    page.click("#tx-release")
    expect(state).to_have_text("Your transaction · depth 1")
    expect(page.locator("#tx-staged li")).to_have_text(
        ["staged put tx/a (level 1)", "staged put tx/c (level 1)"]
    )
    expect(page.locator("#tx-release")).to_be_disabled()  # nothing to release into at depth 1

    page.click("#tx-commit")
    expect(page.locator(".notice.success").last).to_contain_text("Committed: 2 write(s) applied.")
    expect(state).to_have_text("No transaction open")
    expect(lease).to_have_text("")
    expect(page.locator("#key-list .badge")).to_have_count(0)
    assert [value_of(http, k) for k in ("tx/a", "tx/b", "tx/c")] == ["staged a", None, "staged c"]

    # A rollback at depth 1 ends it, with its writes.
    page.click("#tx-begin")
    create_key(page, expect, "tx/d", "never")
    page.click("#tx-rollback")
    expect(state).to_have_text("No transaction open")
    assert value_of(http, "tx/d") is None


def test_console_two_browsers_one_holds_the_lock_the_other_waits(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect, shots: Path
) -> None:
    register(http, "alice")
    register(http, "bob")
    put(http, "lock/k", "readable while locked")
    holder = open_console(open_page, server, "#prefix=lock/")
    log_in(holder, expect, "alice")
    waiter = open_console(open_page, server, "#prefix=lock/&key=lock/k", clock=True)
    log_in(waiter, expect, "bob")
    expect(waiter.locator("#edit")).to_be_enabled()

    holder.click("#tx-begin")
    expect(holder.locator("#tx-state")).to_have_text("Your transaction · depth 1")
    banner = waiter.locator("#lock-banner")
    let_time_pass(waiter, LOCK_POLL_MS)
    expect(banner).to_be_visible()  # by itself: the waiter polls
    expect(banner).to_contain_text("You (bob) are waiting")
    expect(waiter.locator("#lock-retry")).to_have_text(re.compile(r"ends at the latest in \d+ s"))
    expect(waiter.locator("#break-lock")).to_be_hidden()  # bob is no admin
    for control in ("#new-key", "#edit", "#delete", "#tx-begin"):
        expect(waiter.locator(control)).to_be_disabled()
    expect(holder.locator("#lock-banner")).to_be_hidden()
    waiter.locator("#value").focus()
    waiter.keyboard.press("n")  # a shortcut is refused too, and says why
    expect_error(waiter, expect, "New key: another client holds the transaction lock")
    clear_notices(waiter)
    waiter.screenshot(path=shots / "console-locked.png")

    # Reads still work for the waiter; the holder's staged write stays invisible to it.
    create_key(holder, expect, "lock/new", "staged by alice")
    waiter.click("#keys-refresh")
    expect(waiter.locator("#key-list .row.key .row-name")).to_have_text(["k"])
    waiter.locator("#key-list .row.key").first.click()
    expect(waiter.locator("#value")).to_have_text("readable while locked")

    holder.click("#tx-commit")
    expect(holder.locator("#tx-state")).to_have_text("No transaction open")
    let_time_pass(waiter, LOCK_POLL_MS)
    expect(banner).to_be_hidden()  # by itself, at the next poll
    expect(waiter.locator("#new-key")).to_be_enabled()
    expect(waiter.locator("#edit")).to_be_enabled()
    waiter.click("#keys-refresh")
    expect(waiter.locator("#key-list .row.key .row-name")).to_have_text(["k", "new"])


def test_console_a_write_refused_by_the_lock_says_why(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    register(http, "hank")
    page = open_console(open_page, server, "#prefix=race/", clock=True)
    page.click("#new-key")
    page.fill("#create-key", "race/x")
    page.fill("#edit-value", "1")
    hank = _token(http, "hank")
    assert http.post("/transactions", headers=hank).status_code == 201  # before the poll sees it
    page.locator("#edit-value").press("Control+Enter")  # a key, so a disabled button is no bar
    # The server's 423 with its detail, or, if the poll saw the lock first, the console's word.
    refused = page.locator(".notice.error").filter(
        has_text=re.compile(
            "locked: another client holds the transaction; retry after|"
            "Save: another client holds the transaction lock; writes wait until it ends"
        )
    )
    expect(refused).to_have_count(1)
    let_time_pass(page, LOCK_POLL_MS)  # the next poll shows who holds the lock
    expect(page.locator("#lock-banner")).to_be_visible()
    assert value_of(http, "race/x") is None


def test_console_admin_breaks_the_lock(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    register(http, "carl")
    carl = _token(http, "carl")
    assert http.post("/transactions", headers=carl).status_code == 201
    put(http, "admin/x", "staged by carl", **carl)
    page = open_console(open_page, server)
    log_in(page, expect, ROOT_USER)
    expect(page.locator("#lock-banner")).to_be_visible()
    page.click("#break-lock")
    expect(page.locator("#confirm-title")).to_have_text("Break the lock?")
    page.click("#confirm-ok")
    expect(page.locator(".notice.success .notice-text").last).to_have_text(
        "Lock broken: a transaction at depth 1 was rolled back."
    )
    expect(page.locator("#lock-banner")).to_be_hidden()
    told = http.post("/transactions/commit", headers=carl)
    assert told.status_code == 409
    assert told.json()["detail"].startswith("an admin ended your transaction")
    assert value_of(http, "admin/x") is None


def test_console_with_everything_locked_down_and_a_short_lease(
    tmp_path: Path, open_page: OpenPage, expect: Expect
) -> None:
    # A server of its own: users only from `filekv user add`, every read needs a login, and a
    # lease of 2 s.
    strict = Server(tmp_path / "data", tmp_path / "server.log", transaction_timeout=2)
    strict.args = ("--registration", "closed", "--auth-mode", "all")
    strict.start()
    page = None
    try:
        _user_command(strict.data_dir, "add", "dana")
        page = open_console(open_page, strict)
        expect(page.locator("#login-open")).to_be_visible()
        expect(page.locator("#register-open")).to_be_hidden()  # registration is closed
        # Nothing to read without a login: the console asks for one, and writes are off.
        expect(page.locator("#login-dialog")).to_be_visible()
        expect(page.locator("#login-why")).to_contain_text("log in to see it")
        expect(page.locator("#list-status")).to_have_text("Log in to see this store.")
        expect(page.locator("#new-key")).to_be_disabled()
        expect(page.locator(".notice.error")).to_have_count(0)
        # Told to log in, not how to send a header (it was the API's own detail).
        expect(page.locator("#stats-error")).to_have_text("Statistics: log in to see them.")
        page.click("#login-cancel")
        log_in(page, expect, "dana")
        expect(page.locator("#new-key")).to_be_enabled()
        expect(page.locator("#list-status")).to_have_text("0 entries")  # read once logged in
        expect(page.locator("#stat-keys")).to_have_text("0")
        expect(page.locator("#stats-error")).to_be_hidden()

        page.click("#tx-begin")
        expect(page.locator("#tx-lease")).to_have_text(re.compile(r"^lease: [0-2] s left$"))
        # The console does not renew the lease by itself: idle, it runs out and is said so.
        expect_error(
            page,
            expect,
            "Your transaction is over: your transaction expired: it was idle longer than 2 s",
        )
        expect(page.locator("#tx-state")).to_have_text("No transaction open")
    finally:
        if page is not None:  # before its server goes: a poll would meet a closed port
            page.context.close()
        strict.stop()


# -- server, errors, keyboard, screens -----------------------------------------------------------


def test_console_server_panel_follows_the_stats(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    page = open_console(open_page, server, clock=True)
    stats = http.get("/stats").json()
    expect(page.locator("#health")).to_have_text("server ok")
    expect(page.locator("#stat-fsync")).to_have_text("always")
    expect(page.locator("#stat-compaction")).to_have_text("never")
    expect(page.locator("#stat-keys")).to_have_text(f"{stats['keys']:,}")
    expect(page.locator("#stat-revision")).to_have_text(str(stats["revision"]))
    expect(page.locator("#stat-disk")).to_have_attribute("title", f"{stats['disk_bytes']:,} bytes")
    put(http, "stats/new", "1")  # by someone else: the panel refreshes by itself
    let_time_pass(page, STATS_REFRESH_MS)
    expect(page.locator("#stat-keys")).to_have_text(f"{stats['keys'] + 1:,}")
    expect(page.locator("#stat-revision")).to_have_text(str(stats["revision"] + 1))


def test_console_shows_the_detail_of_every_api_error(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    put(http, "err/exists", "1")
    page = open_console(open_page, server, "#prefix=err/")
    errors = page.locator(".notice.error")
    page.click("#new-key")
    page.fill("#create-key", "err/" + "x" * 1021)  # 1025 bytes: one too many
    page.fill("#edit-value", "v")
    page.click("#save")
    expect_error(page, expect, "key: the key is 1025 bytes in UTF-8; the limit is 1024")
    page.fill("#create-key", "err/exists")
    page.click("#save")
    expect_error(page, expect, 'A key named "err/exists" exists already')
    expect_error(page, expect, "revision mismatch: expected 0, current")
    assert value_of(http, "err/exists") == "1"
    page.fill("#edit-value", "x" * (1024 * 1024 + 1))
    page.fill("#create-key", "err/big")
    page.click("#save")
    expect_error(page, expect, "the value is 1048577 bytes; the limit is 1048576")  # 413
    while errors.count():
        errors.first.locator(".notice-close").click()
    expect(errors).to_have_count(0)


def test_console_is_usable_by_keyboard_alone(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    put(http, "kb/one", "1")
    put(http, "kb/two", "2")
    page = open_console(open_page, server)
    keyboard = page.keyboard
    keyboard.press("/")
    expect(page.locator("#prefix")).to_be_focused()
    keyboard.type("kb/")
    keyboard.press("Enter")
    expect(page.locator("#key-list .row.key .row-name")).to_have_text(["one", "two"])
    keyboard.press("Escape")  # leave the field without a mouse: Tab away, then "k"
    page.locator("#prefix").blur()
    keyboard.press("k")
    expect(page.locator("#key-list .row.key").first).to_be_focused()
    keyboard.press("ArrowDown")
    keyboard.press("Enter")
    expect(page.locator("#value-key")).to_have_text("kb/two")

    page.locator("#value").focus()
    keyboard.press("e")
    expect(page.locator("#edit-value")).to_be_focused()
    keyboard.press("Control+a")
    keyboard.type("22")
    keyboard.press("Control+Enter")
    expect(page.locator("#value")).to_have_text("22")
    assert value_of(http, "kb/two") == "22"

    page.locator("#value").focus()
    keyboard.press("e")
    keyboard.type("not saved")
    keyboard.press("Escape")  # asks first: the text typed would be lost
    expect(page.locator("#confirm-cancel")).to_be_focused()
    keyboard.press("Shift+Tab")
    keyboard.press("Enter")
    expect(page.locator("#value")).to_have_text("22")

    page.locator("#value").focus()
    keyboard.press("n")
    expect(page.locator("#create-key")).to_be_focused()
    expect(page.locator("#create-key")).to_have_value("kb/")  # the prefix shown, to go on
    keyboard.type("three")
    keyboard.press("Tab")
    keyboard.type("3")
    keyboard.press("Control+Enter")
    expect(page.locator("#value-key")).to_have_text("kb/three")
    assert value_of(http, "kb/three") == "3"

    page.locator("#value").focus()
    keyboard.press("Delete")
    expect(page.locator("#confirm-cancel")).to_be_focused()  # the safe answer first
    keyboard.press("Shift+Tab")
    expect(page.locator("#confirm-ok")).to_be_focused()
    keyboard.press("Enter")
    expect(page.locator("#key-list .row.key .row-name")).to_have_text(["one", "two"])
    assert value_of(http, "kb/three") is None

    page.locator("#value-key").focus() if page.locator("#value-key").count() else None
    keyboard.press("k")
    keyboard.press("ArrowLeft")  # up to the parent folder
    expect(page.locator("#crumbs .crumb")).to_have_text(["all keys"])
    keyboard.press("?")
    expect(page.locator("#help-dialog")).to_be_visible()
    keyboard.press("Escape")
    expect(page.locator("#help-dialog")).to_be_hidden()


def _overflow(page: Page) -> int:
    """How far the page is wider than the window (0: no sideways scrolling)."""
    width: int = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    return width


def test_console_fits_a_laptop_and_a_phone_screen(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect, shots: Path
) -> None:
    batch_put(http, SHOP)
    fragment = "#prefix=shop/products/&key=shop/products/kettle"
    laptop = open_console(open_page, server, fragment)
    expect(laptop.locator("#value")).to_have_text("Kettle, 1.7 l, steel")
    assert _overflow(laptop) == 0
    boxes = [laptop.locator(sel).bounding_box() for sel in (".keys", ".viewer", ".server")]
    assert all(box is not None for box in boxes)
    keys, viewer, panel = (box for box in boxes if box is not None)
    assert keys["x"] < viewer["x"] < panel["x"]  # three columns, side by side
    assert keys["y"] == viewer["y"] == panel["y"]
    assert panel["x"] + panel["width"] <= LAPTOP["width"]

    phone = open_console(open_page, server, fragment, viewport=PHONE, is_mobile=True)
    expect(phone.locator("#value")).to_have_text("Kettle, 1.7 l, steel")
    assert _overflow(phone) == 0
    for selector in (".keys", ".viewer", ".server", ".txbar", ".topbar"):
        box = phone.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    keys_box, viewer_box = (
        phone.locator(".keys").bounding_box(),
        phone.locator(".viewer").bounding_box(),
    )
    assert keys_box is not None and viewer_box is not None
    assert viewer_box["y"] > keys_box["y"]  # one column: the value below the keys
    phone.screenshot(path=shots / "console-mobile.png")
    phone.locator("#key-list .row.key", has_text="teapot").click()
    expect(phone.locator("#value-key")).to_have_text("shop/products/teapot")
    expect(phone.locator("#value-key")).to_be_in_viewport()  # scrolled to, below the list
    log_in(phone, expect, ROOT_USER)  # the header wraps, nothing is cut off
    assert _overflow(phone) == 0


# -- the value editor: typing kept, stale reads dropped, expiry, unchanged saves, focus ----------


def put_for(http: httpx.Client, key: str, value: str, ttl: float) -> int:
    """A write whose key expires in ``ttl`` seconds."""
    answer = http.put(path_of(key), json={"value": value, "ttl": ttl})
    assert answer.status_code in (200, 201), answer.text
    revision: int = answer.json()["revision"]
    return revision


def entry_of(http: httpx.Client, key: str) -> dict[str, Any]:
    answer = http.get(path_of(key))
    assert answer.status_code == 200, answer.text
    entry: dict[str, Any] = answer.json()
    return entry


def test_console_editor_keeps_typing_through_a_login_and_asks_before_discarding(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    put(http, "draft/doc", "original")
    put(http, "draft/other", "other value")
    page = open_console(open_page, server, "#prefix=draft/&key=draft/doc")
    page.click("#edit")
    page.fill("#edit-value", "half typed")
    # Something outside the editor re-renders the viewer: a login, then a logout.
    log_in(page, expect, ROOT_USER)
    expect(page.locator("#edit-value")).to_have_value("half typed")
    page.click("#logout")
    expect(page.locator("#login-open")).to_be_visible()
    expect(page.locator("#edit-value")).to_have_value("half typed")

    # Esc asks before throwing the text away; the dialog starts on Cancel, which keeps it.
    page.locator("#edit-value").focus()
    page.keyboard.press("Escape")
    expect(page.locator("#confirm-dialog")).to_be_visible()
    expect(page.locator("#confirm-cancel")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#confirm-dialog")).to_be_hidden()
    expect(page.locator("#edit-value")).to_have_value("half typed")
    # So does opening another key.
    page.locator("#key-list .row.key", has_text="other").click()
    expect(page.locator("#confirm-dialog")).to_be_visible()
    page.click("#confirm-cancel")
    expect(page.locator("#edit-value")).to_have_value("half typed")
    selected = page.locator("#key-list .row.key[aria-current='true'] .row-name")
    expect(selected).to_have_text("doc")
    page.click("#cancel")
    page.click("#confirm-ok")
    expect(page.locator("#value")).to_have_text("original")
    assert value_of(http, "draft/doc") == "original"

    # Nothing changed: Esc leaves at once.
    page.click("#edit")
    page.locator("#edit-value").focus()
    page.keyboard.press("Escape")
    expect(page.locator("#value")).to_have_text("original")
    expect(page.locator("#confirm-dialog")).to_be_hidden()


def test_console_drops_a_slow_read_of_a_key_no_longer_wanted(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    put(http, "slow/a", "value of a")
    put(http, "slow/b", "value of b")
    page = open_console(open_page, server, "#prefix=slow/")
    held: list[Any] = []
    page.route(re.compile(r"/keys/slow%2Fa$"), lambda route: held.append(route))

    page.locator("#key-list .row.key", has_text="a").click()
    expect(page.locator("#value-loading")).to_have_text("Loading…")  # while the read is out
    expect(page.locator("#viewer-body")).to_have_attribute("aria-busy", "true")
    assert len(held) == 1
    open_key(page, expect, "b", "slow/b")
    expect(page.locator("#value")).to_have_text("value of b")
    page.click("#edit")
    page.fill("#edit-value", "typing in b")
    with page.expect_request_finished(lambda request: request.url.endswith("/keys/slow%2Fa")):
        held[0].continue_()
    page.wait_for_timeout(300)  # the answer reached the page: it must change nothing
    expect(page.locator("#value-key")).to_have_text("slow/b")
    expect(page.locator("#edit-value")).to_have_value("typing in b")
    selected = page.locator("#key-list .row.key[aria-current='true'] .row-name")
    expect(selected).to_have_text("b")

    # Two quick clicks in view: the value shown is the key highlighted, the later one.
    page.click("#cancel")
    page.click("#confirm-ok")
    expect(page.locator("#value")).to_have_text("value of b")
    page.locator("#key-list .row.key", has_text="a").click()
    assert len(held) == 2
    open_key(page, expect, "b", "slow/b")
    with page.expect_request_finished(lambda request: request.url.endswith("/keys/slow%2Fa")):
        held[1].continue_()
    page.wait_for_timeout(300)
    expect(page.locator("#value")).to_have_text("value of b")
    expect(selected).to_have_text("b")
    expect(page.locator("#viewer-body")).not_to_have_attribute("aria-busy", "true")


def test_console_edit_keeps_a_keys_expiry_unless_made_permanent(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    put_for(http, "ttl/a", "v1", 600)
    put_for(http, "ttl/b", "first", 600)
    page = open_console(open_page, server, "#prefix=ttl/&key=ttl/a")
    expect(page.locator("#value-expiry")).to_have_text(
        re.compile(r"^expires in (9 min \d+|10 min 0) s$")
    )
    page.click("#edit")
    expect(page.locator("#edit-expiry")).to_have_value("keep")
    expect(page.locator("#edit-expiry option[value='keep']")).to_contain_text("Keep the expiry")
    page.fill("#edit-value", "v2")
    page.click("#save")
    expect(page.locator("#value")).to_have_text("v2")
    entry = entry_of(http, "ttl/a")
    assert entry["value"] == "v2" and 500 < entry["expires_in"] <= 600  # kept, not reset
    expect(page.locator("#value-expiry")).to_contain_text("expires in")

    page.click("#edit")
    page.select_option("#edit-expiry", "permanent")
    page.fill("#edit-value", "v3")
    page.click("#save")
    expect(page.locator("#value")).to_have_text("v3")
    expect(page.locator("#value-expiry")).to_have_count(0)
    entry = entry_of(http, "ttl/a")
    assert entry["value"] == "v3" and entry["expires_in"] is None

    # Keep mine after a conflict keeps the expiry their version has now (the latest read).
    open_key(page, expect, "b", "ttl/b")
    page.click("#edit")
    page.fill("#edit-value", "mine")
    put_for(http, "ttl/b", "theirs", 300)
    page.click("#save")
    expect(page.locator("#conflict")).to_contain_text(
        re.compile(r"expires in (4 min \d+|5 min 0) s")
    )
    page.click("#conflict-overwrite")
    expect(page.locator("#value")).to_have_text("mine")
    entry = entry_of(http, "ttl/b")
    assert entry["value"] == "mine" and 200 < entry["expires_in"] <= 300


def test_console_save_without_change_writes_nothing_and_keeps_line_breaks(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    revision = put(http, "eol/crlf", "one\r\ntwo\r\n")
    mixed = put(http, "eol/mixed", "a\rb\r\nc")
    page = open_console(open_page, server, "#prefix=eol/&key=eol/crlf")
    page.click("#edit")
    expect(page.locator("#line-endings")).to_contain_text("CRLF")
    page.click("#save")
    expect(page.locator(".notice.success").last).to_contain_text("No change")
    expect(page.locator("#value-revision")).to_have_text(f"revision {revision}")
    assert entry_of(http, "eol/crlf") == {
        "key": "eol/crlf",
        "value": "one\r\ntwo\r\n",
        "revision": revision,
        "expires_in": None,
    }
    page.click("#edit")
    page.fill("#edit-value", "one\ntwo\nthree\n")
    page.click("#save")
    expect(page.locator("#value-revision")).not_to_have_text(f"revision {revision}")
    assert value_of(http, "eol/crlf") == "one\r\ntwo\r\nthree\r\n"  # CRLF kept

    # Mixed line breaks cannot be kept: said before saving, and nothing written unchanged.
    open_key(page, expect, "mixed", "eol/mixed")
    page.click("#edit")
    expect(page.locator("#line-endings")).to_contain_text("saved as LF")
    page.keyboard.press("Control+Enter")
    expect(page.locator(".notice.success").last).to_contain_text("No change")
    assert entry_of(http, "eol/mixed")["revision"] == mixed
    page.click("#edit")
    page.fill("#edit-value", "a\nb\nc!")
    page.click("#save")
    expect(page.locator(".notice.success").last).to_contain_text("line breaks are now LF")
    assert value_of(http, "eol/mixed") == "a\nb\nc!"


def test_console_focus_stays_in_place_after_a_save_and_a_delete(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    for name in ("a", "b", "c"):
        put(http, f"focus/{name}", name)
    page = open_console(open_page, server, "#prefix=focus/&key=focus/b")
    expect(page.locator("#value")).to_have_text("b")
    page.locator("#value").focus()
    page.keyboard.press("e")
    page.keyboard.type("2")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#value")).to_have_text("b2")
    expect(page.locator("#value")).to_be_focused()

    page.keyboard.press("Delete")
    expect(page.locator("#confirm-cancel")).to_be_focused()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#key-list .row.key .row-name")).to_have_text(["a", "c"])
    expect(page.locator("#key-list .row.key").nth(1)).to_be_focused()  # where b was
    assert value_of(http, "focus/b") is None


def test_console_counts_down_an_expiry_and_shows_the_key_gone(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    put_for(http, "soon/gone", "short-lived", 3)
    page = open_console(open_page, server, "#prefix=soon/&key=soon/gone")
    expect(page.locator("#value-expiry")).to_have_text(re.compile(r"^expires in [1-3] s$"))
    expect(page.locator("#value-expiry")).to_have_text(re.compile(r"^expires in 1 s$"))
    expect(page.locator("#missing")).to_have_text("Not readable: no such key")
    assert value_of(http, "soon/gone") is None


# -- audit of the console: key text, the lost transaction, logout, phone, headers, keys -------


def _computed(page: Page, selector: str, prop: str) -> str:
    value: str = page.locator(selector).first.evaluate(
        f"node => getComputedStyle(node).getPropertyValue('{prop}')"
    )
    return value


def test_console_key_names_cannot_hide_characters_or_reorder_text(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    override = "mark/bidi-invoice\u202efdp.exe"
    put(http, override, "not a pdf")
    for key in ("mark/zero\u200bwidth", "mark/line\u2028sep", "mark/c1\u0085next", "mark/\u05e9x"):
        put(http, key, "v")
    page = open_console(open_page, server, "#prefix=mark/&view=flat")
    assert key_names(page) == [
        "mark/bidi-invoice⟨U+202E⟩fdp.exe",
        "mark/c1⟨U+0085⟩next",
        "mark/line⟨U+2028⟩sep",
        "mark/zero⟨U+200B⟩width",
        "\u2068mark/\u05e9x\u2069",  # isolated: a right-to-left letter reorders nothing around
    ]
    assert _computed(page, "#key-list .row-name", "unicode-bidi") == "isolate"
    open_key(page, expect, "mark/bidi-invoice⟨U+202E⟩fdp.exe")
    assert _computed(page, "#value-key", "unicode-bidi") == "isolate"
    page.click("#delete")
    expect(page.locator("#confirm-text")).to_have_text(
        '"mark/bidi-invoice⟨U+202E⟩fdp.exe" is deleted for good.'
    )
    page.click("#confirm-cancel")


def test_console_holder_learns_at_once_that_an_admin_broke_its_transaction(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect, root: dict[str, str]
) -> None:
    register(http, "hilda")
    page = open_console(open_page, server, "#prefix=broken/&view=flat")
    log_in(page, expect, "hilda")
    page.click("#tx-begin")
    expect(page.locator("#tx-state")).to_have_text("Your transaction · depth 1")
    create_key(page, expect, "broken/a", "staged")
    page.wait_for_timeout(1_000)  # the reads that follow a write are answered, and settled
    assert http.delete("/transactions", headers=root).json()["rolled_back"] is True
    page.wait_for_timeout(500)
    # The holder does not poll (it would renew its lease): it cannot know yet.
    expect(page.locator("#tx-state")).to_have_text("Your transaction · depth 1")
    page.click("#new-key")
    page.fill("#create-key", "broken/b")
    page.fill("#edit-value", "refused")
    page.click("#save")
    expect_error(page, expect, "an admin ended your transaction")
    # Told by the 409, not 30 s later by the lease's countdown.
    expect(page.locator("#tx-state")).to_have_text("No transaction open", timeout=5_000)
    expect(page.locator("#tx-lease")).to_have_text("")
    expect(page.locator("#tx-staged")).to_be_hidden()
    assert value_of(http, "broken/a") is None


def test_console_log_out_while_holding_a_transaction_asks_first(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    register(http, "otto")
    page = open_console(open_page, server, "#prefix=logout/&view=flat")
    log_in(page, expect, "otto")
    page.click("#tx-begin")
    create_key(page, expect, "logout/a", "staged")
    create_key(page, expect, "logout/b", "staged")
    page.click("#logout")
    expect(page.locator("#confirm-text")).to_contain_text("2 staged writes")
    expect(page.locator("#confirm-cancel")).to_be_focused()
    page.click("#confirm-cancel")
    expect(page.locator("#session-status")).to_contain_text("Logged in as otto")
    expect(page.locator("#tx-state")).to_have_text("Your transaction · depth 1")

    clear_notices(page)
    page.click("#logout")
    page.click("#confirm-ok")
    expect(page.locator(".notice.success").last).to_contain_text("transaction was rolled back")
    expect(page.locator("#tx-state")).to_have_text("No transaction open")
    expect(page.locator("#session-status")).to_have_text("Not logged in")
    expect(page.locator(".notice.error")).to_have_count(0)  # no "not authenticated" rollback
    assert value_of(http, "logout/a") is None


def _in_view(page: Page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    assert box is not None
    return bool(box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"])


def test_console_on_a_phone_keeps_the_lease_and_the_banner_in_view(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    register(http, "phil")
    batch_put(http, [(f"phone/{n:03}", "v" * 200) for n in range(60)])
    holder = open_console(open_page, server, "#prefix=phone/&view=flat", viewport=PHONE)
    log_in(holder, expect, "phil")
    holder.click("#tx-begin")
    expect(holder.locator("#tx-lease")).to_contain_text("s left")
    waiting = open_console(
        open_page, server, "#prefix=phone/&view=flat", viewport=PHONE, clock=True
    )
    let_time_pass(waiting, LOCK_POLL_MS)
    expect(waiting.locator("#lock-banner")).to_be_visible()
    for page in (holder, waiting):
        page.locator("#key-list .row.key").last.click()  # the value, far down the page
        expect(page.locator("#value")).to_have_text("v" * 200)
        page.mouse.wheel(0, 3000)
        page.wait_for_timeout(200)
    assert _in_view(holder, "#tx-lease")
    assert _in_view(waiting, "#lock-banner")

    # Notices stacked at the bottom: the newest whole, the one before on a line, no more.
    for n in range(4):
        holder.goto(f"{server.url}/ui#prefix=phone/&view=flat&key=phone/missing-{n}")
        expect(holder.locator(".notice.error")).to_have_count(n + 1)
    box = holder.locator("#notices").bounding_box()
    assert box is not None and box["height"] < 110, box


def test_console_shortcuts_work_in_upper_case_too(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    put(http, "upper/a", "1")
    page = open_console(open_page, server, "#prefix=upper/")
    page.keyboard.press("Shift+F")
    expect(page.locator("#find-value")).to_be_focused()
    page.locator("#find-value").blur()
    page.keyboard.press("Shift+K")
    expect(page.locator("#key-list .row.key").first).to_be_focused()
    page.keyboard.press("Shift+L")
    expect(page.locator("#login-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    page.keyboard.press("Shift+N")
    expect(page.locator("#create-key")).to_be_focused()
    page.keyboard.press("Escape")
    page.locator("#prefix").focus()
    page.locator("#prefix").blur()
    page.keyboard.press("Control+Shift+K")  # with Ctrl it is the browser's, not the console's
    expect(page.locator("#key-list .row.key").first).not_to_be_focused()


def test_console_shows_a_folders_own_key_and_says_a_retry_once(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    put(http, "own/", "the folder's own")
    put(http, "own/a", "a")
    page = open_console(open_page, server, "#prefix=own/")
    expect(page.locator("#key-list .row.key .row-name")).to_have_text(["own/", "a"])
    expect(page.locator("#key-list .row.key").first).to_contain_text("this folder's own key")
    open_key(page, expect, "own/")
    expect(page.locator("#value")).to_have_text("the folder's own")

    detail = "too many failed logins for this username; retry after 30 s"
    page.route(
        re.compile(r"/auth/token$"),
        lambda route: route.fulfill(
            status=429, headers={"Retry-After": "30"}, json={"detail": detail}
        ),
    )
    page.click("#login-open")
    page.fill("#login-username", "nobody")
    page.fill("#login-password", "wrong password")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_have_text(detail)


def test_console_opens_the_api_docs_in_a_new_tab_without_the_token(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    register(http, "nora")
    page = open_console(open_page, server)
    log_in(page, expect, "nora")
    assert page.evaluate("sessionStorage.getItem('filekv.token')")
    link = page.locator("a", has_text="API docs")
    assert link.get_attribute("rel") == "noopener noreferrer"
    with page.context.expect_page() as opened:
        link.click()
    docs = opened.value
    docs.wait_for_load_state()
    assert docs.url == f"{server.url}/docs"
    assert docs.evaluate("sessionStorage.getItem('filekv.token')") is None
    assert docs.evaluate("window.opener") is None
    assert page.url.startswith(f"{server.url}/ui")  # the console stays where it was


# -- loading the console: nothing logged in red --------------------------------------------------


@pytest.mark.parametrize("registration", ["open", "closed"])
def test_console_loads_without_an_error_in_the_browser_console(
    tmp_path: Path, browser: Browser, expect: Expect, registration: str
) -> None:
    # Every "error" the browser's own console shows, with the "Failed to load resource" lines the
    # conftest leaves to the tests: the console asked POST /auth/register with an empty body
    # whether registration is open, and each load logged its 403 or 422 in red.
    logged: list[str] = []
    failed: list[str] = []
    asked: list[str] = []

    def answered(response: Response) -> None:
        if response.status >= 400:
            failed.append(f"{response.status} {response.request.method} {response.url}")

    def sent(request: Request) -> None:
        if "/auth/register" in request.url:
            asked.append(request.method)

    with running(tmp_path, "--registration", registration) as served:
        context = browser.new_context(viewport=LAPTOP)
        try:
            page = context.new_page()
            page.on("console", lambda m: logged.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: logged.append(f"page error: {exc}"))
            page.on("response", answered)
            page.on("requestfailed", lambda r: failed.append(f"failed {r.method} {r.url}"))
            page.on("request", sent)
            page.goto(f"{served.url}/ui")
            page.wait_for_selector("body[data-ready='true']")
            wait_listed(page)
            register_button = page.locator("#register-open")
            if registration == "open":
                expect(register_button).to_be_visible()
            else:
                expect(register_button).to_be_hidden()
            expect(page.locator("#login-open")).to_be_visible()
            expect(page.locator("#health")).to_have_attribute("data-health", "ok")
            page.wait_for_load_state("networkidle")
        finally:
            context.close()
    assert logged == []
    assert failed == []
    assert asked == ["GET"]  # asked once, and never by a POST that could register anyone


# -- a new key's expiry --------------------------------------------------------------------------


def _fill_new_key(page: Page, key: str, value: str, ttl: str) -> None:
    page.click("#new-key")
    page.fill("#create-key", key)
    page.fill("#edit-value", value)
    page.fill("#create-ttl", ttl)
    page.click("#save")


def test_console_creates_a_key_that_expires(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    page = open_console(open_page, server, "#prefix=newttl/&view=flat")
    page.click("#new-key")
    expect(page.locator("label[for='create-ttl']")).to_have_text("Expires in (seconds)")
    expect(page.locator("#create-ttl")).to_have_value("")  # optional: empty is "never"
    page.keyboard.press("Escape")

    _fill_new_key(page, "newttl/a", "for two minutes", " 120 ")
    expect(page.locator("#value-key")).to_have_text("newttl/a")
    expect(page.locator("#value-expiry")).to_have_text(
        re.compile(r"^expires in (1 min \d+|2 min 0) s$")
    )
    expect(page.locator(".notice.success").last).to_contain_text("It expires in 2 min 0 s.")
    entry = entry_of(http, "newttl/a")
    assert entry["value"] == "for two minutes"
    assert 100 < entry["expires_in"] <= 120, entry

    # The longest the server takes is the longest the field takes.
    _fill_new_key(page, "newttl/max", "ten years", str(int(MAX_TTL)))
    expect(page.locator("#value-key")).to_have_text("newttl/max")
    expect(page.locator("#value-expiry")).to_have_text(
        re.compile(r"^expires in (3649 d 23|3650 d 0) h$")
    )
    assert MAX_TTL - 60 < entry_of(http, "newttl/max")["expires_in"] <= MAX_TTL

    # Empty: a key that never expires.
    _fill_new_key(page, "newttl/forever", "always", "")
    expect(page.locator("#value-key")).to_have_text("newttl/forever")
    expect(page.locator("#value-revision")).to_contain_text("revision")
    expect(page.locator("#value-expiry")).to_have_count(0)
    assert entry_of(http, "newttl/forever")["expires_in"] is None
    expect(page.locator("#key-list .row.key .row-name")).to_have_text(
        ["newttl/a", "newttl/forever", "newttl/max"]
    )


@pytest.mark.parametrize("typed", ["0", "-1", "1.5", "soon", "1e3", str(int(MAX_TTL) + 1)])
def test_console_refuses_a_bad_expiry_for_a_new_key_and_writes_nothing(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect, typed: str
) -> None:
    page = open_console(open_page, server, "#prefix=badttl/")
    writes: list[str] = []
    page.on("request", lambda r: writes.append(r.url) if r.method != "GET" else None)
    key = f"badttl/{typed}"
    _fill_new_key(page, key, "never written", typed)
    expect_error(
        page, expect, f'"expires in" must be a whole number of seconds from 1 to {int(MAX_TTL)}'
    )
    expect(page.locator(".notice.error")).to_contain_text(f'not "{typed}"')
    field = page.locator("#create-ttl")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(field).to_be_focused()
    expect(page.locator("#create-key")).to_have_value(key)  # the form stays, as typed
    expect(page.locator("#edit-value")).to_have_value("never written")
    assert writes == []
    assert value_of(http, key) is None

    # Put right, the same form creates the key.
    field.fill("60")
    expect(field).not_to_have_attribute("aria-invalid", "true")
    page.click("#save")
    expect(page.locator("#value-expiry")).to_have_text(re.compile(r"^expires in (59|1 min 0) s$"))
    assert 0 < entry_of(http, key)["expires_in"] <= 60


def test_console_shows_the_servers_refusal_of_a_new_keys_expiry(
    server: Server, http: httpx.Client, open_page: OpenPage, expect: Expect
) -> None:
    # A server that takes less than the console checks for (an older or another one): its 422,
    # made here by sending on the PUT a ttl past the server's longest, is shown as it says it.
    page = open_console(open_page, server, "#prefix=refusedttl/")

    def too_long(route: Any) -> None:
        if route.request.method != "PUT":
            route.continue_()
            return
        body = json.loads(route.request.post_data or "{}")
        assert body == {"value": "v", "ttl": 30}  # what the console sent: a number
        route.continue_(post_data=json.dumps({**body, "ttl": MAX_TTL + 1}))

    page.route(re.compile(r"/keys/refusedttl%2Fa$"), too_long)
    _fill_new_key(page, "refusedttl/a", "v", "30")
    expect_error(page, expect, 'Save "refusedttl/a": ttl: ttl must be a number of seconds above 0')
    expect(page.locator("#create-ttl")).to_have_value("30")  # the form stays, as typed
    assert value_of(http, "refusedttl/a") is None
