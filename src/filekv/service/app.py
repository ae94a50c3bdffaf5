"""``create_app(settings)``: the FastAPI application, with the store opened in its lifespan.

Nothing is opened at import time. The lifespan opens the engine ``Store`` (one process per data
directory: a second one fails at once with ``StoreLocked``), the ``AuthService`` and the
``TransactionManager`` with its lease reaper, and puts them on ``app.state``. On shutdown
(including SIGTERM, which uvicorn turns into a graceful shutdown) an open transaction is rolled
back and the store is closed: flushed, fsynced, its lock released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from argon2 import PasswordHasher
from fastapi import FastAPI
from starlette.requests import ClientDisconnect

import filekv
from filekv.engine import Store
from filekv.service.auth import PASSWORD_HASHER, AuthService
from filekv.service.backup import Backups
from filekv.service.console import install_console
from filekv.service.docs import install_docs
from filekv.service.errors import install_error_handlers
from filekv.service.export import ExportSlots
from filekv.service.hot_routes import HotRoutes
from filekv.service.logs import AccessLog
from filekv.service.metrics import Metrics, RouteTemplates
from filekv.service.middleware import RequestMiddleware
from filekv.service.protocol import MAX_HEADER_BYTES, client_disconnected
from filekv.service.routes import auth, backup, batch, export, health, keys, transactions, watch
from filekv.service.routes import metrics as metrics_routes
from filekv.service.schemas import error
from filekv.service.stalls import SendStalls
from filekv.service.transactions import TransactionManager
from filekv.service.watch import WatchHub
from filekv.settings import Settings, load_settings

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
A crash-safe key-value store in its own files. Keys go in the path (any UTF-8, `/` allowed);
values are strings. One client at a time may hold the store's transaction: log in
(`POST /auth/token`, or the Authorize button), `POST /transactions`, write, then commit.
"""


def create_app(settings: Settings, *, password_hasher: PasswordHasher | None = None) -> FastAPI:
    """Build the application for ``settings``; resources open when it starts serving.

    ``password_hasher``: the argon2 hasher of passwords (default: ``auth.PASSWORD_HASHER``, what
    ``filekv serve`` uses). The in-process tests pass a cheap argon2id one: the real one costs
    ~80 ms of CPU per hash or check, and they log in hundreds of times.
    """
    # Request ids always; the access log at the levels that show it (as uvicorn's did).
    access_log = (
        AccessLog(log_format=settings.log_format, log_keys=settings.log_keys)
        if settings.log_level in ("info", "debug")
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # In a worker thread: recovering a big store can take a while, and a SIGTERM meanwhile
        # must stop it (uvicorn sets should_exit, which recovery asks between records).
        store = await asyncio.to_thread(
            Store.open,
            settings.data_dir,
            settings.store_options(),
            should_stop=app.state.stop_requested,
        )
        manager = TransactionManager(
            store,
            timeout=settings.transaction_timeout,
            max_seconds=settings.transaction_max_seconds,
        )
        reaper: asyncio.Task[None] | None = None
        hub: WatchHub | None = None
        stalls: SendStalls | None = None
        try:
            app.state.auth = AuthService(
                settings.data_dir,
                token_ttl=settings.token_ttl,
                registration=settings.registration,
                hasher=password_hasher or PASSWORD_HASHER,
            )
            app.state.transactions = manager
            app.state.store = store
            if metrics is not None:
                metrics.watch(store)
            reaper = asyncio.create_task(manager.run_reaper(), name="filekv-lease-reaper")
            # Before the store closes, the watch streams end (uvicorn waits for them to).
            hub = WatchHub(
                store,
                max_watchers=settings.watch_max_watchers,
                queue_events=settings.watch_queue_events,
                heartbeat_seconds=settings.watch_heartbeat_seconds,
                stop_requested=app.state.stop_requested,
            )
            app.state.watch_hub = hub
            hub.start()
            stalls = SendStalls(settings.watch_stall_seconds)
            app.state.send_stalls = stalls
            stalls.start()
            logger.info("serving %s (fsync=%s)", settings.data_dir, settings.fsync)
            yield
        finally:
            if hub is not None:
                await hub.stop()
            if stalls is not None:
                await stalls.stop()
            if reaper is not None:
                reaper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reaper
            app.state.store = None
            manager.close()
            store.close()
            logger.info("store closed: %s", settings.data_dir)
            if access_log is not None:
                access_log.flush()  # the lines of the last requests

    app = FastAPI(
        title="filekv",
        version=filekv.__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from the package (service/docs.py), not a CDN
        redoc_url=None,
        # FastAPI's own OpenTelemetry hooks (0.16x) look up the global providers, environment
        # variables included, on every request: 6 % of a PUT's CPU in process. filekv reports
        # through its own /metrics and access log, so they are off. Older FastAPI keeps the
        # unknown keyword in ``app.extra``, harmlessly.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # Starlette answers "/auth/token/" with a 307 to "/auth/token" on whatever host the Host
        # header names, and a 307 makes the client re-send the body (a password) there. A path
        # is a route or nothing: a JSON 404. Keys ending in "/" are unaffected: "/keys/dir/" is
        # the route "/keys/{key}" with the key "dir/".
        redirect_slashes=False,
        # Every route can get these, before any route runs: 408, 414 and 431 from the read
        # limits of the HTTP protocol (service/protocol.py), 400 from the HTTP parser (or a
        # malformed header), 405 for a method the path does not have.
        responses={
            400: error("Malformed request (request line, headers or framing)."),
            405: error("Method not allowed on this path; the Allow header lists those it has."),
            408: error("The request did not arrive in time (header_timeout, body_timeout)."),
            414: error("Request target (path and query) too long."),
            431: error(f"Request headers over {MAX_HEADER_BYTES} bytes in total."),
        },
    )
    app.state.settings = settings
    # Per application, never prometheus-client's global registry (tests build many apps).
    metrics = Metrics(app.state) if settings.metrics else None
    app.state.metrics = metrics
    app.state.backups = Backups(
        time_limit=settings.backup_time_limit,
        stopping=lambda: bool(app.state.stop_requested and app.state.stop_requested()),
    )
    app.state.exports = ExportSlots(settings.export_max_concurrent)
    # Set by ``filekv serve`` to "has the server been told to stop?", for a long recovery.
    app.state.stop_requested = None
    app.state.store = None
    install_error_handlers(app)
    app.add_exception_handler(ClientDisconnect, client_disconnected)
    # First, so they match before the APIRoutes that document them.
    hot = [*keys.fast_routes(), *batch.fast_routes()]
    app.router.routes.extend(hot)
    app.include_router(keys.router)
    app.include_router(batch.router)
    app.include_router(transactions.router)
    app.include_router(backup.router)
    app.include_router(auth.router)
    app.include_router(health.router)
    app.include_router(export.router)
    app.include_router(watch.router)
    install_docs(app)
    install_console(app)
    if metrics is not None:
        app.include_router(metrics_routes.router)
    # Added first, so it runs inside RequestMiddleware (request ids, metrics, the log).
    app.add_middleware(HotRoutes, routes=hot, exception_handlers=lambda: app.exception_handlers)
    app.add_middleware(
        RequestMiddleware,
        templates=RouteTemplates(app.router),
        access_log=access_log,
        metrics=metrics,
    )
    _document_request_ids(app)
    return app


def _document_request_ids(app: FastAPI) -> None:
    """Add ``request_id`` to the schema of FastAPI's own 422 body, as to ``ErrorBody``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            body = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
            if body is not None:
                body.setdefault("properties", {})["request_id"] = {
                    "type": "string",
                    "title": "Request Id",
                    "description": "The request's X-Request-ID.",
                }
            return schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory filekv.service.app:app_from_env`` (``FILEKV_*`` env)."""
    return create_app(load_settings())
