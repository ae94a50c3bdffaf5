"""``/docs`` and ``/redoc`` from files in the package: the interactive docs need no internet.

FastAPI's own pages load Swagger UI and ReDoc from a public CDN (and ReDoc's fonts from Google),
so on a machine without internet they are blank. Here the same pages point at the released
files kept in ``service/static/`` (versions, licences and how to update them in its README),
served under ``/static/docs``: the OAuth2 redirect page and the favicon too. No filekv page
loads anything from another host. ``/`` sends a browser to ``/docs``.

None of these routes is in the OpenAPI schema: they are the documentation, not the API.

The pages are built once, and sent with a ``Content-Security-Policy`` (``page_headers``) that
lets them run only the scripts of this server and their own inline one (allowed by its SHA-256),
call only this server, and be framed by no page (``frame-ancestors 'none'``, and
``X-Frame-Options: DENY`` for older browsers); ``Referrer-Policy: no-referrer``.
``X-Content-Type-Options: nosniff`` is on every answer (``RequestMiddleware``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from pathlib import Path
from typing import Final

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_DIR: Final = Path(__file__).parent / "static"
STATIC_URL: Final = "/static/docs"
DOCS_URL: Final = "/docs"
REDOC_URL: Final = "/redoc"
OAUTH2_REDIRECT_URL: Final = "/docs/oauth2-redirect"
FAVICON_URL: Final = f"{STATIC_URL}/favicon-32x32.png"

# Swagger UI's settings: no call to the public validator (its badge).
SWAGGER_UI_PARAMETERS: Final = {"validatorUrl": None}

_INLINE_SCRIPT: Final = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def page_headers(html: str) -> dict[str, str]:
    """The security headers of a docs page: its inline scripts allowed by hash, nothing else.

    Swagger UI and ReDoc set inline styles from their scripts (``'unsafe-inline'`` styles), and
    ReDoc runs a web worker from a ``blob:`` URL.
    """
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in _INLINE_SCRIPT.findall(html)
    )
    policy = "; ".join(
        (
            "default-src 'self'",
            f"script-src 'self'{hashes}",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "worker-src 'self' blob:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )
    return {
        "Content-Security-Policy": policy,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }


@functools.cache
def _page_headers(html: str) -> dict[str, str]:
    # The pages are built once: their script hashes need not be worked out on every request.
    return page_headers(html)


def _page(html: str) -> HTMLResponse:
    return HTMLResponse(html, headers=_page_headers(html))


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc``, their assets, the OAuth2 redirect, a favicon and ``/``.

    ``app`` must be created with ``docs_url=None, redoc_url=None`` (FastAPI's CDN pages).
    """
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title
    swagger = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{title} - Swagger UI",
        swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
        swagger_favicon_url=FAVICON_URL,
        oauth2_redirect_url=OAUTH2_REDIRECT_URL,
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )
    own_css = f'<link type="text/css" rel="stylesheet" href="{STATIC_URL}/docs.css">'
    swagger_html = _text(swagger).replace("</head>", f"{own_css}\n</head>", 1)
    redirect_html = _text(get_swagger_ui_oauth2_redirect_html())
    redoc_html = _text(
        get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=FAVICON_URL,
            with_google_fonts=False,
        )
    )

    async def swagger_ui() -> HTMLResponse:
        return _page(swagger_html)

    async def oauth2_redirect() -> HTMLResponse:
        return _page(redirect_html)

    async def redoc() -> HTMLResponse:
        return _page(redoc_html)

    async def favicon() -> Response:
        return RedirectResponse(FAVICON_URL, status_code=308)

    async def root() -> Response:
        return RedirectResponse(DOCS_URL, status_code=307)

    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="docs-static")
    app.add_api_route(DOCS_URL, swagger_ui, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route(
        OAUTH2_REDIRECT_URL, oauth2_redirect, methods=["GET", "HEAD"], include_in_schema=False
    )
    app.add_api_route(REDOC_URL, redoc, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/favicon.ico", favicon, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/", root, methods=["GET", "HEAD"], include_in_schema=False)


def _text(page: HTMLResponse) -> str:
    return bytes(page.body).decode("utf-8")
