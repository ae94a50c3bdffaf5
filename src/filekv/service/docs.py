"""``/docs`` and ``/redoc`` from files in the package: the interactive docs need no internet.

FastAPI's own pages load Swagger UI and ReDoc from a public CDN (and ReDoc's fonts from Google),
so on a machine without internet they are blank. Here the same pages point at the released
files kept in ``service/static/`` (versions, licences and how to update them in its README),
served under ``/static/docs``: the OAuth2 redirect page and the favicon too. No filekv page
loads anything from another host. ``/`` sends a browser to ``/docs``.

None of these routes is in the OpenAPI schema: they are the documentation, not the API.
"""

from __future__ import annotations

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


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs``, ``/redoc``, their assets, the OAuth2 redirect, a favicon and ``/``.

    ``app`` must be created with ``docs_url=None, redoc_url=None`` (FastAPI's CDN pages).
    """
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title

    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{STATIC_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_URL}/swagger-ui.css",
            swagger_favicon_url=FAVICON_URL,
            oauth2_redirect_url=OAUTH2_REDIRECT_URL,
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
        own_css = f'<link type="text/css" rel="stylesheet" href="{STATIC_URL}/docs.css">'
        html = bytes(page.body).decode("utf-8").replace("</head>", f"{own_css}\n</head>", 1)
        return HTMLResponse(html)

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{STATIC_URL}/redoc.standalone.js",
            redoc_favicon_url=FAVICON_URL,
            with_google_fonts=False,
        )

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
