"""``/ui``: the console's page and assets as HTTP answers (issue 13).

What a browser does with them is in ``tests/browser/test_console_browser.py``; here: the page
loads only from the server (relative links that all resolve, no inline script, a strict
``Content-Security-Policy``), every module the scripts import exists, nothing of it is in the
OpenAPI schema, and a wheel would carry every file (the package-data globs cover them).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import re
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from filekv.service.console import UI_DIR

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def page(client: TestClient) -> str:
    answer = client.get("/ui")
    assert answer.status_code == 200
    return answer.text


def test_console_page_is_html_with_a_strict_policy(client: TestClient) -> None:
    answer = client.get("/ui")
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    policy = answer.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-cache"


def test_console_page_links_are_relative_and_resolve(client: TestClient, page: str) -> None:
    links = re.findall(r"""(?:src|href)=["']([^"'#]+)""", page)
    assert links, "the page links its assets"
    for link in links:
        assert not re.match(r"^(?:[a-z]+:|//|/)", link), link  # relative: works under a sub-path
        answer = client.get(f"/{link}")
        assert answer.status_code == 200, link
    kinds = {link.rsplit(".", 1)[-1]: client.get(f"/{link}") for link in links if "." in link}
    assert kinds["js"].headers["content-type"].startswith("text/javascript")
    assert kinds["css"].headers["content-type"].startswith("text/css")


def test_console_page_has_no_inline_script(page: str) -> None:
    for tag in re.findall(r"<script\b[^>]*>", page):
        assert 'src="' in tag, tag
    assert not re.search(r"\son[a-z]+=", page), "inline event handlers would need unsafe-inline"


def test_console_every_imported_module_is_served(client: TestClient) -> None:
    scripts = sorted((UI_DIR / "assets").glob("*.js"))
    imported = {
        name
        for script in scripts
        for name in re.findall(r"""from ["']\./([\w.-]+)["']""", script.read_text())
    }
    assert imported, "main.js imports the other modules"
    assert imported <= {script.name for script in scripts}
    for name in imported:
        assert client.get(f"/ui/assets/{name}").status_code == 200, name


def test_console_slash_redirects_to_the_page(client: TestClient) -> None:
    answer = client.get("/ui/", follow_redirects=False)
    assert (answer.status_code, answer.headers["location"]) == (308, "/ui")


def test_console_missing_asset_is_404(client: TestClient) -> None:
    answer = client.get("/ui/assets/nope.js")
    assert (answer.status_code, answer.json()["detail"]) == (404, "no such file in the console")
    assert client.get("/ui/assets/%2e%2e/%2e%2e/console.py").status_code == 404
    assert client.get("/ui/assets/").status_code == 404


def test_console_assets_are_the_package_files_and_revalidate(client: TestClient) -> None:
    for path in (UI_DIR / "assets").iterdir():
        answer = client.get(f"/ui/assets/{path.name}")
        assert answer.status_code == 200, path.name
        assert answer.content == path.read_bytes()
        etag = answer.headers["etag"]
        again = client.get(f"/ui/assets/{path.name}", headers={"If-None-Match": etag})
        assert (again.status_code, again.content) == (304, b"")
        other = client.get(f"/ui/assets/{path.name}", headers={"If-None-Match": '"stale"'})
        assert other.status_code == 200
    assert client.get("/ui/assets/app.css").headers["content-type"] == "text/css; charset=utf-8"
    svg = client.get("/ui/assets/favicon.svg").headers["content-type"]
    assert svg == "image/svg+xml; charset=utf-8"


def test_console_is_not_in_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/ui")]


def test_console_files_are_package_data() -> None:
    """Every file of the console matches a package-data glob, so ``pip install`` ships it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["filekv"]
    package = ROOT / "src" / "filekv"
    files = [path for path in UI_DIR.rglob("*") if path.is_file()]
    assert files
    for path in files:
        relative = path.relative_to(package).as_posix()
        # setuptools globs do not cross "/" with "*": compare folder by folder.
        assert any(
            relative.count("/") == glob.count("/") and fnmatch.fnmatch(relative, glob)
            for glob in globs
        ), relative


# -- security headers of the console, the docs pages and every answer ------------------------


def test_console_page_keeps_openers_out_and_turns_off_what_it_does_not_use(
    client: TestClient,
) -> None:
    answer = client.get("/ui")
    assert answer.headers["cross-origin-opener-policy"] == "same-origin"
    permissions = answer.headers["permissions-policy"]
    for feature in ("camera", "microphone", "geolocation", "payment", "usb"):
        assert f"{feature}=()" in permissions
    assert answer.headers["referrer-policy"] == "no-referrer"
    # Said once (RequestMiddleware), not once by the page and once more by the middleware.
    assert answer.headers.get_list("x-content-type-options") == ["nosniff"]
    assert client.get("/ui/assets/main.js").headers.get_list("x-content-type-options") == [
        "nosniff"
    ]


@pytest.mark.parametrize("path", ["/healthz", "/keys?prefix=", "/keys/no-such-key", "/stats"])
def test_every_api_answer_says_nosniff(client: TestClient, path: str) -> None:
    assert client.get(path).headers.get_list("x-content-type-options") == ["nosniff"]


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_docs_pages_cannot_be_framed_and_run_only_their_own_scripts(
    client: TestClient, path: str
) -> None:
    answer = client.get(path)
    assert answer.status_code == 200
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers.get_list("x-content-type-options") == ["nosniff"]
    policy = answer.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    script_src = next(part for part in policy.split("; ") if part.startswith("script-src "))
    assert "unsafe-inline" not in script_src and "unsafe-eval" not in script_src
    # Each inline script of the page, and only those, is allowed by its hash.
    inline = re.findall(r"<script>(.*?)</script>", answer.text, re.DOTALL)
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in inline
    ]
    assert script_src.split()[1:] == ["'self'", *hashes]
