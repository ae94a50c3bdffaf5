"""Every client method against a real server, for ``Client`` and ``AsyncClient`` alike."""

from __future__ import annotations

import time
from typing import Any

import pytest
from clientkit import PASSWORD, Connect, unique
from support.server import Server

from filekv.client import DEFAULT_URL, Client, Entry, NotFound, PreconditionFailed, Unauthorized

ODD_KEYS = [
    "users/alice/colour",
    "/leading/and/trailing/",
    "with space",
    "100%",
    "%41%2F",  # must stay literal, not decode to "A/"
    "line\nbreak",
    "tab\tand\r\n",
    "nul\x00byte",
    "ünïcødé/日本語/🔑",
    "?query=1&x=2#fragment",
    "plus+sign",
    "..",
]


def test_client_url_defaults_to_env_then_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FILEKV_URL", raising=False)
    with Client() as kv:
        assert kv.url == DEFAULT_URL == "http://127.0.0.1:8000"
    monkeypatch.setenv("FILEKV_URL", "http://example.invalid:9/")
    with Client() as kv:
        assert kv.url == "http://example.invalid:9"
    with Client("http://other:1") as kv:
        assert kv.url == "http://other:1"


def test_client_register_login_logout(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    name = unique("user")
    assert kv.register(name, PASSWORD) is None
    assert kv.token is None
    token = kv.login(name, PASSWORD)
    assert token == kv.token and token
    assert kv.whoami() == name
    kv.logout()
    assert kv.token is None
    with pytest.raises(Unauthorized):
        kv.whoami()
    other = connect(server.url, token=token)  # the logged-out token is dead everywhere
    with pytest.raises(Unauthorized):
        other.whoami()


def test_client_token_option_is_sent(connect: Connect, server: Server) -> None:
    first = connect(server.url)
    name = unique("user")
    first.register(name, PASSWORD)
    second = connect(server.url, token=first.login(name, PASSWORD))
    assert second.whoami() == name


def test_client_put_get_entry_delete(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    key = unique("k")
    first = kv.put(key, "hello")
    assert isinstance(first, int)
    assert kv.get(key) == "hello"
    assert kv.entry(key) == Entry(key=key, value="hello", revision=first)
    second = kv.put(key, "hi", expect=first)
    assert isinstance(second, int) and second > first
    with pytest.raises(PreconditionFailed) as failed:
        kv.put(key, "hey", expect=first)
    assert failed.value.status == 412 and "mismatch" in failed.value.detail
    with pytest.raises(PreconditionFailed):
        kv.put(key, "hey", expect=0)
    assert kv.get(key) == "hi"
    with pytest.raises(PreconditionFailed):
        kv.delete(key, expect=first)
    assert kv.delete(key, expect=second) is False  # applied at once, not staged
    with pytest.raises(NotFound):
        kv.get(key)
    assert kv.get(key, default=None) is None
    assert kv.get(key, "fallback") == "fallback"
    with pytest.raises(NotFound) as missing:
        kv.delete(key)
    assert missing.value.status == 404 and missing.value.detail == "no such key"
    created = kv.put(key, "", expect=0)  # expect=0: only if absent; "" is a value
    assert kv.entry(key) == Entry(key, "", created)


@pytest.mark.parametrize("key", ODD_KEYS)
def test_client_odd_keys_round_trip(connect: Connect, server: Server, key: str) -> None:
    kv = connect(server.url)
    prefix = unique("odd") + "/"
    full = prefix + key
    value = f"value of {key}"
    revision = kv.put(full, value)
    assert kv.entry(full) == Entry(full, value, revision)
    assert list(kv.keys(prefix)) == [full]
    assert list(kv.keys(prefix=full)) == [full]
    assert list(kv.find(value, prefix=prefix)) == [full]
    kv.delete(full)
    assert kv.get(full, default=None) is None
    assert list(kv.keys(prefix)) == []


def test_client_odd_keys_stay_distinct(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    prefix = unique("distinct") + "/"
    for number, key in enumerate(ODD_KEYS):
        kv.put(prefix + key, str(number))
    assert list(kv.keys(prefix)) == sorted(prefix + key for key in ODD_KEYS)
    for number, key in enumerate(ODD_KEYS):
        assert kv.get(prefix + key) == str(number)


@pytest.fixture(scope="module")
def many_keys(server: Server) -> tuple[str, list[str]]:
    """2,500 keys (one commit of staged writes): three pages at the server's default limit."""
    prefix = unique("many") + "/"
    keys = [f"{prefix}{number:05d}" for number in range(2500)]
    with Client(server.url) as kv:
        kv.register(prefix.rstrip("/"), PASSWORD)
        kv.login(prefix.rstrip("/"), PASSWORD)
        with kv.transaction():
            for number, key in enumerate(keys):
                kv.put(key, "even" if number % 2 == 0 else "odd")
    return prefix, keys


def test_client_keys_follow_every_page(
    connect: Connect, server: Server, many_keys: tuple[str, list[str]]
) -> None:
    prefix, keys = many_keys
    kv = connect(server.url)
    assert list(kv.keys(prefix)) == keys  # default page: 1000 keys
    assert list(kv.keys(prefix, limit=97)) == keys
    assert list(kv.find("even", prefix=prefix)) == keys[::2]
    assert list(kv.find("odd", prefix=prefix, limit=333)) == keys[1::2]
    assert list(kv.find("neither", prefix=prefix)) == []


def test_client_keys_pages_are_requested_one_by_one(
    server: Server, many_keys: tuple[str, list[str]]
) -> None:
    prefix, keys = many_keys
    with Client(server.url) as kv:
        pages: list[Any] = []
        kv._http.event_hooks["response"].append(lambda response: pages.append(response.url))
        iterator = kv.keys(prefix, limit=1000)
        assert [next(iterator) for _ in range(1000)] == keys[:1000]
        assert len(pages) == 1  # lazily: the next page only when needed
        assert list(iterator) == keys[1000:]
        assert len(pages) == 3
        assert "after=" in str(pages[1])


def test_client_put_with_ttl_and_batch_ttl(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    key, other = unique("ttl"), unique("ttl")
    kv.put(key, "v", ttl=60)
    entry = kv.entry(key)
    assert entry.expires_in is not None and 59 < entry.expires_in <= 60
    kv.put(key, "v")  # no ttl: the expiry ends
    assert kv.entry(key).expires_in is None
    kv.batch([("put", other, "v", None, 0.2), {"op": "put", "key": key, "value": "w", "ttl": 60}])
    assert kv.entry(key).expires_in is not None
    deadline = time.monotonic() + 10
    while kv.get(other, default=None) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_client_put_rejects_non_str(server: Server) -> None:
    with Client(server.url) as kv:
        with pytest.raises(TypeError):
            kv.put("k", 1)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            kv.get(b"k")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            kv.put("k", "v", expect=-1)


def test_client_health_and_stats(connect: Connect, server: Server) -> None:
    kv = connect(server.url)
    assert kv.health() == {"status": "ok"}
    stats = kv.stats()
    assert isinstance(stats["keys"], int) and stats["keys"] >= 0
