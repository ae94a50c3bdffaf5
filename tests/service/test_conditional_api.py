"""``If-Match`` / ``If-None-Match``: what ``wire.parse_expect`` reads, the decision made atomic
with the store's compare-and-set, and the holder's transaction.

The wire format is end to end in ``tests/e2e/test_e2e_conditional.py``; here, what a real server
cannot show deterministically: a write landing between the read of the key's revision and the
write the conditions allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.requests import Request

from filekv.engine import Entry, Store
from filekv.service.errors import BadRequest, PreconditionFailed
from filekv.service.wire import ANY, MAX_DIGITS, Conditions, parse_expect

Headers = dict[str, str]


def parsed(*headers: tuple[str, str]) -> int | Conditions | None:
    scope = {
        "type": "http",
        "headers": [(name.lower().encode(), value.encode("latin-1")) for name, value in headers],
    }
    return parse_expect(Request(scope))


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((), None),
        ((("If-Match", '"5"'),), 5),
        ((("If-Match", '"005"'),), 5),  # leading zeros count, as in every number read
        ((("If-Match", f'"{"0" * 5000}7"'),), 7),  # without int() of 5000 digits
        ((("If-Match", '"5", W/"6"'),), 5),  # the weak tag never matches: one candidate left
        ((("If-Match", '"5", "05"'),), 5),
        ((("If-Match", ' ,, "5" ,\t'),), 5),  # empty list elements are skipped (§5.6.1)
        ((("If-None-Match", "*"),), 0),
        ((("If-None-Match", " \t* "),), 0),
    ],
)
def test_conditional_parse_needs_no_read(
    headers: tuple[tuple[str, str], ...], expected: int | None
) -> None:
    assert parsed(*headers) == expected


@pytest.mark.parametrize(
    ("headers", "if_match", "if_none_match"),
    [
        ((("If-Match", "*"),), ANY, None),
        ((("If-Match", '"1", "2"'),), {1, 2}, None),
        ((("If-Match", '"1"'), ("If-Match", '"2"')), {1, 2}, None),  # two lines, one list
        ((("If-None-Match", '"4"'),), None, {4}),
        ((("If-None-Match", 'W/"4", "5"'),), None, {4, 5}),
        ((("If-None-Match", '"a,b"'),), None, set()),  # a comma inside a tag; names no revision
        ((("If-None-Match", '"*"'),), None, set()),  # a tag, not the wildcard
        ((("If-None-Match", '"\xb2"'),), None, set()),  # obs-text is allowed in a tag
        ((("If-None-Match", f'"{"9" * (MAX_DIGITS + 1)}"'),), None, set()),
        ((("If-Match", '"3"'), ("If-None-Match", "*")), {3}, ANY),
        ((("If-Match", "*"), ("If-None-Match", '"3"')), ANY, {3}),
    ],
)
def test_conditional_parse_needs_the_current_revision(
    headers: tuple[tuple[str, str], ...], if_match: Any, if_none_match: Any
) -> None:
    conditions = parsed(*headers)
    assert isinstance(conditions, Conditions)
    for got, want in ((conditions.if_match, if_match), (conditions.if_none_match, if_none_match)):
        if want is ANY or want is None:
            assert got is want
        else:
            assert got == want


@pytest.mark.parametrize(
    "tag",
    ['"0"', '"abc"', '"-1"', '"\xb2"', f'"{"9" * 5000}"', 'W/"5"', 'W/"5", "x"'],
)
def test_conditional_if_match_no_revision_can_match_is_412_unread(tag: str) -> None:
    with pytest.raises(PreconditionFailed):
        parsed(("If-Match", tag))


@pytest.mark.parametrize("name", ["If-Match", "If-None-Match"])
@pytest.mark.parametrize(
    "value", ["", " , ", "5", '"5', '5"', '""5""', '"5""6"', "W/*", 'w/"5"', 'W/ "5"', '*, "5"']
)
def test_conditional_malformed_header_is_400_naming_the_form(name: str, value: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parsed((name, value))
    assert str(caught.value).startswith(f"{name} must be * or a comma-separated list")


def test_conditional_two_star_lines_are_not_a_star() -> None:
    with pytest.raises(BadRequest):
        parsed(("If-None-Match", "*"), ("If-None-Match", "*"))


# -- the decision and the write are one --------------------------------------------------------


@pytest.fixture
def store(app: FastAPI, client: TestClient) -> Store:
    found: Store = app.state.store
    return found


@pytest.fixture
def interleave(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """``interleave(action)``: the next read of a key's entry runs ``action`` right after it,
    as a writer on another connection could between the conditions' read and their write."""

    def arm(action: Callable[[], Any]) -> None:
        real = store.entry

        def entry(key: str) -> Entry | None:
            found = real(key)
            monkeypatch.setattr(store, "entry", real)  # once
            action()
            return found

        monkeypatch.setattr(store, "entry", entry)

    yield arm


def test_conditional_if_none_match_etag_refuses_a_key_changed_meanwhile(
    client: TestClient, store: Store, interleave: Callable[..., None]
) -> None:
    revision = client.put("/keys/k", json={"value": "one"}).json()["revision"]
    interleave(lambda: store.put("k", b"theirs"))
    answer = client.put("/keys/k", json={"value": "mine"}, headers={"If-None-Match": '"999"'})
    assert answer.status_code == 412, answer.text
    assert answer.json()["detail"] == (
        f"revision mismatch: expected {revision}, current {revision + 1}"
    )
    assert store.get("k") == b"theirs"


def test_conditional_if_none_match_etag_refuses_a_key_created_meanwhile(
    client: TestClient, store: Store, interleave: Callable[..., None]
) -> None:
    interleave(lambda: store.put("k", b"theirs"))
    answer = client.put("/keys/k", json={"value": "mine"}, headers={"If-None-Match": '"1"'})
    assert answer.status_code == 412, answer.text
    assert answer.json()["detail"].startswith("revision mismatch: expected 0, current ")
    assert store.get("k") == b"theirs"


def test_conditional_if_match_star_refuses_a_key_deleted_meanwhile(
    client: TestClient, store: Store, interleave: Callable[..., None]
) -> None:
    client.put("/keys/k", json={"value": "one"})
    interleave(lambda: store.delete("k"))
    answer = client.put("/keys/k", json={"value": "mine"}, headers={"If-Match": "*"})
    assert answer.status_code == 412, answer.text
    assert "k" not in store  # not created again


@pytest.mark.parametrize(
    "headers", [{"If-Match": "*"}, {"If-None-Match": '"999"'}, {"If-Match": '"{rev}", "999"'}]
)
def test_conditional_delete_refuses_a_key_changed_meanwhile(
    client: TestClient, store: Store, interleave: Callable[..., None], headers: Headers
) -> None:
    revision = client.put("/keys/k", json={"value": "one"}).json()["revision"]
    interleave(lambda: store.put("k", b"theirs"))
    sent = {name: value.format(rev=revision) for name, value in headers.items()}
    answer = client.delete("/keys/k", headers=sent)
    assert answer.status_code == 412, answer.text
    assert store.get("k") == b"theirs"


# -- in the holder's transaction: its staged view ------------------------------------------


@pytest.fixture
def alice(client: TestClient, login: Callable[..., Headers]) -> Headers:
    headers = login(client, "alice")
    assert client.post("/transactions", headers=headers).status_code == 201
    return headers


def put(client: TestClient, key: str, headers: Headers, **conditions: str) -> int:
    answer = client.put(f"/keys/{key}", json={"value": "v"}, headers={**headers, **conditions})
    return answer.status_code


def test_conditional_in_a_transaction_a_staged_key_exists_without_an_etag(
    client: TestClient, alice: Headers
) -> None:
    assert put(client, "s", alice) == 201  # staged: no revision until commit
    assert put(client, "s", alice, **{"If-Match": "*"}) == 200
    assert put(client, "s", alice, **{"If-None-Match": '"1", W/"2"'}) == 200  # names no ETag
    assert put(client, "s", alice, **{"If-None-Match": "*"}) == 412
    answer = client.put("/keys/s", json={"value": "v"}, headers={**alice, "If-Match": '"1", "2"'})
    assert answer.status_code == 412
    assert "written in this transaction" in answer.json()["detail"]
    assert client.delete("/keys/s", headers={**alice, "If-Match": "*"}).status_code == 204
    assert put(client, "s", alice, **{"If-Match": "*"}) == 412  # a staged delete: absent
    assert put(client, "s", alice, **{"If-None-Match": '"1"'}) == 201


def test_conditional_in_a_transaction_a_committed_key_keeps_its_etag(
    client: TestClient, login: Callable[..., Headers]
) -> None:
    revision = client.put("/keys/c", json={"value": "v"}).json()["revision"]
    alice = login(client, "alice")
    client.post("/transactions", headers=alice)
    assert put(client, "c", alice, **{"If-None-Match": f'W/"{revision}"'}) == 412
    assert put(client, "c", alice, **{"If-Match": f'"999", "{revision}"'}) == 200
    assert client.post("/transactions/commit", headers=alice).status_code == 200
    assert client.get("/keys/c").json()["revision"] > revision
