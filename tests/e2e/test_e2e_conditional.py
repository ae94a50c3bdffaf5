"""A real ``filekv serve`` on conditional writes and content-coded bodies.

``If-Match`` / ``If-None-Match`` on ``PUT`` and ``DELETE /keys/{key}`` follow RFC 9110
§13.1.1-13.1.2 and §13.2.2: ``*`` or a comma-separated list of entity tags, If-Match compared
strongly (a weak tag never matches), If-None-Match weakly (``W/"n"`` matches n), both evaluated
(If-Match first) and both must pass; anything else is 400, not ignored. A body with a
``Content-Encoding`` other than ``identity`` is 415 with ``Accept-Encoding: identity`` (RFC 7694),
never decoded as JSON nor stored. One server for the module: each test writes its own keys.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.server import Server, running

IF_MATCH_FORM = "If-Match must be * or a comma-separated list of entity tags"
IF_NONE_MATCH_FORM = "If-None-Match must be * or a comma-separated list of entity tags"
MALFORMED = ["garbage", "41", '"41', '""""41""""', "W/*", 'w/"1"', '"1" "2"', '*, "1"', ""]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(Path(tmp_path_factory.mktemp("conditional"))) as server:
        yield server


@pytest.fixture
def http(shared: Server) -> Iterator[httpx.Client]:
    with shared.client() as client:
        yield client


@pytest.fixture
def spec(http: httpx.Client) -> dict[str, Any]:
    paths: dict[str, Any] = http.get("/openapi.json").json()["paths"]
    return paths


def slug(text: str) -> str:
    """A plain key part for a header value (which may hold quotes, commas, or nothing)."""
    return text.encode().hex() or "empty"


def write(http: httpx.Client, key: str, value: str = "v", **headers: str) -> httpx.Response:
    return http.put(f"/keys/{key}", json={"value": value}, headers=headers)


def current(http: httpx.Client, key: str) -> tuple[int, str] | None:
    """(revision, value) of ``key``, or None if it is absent."""
    answer = http.get(f"/keys/{key}")
    if answer.status_code == 404:
        return None
    body = answer.json()
    assert answer.headers["etag"] == f'"{body["revision"]}"'
    return body["revision"], body["value"]


def refused(answer: httpx.Response, status: int, spec: dict[str, Any]) -> str:
    """The detail of a refusal with ``status``, a JSON string, which the route declares."""
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and detail
    method = answer.request.method.lower()
    path = "/batch" if answer.request.url.path == "/batch" else "/keys/{key}"
    assert str(status) in spec[path][method]["responses"]
    return detail


# -- If-None-Match ---------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ['"{rev}"', 'W/"{rev}"', '"1", "{rev}"', 'W/"7", W/"{rev}"'])
def test_e2e_conditional_if_none_match_naming_the_current_etag_is_412(
    http: httpx.Client, spec: dict[str, Any], tag: str
) -> None:
    key = f"inm-current/{slug(tag)}"
    revision = write(http, key, "one").json()["revision"]
    header = tag.format(rev=revision)
    detail = refused(write(http, key, "two", **{"If-None-Match": header}), 412, spec)
    assert detail == f"revision mismatch: If-None-Match names the current revision, {revision}"
    assert current(http, key) == (revision, "one")
    refused(http.delete(f"/keys/{key}", headers={"If-None-Match": header}), 412, spec)
    assert current(http, key) == (revision, "one")


@pytest.mark.parametrize("tag", ['"{old}"', 'W/"{old}", "999999"', '"*"', '"abc"'])
def test_e2e_conditional_if_none_match_naming_other_etags_writes(
    http: httpx.Client, tag: str
) -> None:
    # "*" in quotes is an entity tag (its opaque part is *), not the wildcard: it names no
    # revision, so it never matches.
    key = f"inm-other/{slug(tag)}"
    old = write(http, key, "one").json()["revision"]
    revision = write(http, key, "two").json()["revision"]
    header = tag.format(old=old)
    answer = write(http, key, "three", **{"If-None-Match": header})
    assert answer.status_code == 200, answer.text
    assert current(http, key) == (answer.json()["revision"], "three")
    assert answer.json()["revision"] > revision
    assert http.delete(f"/keys/{key}", headers={"If-None-Match": header}).status_code == 204
    assert current(http, key) is None


def test_e2e_conditional_if_none_match_etag_on_absent_key_creates(http: httpx.Client) -> None:
    answer = write(http, "inm-absent", "new", **{"If-None-Match": '"1", W/"2"'})
    assert answer.status_code == 201, answer.text
    assert current(http, "inm-absent") == (answer.json()["revision"], "new")
    gone = http.delete("/keys/never-there", headers={"If-None-Match": '"1"'})
    assert gone.status_code == 404  # the condition holds; there is nothing to delete


def test_e2e_conditional_if_none_match_star_creates_only(
    http: httpx.Client, spec: dict[str, Any]
) -> None:
    assert write(http, "inm-star", "one", **{"If-None-Match": "*"}).status_code == 201
    detail = refused(write(http, "inm-star", "two", **{"If-None-Match": "*"}), 412, spec)
    assert detail.startswith("revision mismatch: expected 0, current ")  # as /batch's expect 0
    refused(http.delete("/keys/inm-star", headers={"If-None-Match": "*"}), 412, spec)
    assert current(http, "inm-star") is not None


@pytest.mark.parametrize("header", MALFORMED)
def test_e2e_conditional_malformed_if_none_match_is_400_not_ignored(
    http: httpx.Client, spec: dict[str, Any], header: str
) -> None:
    key = f"inm-malformed/{slug(header)}"
    revision = write(http, key, "one").json()["revision"]
    answer = write(http, key, "two", **{"If-None-Match": header})
    assert refused(answer, 400, spec).startswith(IF_NONE_MATCH_FORM)
    answer = http.delete(f"/keys/{key}", headers={"If-None-Match": header})
    assert refused(answer, 400, spec).startswith(IF_NONE_MATCH_FORM)
    assert current(http, key) == (revision, "one")


# -- If-Match ---------------------------------------------------------------------------------


def test_e2e_conditional_if_match_star_needs_the_key(
    http: httpx.Client, spec: dict[str, Any]
) -> None:
    detail = refused(write(http, "im-star", "one", **{"If-Match": "*"}), 412, spec)
    assert detail == "revision mismatch: If-Match: * needs the key, current absent"
    assert current(http, "im-star") is None
    refused(http.delete("/keys/im-star", headers={"If-Match": "*"}), 412, spec)
    write(http, "im-star", "one")
    answer = write(http, "im-star", "two", **{"If-Match": "*"})
    assert answer.status_code == 200, answer.text
    assert current(http, "im-star") == (answer.json()["revision"], "two")
    assert http.delete("/keys/im-star", headers={"If-Match": "*"}).status_code == 204
    assert current(http, "im-star") is None


@pytest.mark.parametrize("tag", ['W/"{rev}"', 'W/"{rev}", W/"1"'])
def test_e2e_conditional_if_match_weak_tag_never_matches(
    http: httpx.Client, spec: dict[str, Any], tag: str
) -> None:
    key = f"im-weak/{slug(tag)}"
    revision = write(http, key, "one").json()["revision"]
    header = tag.format(rev=revision)
    detail = refused(write(http, key, "two", **{"If-Match": header}), 412, spec)
    assert "strong comparison" in detail
    refused(http.delete(f"/keys/{key}", headers={"If-Match": header}), 412, spec)
    assert current(http, key) == (revision, "one")


def test_e2e_conditional_if_match_list_takes_any_of_its_strong_tags(
    http: httpx.Client, spec: dict[str, Any]
) -> None:
    first = write(http, "im-list", "one").json()["revision"]
    second = write(http, "im-list", "two").json()["revision"]
    header = f'"{first}", W/"{second}", "999999"'  # the weak one would match: it may not
    detail = refused(write(http, "im-list", "x", **{"If-Match": header}), 412, spec)
    assert detail == f"revision mismatch: expected one of {first}, 999999, current {second}"
    answer = write(http, "im-list", "three", **{"If-Match": f'"{first}" ,, "{second}"'})
    assert answer.status_code == 200, answer.text
    third = answer.json()["revision"]
    assert current(http, "im-list") == (third, "three")
    # Two header lines make one list (RFC 9110 §5.3).
    lines = [("If-Match", f'"{first}"'), ("If-Match", f'"{third}"')]
    assert http.delete("/keys/im-list", headers=lines).status_code == 204
    assert current(http, "im-list") is None


def test_e2e_conditional_if_match_one_tag_keeps_the_engines_detail(
    http: httpx.Client, spec: dict[str, Any]
) -> None:
    first = write(http, "im-one", "one").json()["revision"]
    second = write(http, "im-one", "two", **{"If-Match": f'"{first}"'}).json()["revision"]
    detail = refused(write(http, "im-one", "x", **{"If-Match": f'"{first}"'}), 412, spec)
    assert detail == f"revision mismatch: expected {first}, current {second}"


@pytest.mark.parametrize("header", MALFORMED)
def test_e2e_conditional_malformed_if_match_is_400(
    http: httpx.Client, spec: dict[str, Any], header: str
) -> None:
    key = f"im-malformed/{slug(header)}"
    revision = write(http, key, "one").json()["revision"]
    answer = write(http, key, "two", **{"If-Match": header})
    assert refused(answer, 400, spec).startswith(IF_MATCH_FORM)
    answer = http.delete(f"/keys/{key}", headers={"If-Match": header})
    assert refused(answer, 400, spec).startswith(IF_MATCH_FORM)
    assert current(http, key) == (revision, "one")


# -- both: If-Match first, then If-None-Match, and both must pass ------------------------------


def test_e2e_conditional_if_none_match_star_with_passing_if_match_is_412(
    http: httpx.Client, spec: dict[str, Any]
) -> None:
    revision = write(http, "both-star", "one").json()["revision"]
    for if_match in (f'"{revision}"', "*"):
        headers = {"If-Match": if_match, "If-None-Match": "*"}
        detail = refused(write(http, "both-star", "two", **headers), 412, spec)
        assert detail == (
            f"revision mismatch: If-None-Match: * needs the key absent, current {revision}"
        )
        refused(http.delete("/keys/both-star", headers=headers), 412, spec)
    assert current(http, "both-star") == (revision, "one")
    # If-Match fails first: its own detail.
    headers = {"If-Match": f'"{revision + 1000}"', "If-None-Match": "*"}
    detail = refused(write(http, "both-star", "two", **headers), 412, spec)
    assert detail == f"revision mismatch: expected {revision + 1000}, current {revision}"


def test_e2e_conditional_both_lists_pass_together(http: httpx.Client) -> None:
    old = write(http, "both-lists", "one").json()["revision"]
    revision = write(http, "both-lists", "two").json()["revision"]
    headers = {"If-Match": f'"{revision}"', "If-None-Match": f'W/"{old}"'}
    answer = write(http, "both-lists", "three", **headers)
    assert answer.status_code == 200, answer.text
    assert current(http, "both-lists") == (answer.json()["revision"], "three")
    headers = {"If-Match": f'"{answer.json()["revision"]}"', "If-None-Match": '"1", "2"'}
    assert http.delete("/keys/both-lists", headers=headers).status_code == 204


# -- Content-Encoding --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "body"),
    [
        ("gzip", gzip.compress(b'{"value": "v"}')),
        ("gzip", b'{"value": "v"}'),  # a plain body labelled gzip: stored as it came, once
        ("br", b'{"value": "v"}'),
        ("identity, gzip", gzip.compress(b'{"value": "v"}')),
        ("x-unknown", b'{"value": "v"}'),
    ],
    ids=["gzip", "plain-labelled-gzip", "br", "identity-then-gzip", "unknown"],
)
def test_e2e_conditional_content_coded_body_is_415(
    http: httpx.Client, spec: dict[str, Any], coding: str, body: bytes
) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": coding}
    key = f"coded/{slug(coding)}/{len(body)}"
    answer = http.put(f"/keys/{key}", content=body, headers=headers)
    assert "Content-Encoding" in refused(answer, 415, spec)
    assert answer.headers["accept-encoding"] == "identity"  # RFC 7694 §3
    assert current(http, key) is None
    ops = b'{"ops": [{"op": "put", "key": "%s", "value": "v"}]}' % key.encode()
    coded = body[:1] != b"{"  # the batch's body coded as the PUT's was, or labelled only
    answer = http.post("/batch", content=gzip.compress(ops) if coded else ops, headers=headers)
    assert "Content-Encoding" in refused(answer, 415, spec)
    assert answer.headers["accept-encoding"] == "identity"
    assert current(http, key) is None


@pytest.mark.parametrize("coding", ["identity", "IDENTITY", ""])
def test_e2e_conditional_identity_coding_is_accepted(http: httpx.Client, coding: str) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": coding}
    key = f"identity/{slug(coding)}"
    answer = http.put(f"/keys/{key}", content=b'{"value": "v"}', headers=headers)
    assert answer.status_code == 201, answer.text
    ops = b'{"ops": [{"op": "put", "key": "%s", "value": "w"}]}' % key.encode()
    assert http.post("/batch", content=ops, headers=headers).status_code == 200
    found = current(http, key)
    assert found is not None and found[1] == "w"
