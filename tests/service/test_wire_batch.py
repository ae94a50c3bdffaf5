"""``wire._plain_batch``, the fast reading of a ``POST /batch`` body, agrees with ``BatchIn``.

Whatever the plain reading takes, the model takes alike (same operations); what it leaves, the
model judges. Random bodies near the valid shape (wrong types, extra or missing fields, bools
for ints, negative expects, empty keys) exercise both sides.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from filekv.engine import Delete, Put
from filekv.service.schemas import BatchIn, BatchPut
from filekv.service.wire import _plain_batch

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
_OP = st.fixed_dictionaries(
    {"op": st.sampled_from(["put", "delete", "Put", "drop"]) | _SCALARS},
    optional={
        "key": st.text(max_size=5) | _SCALARS,
        "value": st.text(max_size=5) | _SCALARS,
        "expect": _SCALARS,
        "ttl": _SCALARS,
        "extra": _SCALARS,
    },
)
_BODY = st.one_of(
    st.fixed_dictionaries({"ops": st.lists(_OP, max_size=4)}),
    st.fixed_dictionaries({"ops": st.lists(_OP, max_size=2)}, optional={"more": _SCALARS}),
    st.lists(_OP, max_size=2),
    _SCALARS,
)


def _by_model(raw: bytes) -> list[Put | Delete] | None:
    try:
        parsed = BatchIn.model_validate_json(raw)
    except ValidationError:
        return None
    return [
        Put(op.key, op.value.encode("utf-8"), op.expect, op.ttl)
        if isinstance(op, BatchPut)
        else Delete(op.key, op.expect)
        for op in parsed.ops
    ]


@settings(max_examples=1500, deadline=None)
@given(body=_BODY)
@example(body={"ops": [{"op": "put", "key": "k", "value": "v", "expect": True}]})
@example(body={"ops": [{"op": "delete", "key": "k", "expect": 0}]})
@example(body={"ops": [{"op": "put", "key": "k", "value": "v", "expect": None}]})
@example(body={"ops": [{"op": "put", "key": "k", "value": "v", "ttl": 30}]})
def test_wire_plain_batch_takes_only_what_the_model_takes_alike(body: Any) -> None:
    raw = orjson.dumps(body)
    plain = _plain_batch(orjson.loads(raw))
    if plain is not None:
        assert _by_model(raw) == plain


def test_wire_plain_batch_takes_the_common_shapes() -> None:
    body = {
        "ops": [
            {"op": "put", "key": "a", "value": "1"},
            {"op": "put", "key": "b", "value": "ü", "expect": 0},
            {"op": "delete", "key": "c"},
            {"op": "delete", "key": "d", "expect": 7},
        ]
    }
    assert _plain_batch(body) == [
        Put("a", b"1"),
        Put("b", "ü".encode(), 0),
        Delete("c"),
        Delete("d", 7),
    ]


@pytest.mark.parametrize(
    "field",
    [
        '"ttl": true',
        '"ttl": "30"',
        '"expect": false',
        '"expect": "0"',
        '"expect": true',
        '"expect": 1.5',
    ],
)
def test_wire_batch_model_is_strict_where_put_is(field: str) -> None:
    # Lax pydantic would take these (true as 1, "30" as 30, 1.5 as 1): PUT refuses them, so the
    # model refuses them too, and the plain reading leaves them to it.
    raw = '{"ops": [{"op": "put", "key": "k", "value": "v", ' + field + "}]}"
    assert _plain_batch(orjson.loads(raw)) is None
    with pytest.raises(ValidationError) as refused:
        BatchIn.model_validate_json(raw)
    assert refused.value.errors()[0]["loc"][-1] == field.split('"')[1]


def test_wire_batch_model_takes_integer_and_float_ttls() -> None:
    # Strict mode still takes a JSON integer for a float field: "ttl": 30 is seconds, as in PUT.
    raw = (
        '{"ops": [{"op": "put", "key": "k", "value": "v", "ttl": 30, "expect": 0},'
        ' {"op": "put", "key": "f", "value": "v", "ttl": 1.5}]}'
    )
    ops = BatchIn.model_validate_json(raw).ops
    assert [(op.ttl, op.expect) for op in ops if isinstance(op, BatchPut)] == [
        (30.0, 0),
        (1.5, None),
    ]


def test_wire_batch_model_takes_a_revision_written_as_a_whole_float() -> None:
    # JSON has one number type, and the schema's "integer" (JSON Schema 2020-12) includes 7.0:
    # the fuzz suite sent "expect": 21208.0 as schema-valid data.
    raw = (
        '{"ops": [{"op": "delete", "key": "k", "expect": 21208.0},'
        ' {"op": "put", "key": "p", "value": "v", "expect": 0.0}]}'
    )
    assert [op.expect for op in BatchIn.model_validate_json(raw).ops] == [21208, 0]
