"""``/keys``: every status of issue 3's table, limits, preconditions and paging."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient


def url(key: str) -> str:
    return "/keys/" + quote(key, safe="/")


@pytest.mark.parametrize(
    "key",
    ["a", "a/b/c", "with space", "ünïcødé/日本語", "emoji-🙂", "question?mark#hash", "x" * 1024],
)  # "%41"-style keys: TestClient decodes paths twice, so tests/e2e checks those on a real server
def test_keys_put_then_get_round_trips_any_utf8_key(client: TestClient, key: str) -> None:
    created = client.put(url(key), json={"value": "v"})
    assert created.status_code == 201
    assert created.json() == {
        "key": key,
        "value": "v",
        "revision": created.json()["revision"],
        "expires_in": None,
        "staged": False,
    }
    answer = client.get(url(key))
    assert answer.status_code == 200
    assert answer.json()["key"] == key
    assert answer.json()["value"] == "v"


def test_keys_put_returns_201_then_200_with_growing_revisions(client: TestClient) -> None:
    first = client.put("/keys/k", json={"value": "one"})
    second = client.put("/keys/k", json={"value": "two"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["revision"] > first.json()["revision"]
    assert second.json() == {
        "key": "k",
        "value": "two",
        "revision": second.json()["revision"],
        "expires_in": None,
        "staged": False,
    }


def test_keys_get_returns_value_revision_and_quoted_etag(client: TestClient) -> None:
    revision = client.put("/keys/k", json={"value": "v"}).json()["revision"]
    answer = client.get("/keys/k")
    assert answer.json() == {"key": "k", "value": "v", "revision": revision, "expires_in": None}
    assert answer.headers["etag"] == f'"{revision}"'


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_keys_missing_key_is_404_with_detail(client: TestClient, method: str) -> None:
    answer = client.request(method, "/keys/nope")
    assert answer.status_code == 404
    assert isinstance(answer.json()["detail"], str)


def test_keys_delete_is_204_then_gone(client: TestClient) -> None:
    client.put("/keys/k", json={"value": "v"})
    deleted = client.delete("/keys/k")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert client.get("/keys/k").status_code == 404


@pytest.mark.parametrize("value", ["", " ", "\u0000", "line\nbreak", "日本語", "🙂" * 3])
def test_keys_any_string_is_a_value_even_empty(client: TestClient, value: str) -> None:
    assert client.put("/keys/k", json={"value": value}).status_code == 201
    assert client.get("/keys/k").json()["value"] == value


@pytest.mark.parametrize(
    ("key_bytes", "status"), [(1023, 201), (1024, 201), (1025, 422), (4000, 422)]
)
def test_keys_key_limit_is_inclusive_in_bytes(
    client: TestClient, key_bytes: int, status: int
) -> None:
    assert client.put(url("k" * key_bytes), json={"value": "v"}).status_code == status


def test_keys_key_limit_counts_utf8_bytes(client: TestClient) -> None:
    # "é" is two bytes: 512 of them are 1024 bytes, 513 are 1026.
    assert client.put(url("é" * 512), json={"value": "v"}).status_code == 201
    assert client.put(url("é" * 513), json={"value": "v"}).status_code == 422


@pytest.mark.parametrize(
    ("value", "status"),
    [("x" * 1000, 201), ("x" * 1024, 201), ("x" * 1025, 413), ("é" * 512, 201), ("é" * 513, 413)],
)
def test_keys_value_limit_is_inclusive_in_utf8_bytes(
    make_client: Callable[..., TestClient], value: str, status: int
) -> None:
    client = make_client(max_value_bytes=1024)
    answer = client.put("/keys/k", json={"value": value})
    assert answer.status_code == status
    if status == 413:
        assert isinstance(answer.json()["detail"], str)


def test_keys_value_of_exactly_one_mib_is_accepted(client: TestClient) -> None:
    assert client.put("/keys/big", json={"value": "x" * (1 << 20)}).status_code == 201
    assert client.put("/keys/big", json={"value": "x" * ((1 << 20) + 1)}).status_code == 413
    assert len(client.get("/keys/big").json()["value"]) == 1 << 20


def test_keys_huge_body_is_refused_by_its_length(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_value_bytes=1024)
    answer = client.put(
        "/keys/k", content=b"x" * 100_000, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 413


def test_keys_huge_chunked_body_is_refused(make_client: Callable[..., TestClient]) -> None:
    client = make_client(max_value_bytes=1024)

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b"x" * 1000

    answer = client.put("/keys/k", content=chunks(), headers={"content-type": "application/json"})
    assert answer.status_code == 413


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'"just a string"',
        b"[]",
        b"{}",
        b'{"value": 1}',
        b'{"value": null}',
        b'{"value": "v", "extra": 1}',
    ],
)
def test_keys_put_with_bad_body_is_422_in_list_form(client: TestClient, body: bytes) -> None:
    answer = client.put("/keys/k", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert isinstance(answer.json()["detail"], list)
    assert client.get("/keys/k").status_code == 404


def test_keys_empty_key_is_422(client: TestClient) -> None:
    assert client.put("/keys/", json={"value": "v"}).status_code == 422


# -- preconditions ------------------------------------------------------------------------------


def test_keys_if_match_current_revision_replaces(client: TestClient) -> None:
    revision = client.put("/keys/k", json={"value": "one"}).json()["revision"]
    answer = client.put("/keys/k", json={"value": "two"}, headers={"If-Match": f'"{revision}"'})
    assert answer.status_code == 200
    assert client.get("/keys/k").json()["value"] == "two"


@pytest.mark.parametrize("tag", ['"999"', '"0"', '"-1"', 'W/"1"'])
def test_keys_if_match_other_revision_is_412_and_changes_nothing(
    client: TestClient, tag: str
) -> None:
    client.put("/keys/k", json={"value": "one"})
    answer = client.put("/keys/k", json={"value": "two"}, headers={"If-Match": tag})
    assert answer.status_code == 412
    assert isinstance(answer.json()["detail"], str)
    assert client.get("/keys/k").json()["value"] == "one"


@pytest.mark.parametrize("name", ["If-Match", "If-None-Match"])
@pytest.mark.parametrize("tag", ["garbage", "1", '"1', "W/*"])
def test_keys_malformed_condition_is_400_and_changes_nothing(
    client: TestClient, name: str, tag: str
) -> None:
    # Not an entity tag nor *: refused, where it used to be ignored (If-None-Match) or a 412.
    client.put("/keys/k", json={"value": "one"})
    answer = client.put("/keys/k", json={"value": "two"}, headers={name: tag})
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith(f"{name} must be * or")
    assert client.get("/keys/k").json()["value"] == "one"


def test_keys_if_match_on_missing_key_is_412(client: TestClient) -> None:
    assert (
        client.put("/keys/k", json={"value": "v"}, headers={"If-Match": '"1"'}).status_code == 412
    )
    assert client.get("/keys/k").status_code == 404


def test_keys_if_none_match_star_creates_only(client: TestClient) -> None:
    first = client.put("/keys/k", json={"value": "one"}, headers={"If-None-Match": "*"})
    second = client.put("/keys/k", json={"value": "two"}, headers={"If-None-Match": "*"})
    assert (first.status_code, second.status_code) == (201, 412)
    assert client.get("/keys/k").json()["value"] == "one"


def test_keys_etag_round_trips_into_if_match(client: TestClient) -> None:
    client.put("/keys/k", json={"value": "one"})
    etag = client.get("/keys/k").headers["etag"]
    assert (
        client.put("/keys/k", json={"value": "two"}, headers={"If-Match": etag}).status_code == 200
    )
    assert (
        client.put("/keys/k", json={"value": "three"}, headers={"If-Match": etag}).status_code
        == 412
    )


def test_keys_delete_with_if_match(client: TestClient) -> None:
    revision = client.put("/keys/k", json={"value": "v"}).json()["revision"]
    assert client.delete("/keys/k", headers={"If-Match": f'"{revision + 1}"'}).status_code == 412
    assert client.get("/keys/k").status_code == 200
    assert client.delete("/keys/k", headers={"If-Match": f'"{revision}"'}).status_code == 204
    assert client.get("/keys/k").status_code == 404


# -- find and paging ----------------------------------------------------------------------------


def put_all(client: TestClient, items: dict[str, str]) -> None:
    for key, value in items.items():
        assert client.put(url(key), json={"value": value}).status_code == 201


ITEMS = {"a/1": "red", "a/2": "blue", "a/3": "red", "b/1": "red", "b/2": "green", "c": "red"}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, sorted(ITEMS)),
        ({"value": "red"}, ["a/1", "a/3", "b/1", "c"]),
        ({"prefix": "a/"}, ["a/1", "a/2", "a/3"]),
        ({"value": "red", "prefix": "a/"}, ["a/1", "a/3"]),
        ({"value": "red", "after": "a/3"}, ["b/1", "c"]),
        ({"after": "b/2"}, ["c"]),
        ({"value": "purple"}, []),
        ({"prefix": "zzz"}, []),
        ({"value": ""}, []),
    ],
)
def test_keys_find_filters_by_value_prefix_and_after(
    client: TestClient, query: dict[str, str], expected: list[str]
) -> None:
    put_all(client, ITEMS)
    answer = client.get("/keys", params=query)
    assert answer.status_code == 200
    assert answer.json() == {"keys": expected, "next": None}


def test_keys_find_empty_value_matches_empty_strings(client: TestClient) -> None:
    put_all(client, {"e1": "", "e2": "x", "e3": ""})
    assert client.get("/keys", params={"value": ""}).json()["keys"] == ["e1", "e3"]


@pytest.mark.parametrize("limit", ["0", "-1", "10001", "abc"])
def test_keys_find_bad_limit_is_422_list_form(client: TestClient, limit: str) -> None:
    answer = client.get("/keys", params={"limit": limit})
    assert answer.status_code == 422
    assert isinstance(answer.json()["detail"], list)


@pytest.mark.parametrize("limit", [1, 10000])
def test_keys_find_limit_bounds_are_accepted(client: TestClient, limit: int) -> None:
    assert client.get("/keys", params={"limit": limit}).status_code == 200


@pytest.mark.parametrize(("count", "limit"), [(10, 3), (9, 3), (10, 10), (10, 11), (1, 1), (0, 5)])
def test_keys_paging_visits_every_key_once_and_short_page_ends(
    client: TestClient, count: int, limit: int
) -> None:
    keys = [f"k{i:03d}" for i in range(count)]
    put_all(client, dict.fromkeys(keys, "same"))
    put_all(client, {"other": "different"})
    seen: list[str] = []
    params: dict[str, str | int] = {"value": "same", "limit": limit}
    for _ in range(count + 2):
        page = client.get("/keys", params=params).json()
        seen += page["keys"]
        assert len(page["keys"]) <= limit
        if len(page["keys"]) < limit:
            assert page["next"] is None
        if page["next"] is None:
            break
        assert page["next"] == page["keys"][-1]
        params["after"] = page["next"]
    assert seen == keys


def test_keys_default_limit_is_1000(make_client: Callable[..., TestClient]) -> None:
    client = make_client(fsync="never")  # 1001 writes; durability is not the point here
    put_all(client, {f"k{i:04d}": "v" for i in range(1001)})
    page = client.get("/keys").json()
    assert len(page["keys"]) == 1000
    assert page["next"] == "k0999"
    assert client.get("/keys", params={"after": page["next"]}).json() == {
        "keys": ["k1000"],
        "next": None,
    }


# -- keys with any character, and their percent-encoding -----------------------------------------


@pytest.mark.parametrize(
    "key", ["line\nfeed", "trailing\n", "\n", "cr\r\nlf", "a\n/b\n/c", "tab\tand\x0bvt"]
)
def test_keys_with_newlines_work_on_every_route(client: TestClient, key: str) -> None:
    path = "/keys/" + quote(key, safe="")
    assert client.put(path, json={"value": "v"}).json()["key"] == key
    assert client.get(path).json() == {"key": key, "value": "v", "revision": 1, "expires_in": None}
    assert client.get("/keys").json()["keys"] == [key]
    assert client.delete(path).status_code == 204
    assert client.get("/keys").json()["keys"] == []


@pytest.mark.parametrize(
    ("raw_key", "problem"),
    [
        ("bad%FFkey", "not valid UTF-8"),  # a byte that never occurs in UTF-8
        ("cut%E0%A4", "not valid UTF-8"),  # a three-byte sequence cut after two
        ("%C3", "not valid UTF-8"),
        ("over%C0%AFlong", "not valid UTF-8"),  # overlong '/'
        ("bad%ZZ", "two hex digits"),
        ("end%", "two hex digits"),
        ("half%4", "two hex digits"),
        ("a/b%G1/c", "two hex digits"),
    ],
)
@pytest.mark.parametrize("method", ["PUT", "GET", "DELETE"])
def test_keys_broken_percent_encoding_is_422_and_stores_nothing(
    client: TestClient, raw_key: str, problem: str, method: str
) -> None:
    answer = client.request(method, "/keys/" + raw_key, json={"value": "v"})
    assert answer.status_code == 422
    (item,) = answer.json()["detail"]
    assert item["loc"] == ["path", "key"] and problem in item["msg"]
    assert client.get("/keys").json()["keys"] == []


@pytest.mark.parametrize(
    ("raw_key", "key"),
    [("%25ZZ", "%ZZ"), ("100%25", "100%"), ("%C3%BC%2F%E6%97%A5", "ü/日"), ("%F0%9F%99%82", "🙂")],
)
def test_keys_valid_percent_encoding_is_decoded(client: TestClient, raw_key: str, key: str) -> None:
    assert client.put("/keys/" + raw_key, json={"value": "v"}).json()["key"] == key
    assert client.get("/keys/" + raw_key).json()["key"] == key
    assert client.get("/keys").json()["keys"] == [key]


def test_keys_openapi_path_is_plain_key(client: TestClient) -> None:
    assert "/keys/{key}" in client.get("/openapi.json").json()["paths"]


# -- the body's content type --------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
        "application/vnd.filekv+json; charset=UTF-8",
    ],
)
def test_keys_put_accepts_json_or_no_content_type(
    client: TestClient, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    answer = client.put("/keys/k", content=b'{"value": "v"}', headers=headers)
    assert answer.status_code == 201, answer.text
    assert client.get("/keys/k").json()["value"] == "v"


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "application/jsonx",
        "json",
    ],
)
def test_keys_put_with_other_content_type_is_415_and_stores_nothing(
    client: TestClient, content_type: str
) -> None:
    answer = client.put(
        "/keys/k", content=b'{"value": "v"}', headers={"Content-Type": content_type}
    )
    assert answer.status_code == 415
    assert "application/json" in answer.json()["detail"]
    assert client.get("/keys/k").status_code == 404


def test_keys_put_content_type_is_checked_after_the_lock(
    client: TestClient, login: Callable[..., dict[str, str]]
) -> None:
    alice = login(client, "alice")
    client.post("/transactions", headers=alice)
    answer = client.put("/keys/k", content=b"x", headers={"Content-Type": "text/plain"})
    assert answer.status_code == 423


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/keys/k", {"GET", "HEAD", "PUT", "DELETE"}),
        ("PATCH", "/keys/a/b", {"GET", "HEAD", "PUT", "DELETE"}),
        ("DELETE", "/keys", {"GET", "HEAD"}),
        ("PATCH", "/transactions", {"GET", "POST", "DELETE"}),  # FastAPI routes take no HEAD
    ],
)
def test_keys_wrong_method_is_405_with_every_allowed_method(
    client: TestClient, method: str, path: str, allowed: set[str]
) -> None:
    # Issue 17, finding 11: declared app-wide; Allow lists every route's methods on the path,
    # not only those of the first route the router tried.
    answer = client.request(method, path)
    assert answer.status_code == 405
    assert set(answer.headers["allow"].split(", ")) == allowed
    assert method in answer.json()["detail"]


def test_keys_delete_says_in_a_header_when_it_was_staged(client: TestClient, login: Any) -> None:
    alice = login(client, "alice")
    client.put("/keys/a", json={"value": "1"})
    client.put("/keys/b", json={"value": "2"})
    for headers in (None, alice):  # applied at once: no header, anonymous or logged in
        client.put("/keys/gone", json={"value": "x"})
        applied = client.delete("/keys/gone", headers=headers)
        assert applied.status_code == 204
        assert "x-filekv-staged" not in applied.headers
    assert client.post("/transactions", headers=alice).status_code == 201
    try:
        staged = client.delete("/keys/a", headers=alice)
        assert (staged.status_code, staged.content) == (204, b"")
        assert staged.headers["x-filekv-staged"] == "true"
        assert client.get("/keys/a").status_code == 200  # committed data: still there
    finally:
        client.post("/transactions/rollback", headers=alice)


def test_keys_delete_declares_its_staged_header(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    answer = spec["paths"]["/keys/{key}"]["delete"]["responses"]["204"]
    assert set(answer["headers"]) == {"X-Filekv-Staged"}
