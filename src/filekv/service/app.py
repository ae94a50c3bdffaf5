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

from fastapi import FastAPI

import filekv
from filekv.engine import Store
from filekv.service.auth import AuthService
from filekv.service.errors import install_error_handlers
from filekv.service.middleware import MAX_HEADER_BYTES, HeaderSizeLimit
from filekv.service.routes import auth, health, keys, transactions
from filekv.service.schemas import error
from filekv.service.transactions import TransactionManager
from filekv.settings import Settings, load_settings

logger = logging.getLogger(__name__)

_DESCRIPTION = """\
A crash-safe key-value store in its own files. Keys go in the path (any UTF-8, `/` allowed);
values are strings. One client at a time may hold the store's transaction: log in
(`POST /auth/token`, or the Authorize button), `POST /transactions`, write, then commit.
"""


def create_app(settings: Settings) -> FastAPI:
    """Build the application for ``settings``; resources open when it starts serving."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = Store.open(
            settings.data_dir,
            fsync=settings.fsync,
            fsync_interval_ms=settings.fsync_interval_ms,
            max_key_bytes=settings.max_key_bytes,
            max_value_bytes=settings.max_value_bytes,
            compact_min_bytes=settings.compact_min_bytes,
            compact_dead_ratio=settings.compact_dead_ratio,
        )
        manager = TransactionManager(store, timeout=settings.transaction_timeout)
        reaper: asyncio.Task[None] | None = None
        try:
            app.state.auth = AuthService(
                settings.data_dir,
                token_ttl=settings.token_ttl,
                registration=settings.registration,
            )
            app.state.transactions = manager
            app.state.store = store
            reaper = asyncio.create_task(manager.run_reaper(), name="filekv-lease-reaper")
            logger.info("serving %s (fsync=%s)", settings.data_dir, settings.fsync)
            yield
        finally:
            if reaper is not None:
                reaper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reaper
            app.state.store = None
            manager.close()
            store.close()
            logger.info("store closed: %s", settings.data_dir)

    app = FastAPI(
        title="filekv",
        version=filekv.__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        # Every route can get it, from HeaderSizeLimit, before any route runs.
        responses={431: error(f"Request headers over {MAX_HEADER_BYTES} bytes in total.")},
    )
    app.state.settings = settings
    app.state.store = None
    install_error_handlers(app)
    app.add_middleware(HeaderSizeLimit)
    app.router.routes.extend(keys.fast_routes())  # first, so they match before the APIRoutes
    app.include_router(keys.router)
    app.include_router(transactions.router)
    app.include_router(auth.router)
    app.include_router(health.router)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory filekv.service.app:app_from_env`` (``FILEKV_*`` env)."""
    return create_app(load_settings())
