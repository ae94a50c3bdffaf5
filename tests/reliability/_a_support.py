"""Shared pieces of the RELIABILITY-A tests: the soak switch, logging in and reading keys back.

The server subprocess these tests run is ``serverproc.Server``.
"""

from __future__ import annotations

import os
from typing import Final

import httpx

SOAK: Final = os.environ.get("FILEKV_SOAK") == "1"
PASSWORD: Final = "correct horse battery"


def login(client: httpx.Client, username: str) -> dict[str, str]:
    """Register ``username`` if new, log in: the Authorization header of a new session."""
    client.post("/auth/register", json={"username": username, "password": PASSWORD})
    answer = client.post("/auth/token", data={"username": username, "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def read_all(client: httpx.Client, prefix: str) -> dict[str, str]:
    """Every committed key under ``prefix`` with its value, following the paging cursor."""
    keys: list[str] = []
    after: str | None = None
    for _ in range(100_000):  # bounded: each page advances the cursor
        params: dict[str, str | int] = {"prefix": prefix, "limit": 1000}
        if after is not None:
            params["after"] = after
        page = client.get("/keys", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        keys.extend(body["keys"])
        after = body["next"]
        if after is None:
            break
    values: dict[str, str] = {}
    for key in keys:
        answer = client.get(f"/keys/{quote_key(key)}")
        assert answer.status_code == 200, (key, answer.status_code, answer.text)
        values[key] = answer.json()["value"]
    return values


def quote_key(key: str) -> str:
    from urllib.parse import quote

    return quote(key, safe="/")
