"""``filekv.client``: program filekv from Python, synchronously or with asyncio.

::

    from filekv.client import Client

    with Client("http://127.0.0.1:8000") as kv:
        kv.login("alice", "alice-secret-1")
        rev = kv.put("greeting", "hello")
        with kv.transaction():            # commit on normal exit, rollback on an exception
            kv.put("greeting", "hi", expect=rev)

``AsyncClient`` has the same methods as coroutines (``keys``, ``find`` and ``watch`` are async
iterators, ``transaction`` and ``export`` async context managers). Errors are ``FilekvError``
and its subclasses (the tree is drawn in ``_errors.py``). The client imports nothing of the
server: only httpx.
"""

from __future__ import annotations

from filekv.client._async_client import AsyncClient
from filekv.client._client import Client
from filekv.client._errors import (
    Conflict,
    FilekvError,
    Forbidden,
    Gone,
    InvalidRequest,
    Locked,
    NotFound,
    PreconditionFailed,
    ServerError,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from filekv.client._models import Entry
from filekv.client._protocol import DEFAULT_URL
from filekv.client._watch import AsyncWatch, Change, Watch

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "AsyncWatch",
    "Change",
    "Client",
    "Conflict",
    "Entry",
    "FilekvError",
    "Forbidden",
    "Gone",
    "InvalidRequest",
    "Locked",
    "NotFound",
    "PreconditionFailed",
    "ServerError",
    "TooLarge",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "Watch",
]
