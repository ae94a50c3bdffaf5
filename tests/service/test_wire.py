"""service/wire.py: the hand-written request parsing the key routes share."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError

from filekv.service.wire import DEFAULT_LIMIT, MAX_DIGITS, MAX_LIMIT, digits, parse_limit


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", "0"), ("007", "7"), ("123", "123"), ("", None), ("12a", None), ("²", None)],
)
def test_wire_digits(text: str, expected: str | None) -> None:
    assert digits(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, DEFAULT_LIMIT), ("1", 1), ("+5", 5), ("0010", 10), (str(MAX_LIMIT), MAX_LIMIT)],
)
def test_wire_parse_limit_accepts(text: str | None, expected: int) -> None:
    assert parse_limit(text) == expected


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("abc", "int_parsing"),
        ("", "int_parsing"),
        ("0", "greater_than_equal"),
        ("-3", "greater_than_equal"),
        (str(MAX_LIMIT + 1), "less_than_equal"),
        ("9" * (MAX_DIGITS + 5000), "less_than_equal"),  # no int() of 5000 digits (a 500)
        ("-" + "9" * 5000, "greater_than_equal"),
    ],
)
def test_wire_parse_limit_refuses_as_fastapi_would(text: str, kind: str) -> None:
    with pytest.raises(RequestValidationError) as caught:
        parse_limit(text)
    assert caught.value.errors()[0]["type"] == kind
    assert caught.value.errors()[0]["loc"] == ("query", "limit")
