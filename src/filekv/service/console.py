"""``/ui``: the web console, a page and its assets from ``service/ui/`` in the package.

The console is plain HTML, CSS and JavaScript (no build step, nothing from another host) that
talks to the public HTTP API like any other client: it gets no route, right or shortcut of its
own. The page and its assets (about 70 KB) are read from the package once, when the app is
built, and answered from memory with an ``ETag`` (a browser revalidates them, 304): a first
visit asks for ten files at once, and ``StaticFiles`` would send each through the thread pool
(stat, open, read) on the server's one event loop.

The page is served at ``/ui`` (``/ui/`` redirects there) and its links are relative: the assets
are ``ui/assets/...`` and the API is the page's own folder, so the console also works behind a
reverse proxy that serves filekv under a sub-path. Its ``Content-Security-Policy`` lets it load
and call only its own origin and refuses inline scripts and framing: the login token lives in
``sessionStorage``, where a script injected through a key or a value could read it, so no
script but the console's own may run (the console itself only ever writes data as text).
``Cross-Origin-Opener-Policy: same-origin`` keeps a page of another origin that opened it, or
that it opens, from reaching it, and ``Permissions-Policy`` turns off what it never uses
(camera, microphone, location, payment, USB and the like). ``X-Content-Type-Options: nosniff``
is on every answer of the server (``RequestMiddleware``).

None of these routes is in the OpenAPI schema: like ``/docs``, they are not the API.
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Route

UI_DIR: Final = Path(__file__).parent / "ui"
CONSOLE_URL: Final = "/ui"
ASSETS_URL: Final = "/ui/assets"

CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
PERMISSIONS_POLICY: Final = ", ".join(
    f"{feature}=()"
    for feature in (
        "accelerometer",
        "camera",
        "display-capture",
        "geolocation",
        "gyroscope",
        "magnetometer",
        "microphone",
        "midi",
        "payment",
        "serial",
        "usb",
    )
)
PAGE_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": PERMISSIONS_POLICY,
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load: a new filekv must not run an old page against its API.
    "Cache-Control": "no-cache",
}


class Asset:
    """One file of the console, in memory, with its media type and entity tag."""

    __slots__ = ("body", "etag", "media_type")

    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.etag = f'"{hashlib.sha256(self.body).hexdigest()[:20]}"'
        guessed = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        text = guessed.startswith("text/") or guessed in ("application/javascript", "image/svg+xml")
        self.media_type = f"{guessed}; charset=utf-8" if text else guessed
        if path.suffix == ".js":  # the type module scripts must have, whatever the system says
            self.media_type = "text/javascript; charset=utf-8"

    def answer(self, request: Request) -> Response:
        headers = {"ETag": self.etag, "Cache-Control": "no-cache"}  # nosniff: RequestMiddleware
        if request.headers.get("if-none-match") == self.etag:
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def load_assets(folder: Path = UI_DIR / "assets") -> dict[str, Asset]:
    """Every file of ``folder`` (not its subfolders) by name."""
    return {path.name: Asset(path) for path in sorted(folder.iterdir()) if path.is_file()}


def install_console(app: FastAPI) -> None:
    """Serve the console at ``/ui`` and its assets under ``/ui/assets``."""
    page = (UI_DIR / "index.html").read_bytes()
    assets = load_assets()

    async def console() -> Response:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    async def console_slash() -> Response:
        return RedirectResponse(CONSOLE_URL, status_code=308)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            raise HTTPException(404, "no such file in the console")
        return found.answer(request)

    app.add_api_route(CONSOLE_URL, console, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route(
        f"{CONSOLE_URL}/", console_slash, methods=["GET", "HEAD"], include_in_schema=False
    )
    # A plain route ("name" has no "/": nothing outside the folder can be named).
    app.router.routes.append(
        Route(f"{ASSETS_URL}/{{name}}", asset, methods=["GET", "HEAD"], include_in_schema=False)
    )
