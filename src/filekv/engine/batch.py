"""A batch: several puts and deletes applied as one atomic record at one new revision.

``Store.batch([Put("a", b"1"), Delete("b", expect=7)])`` writes every operation or none: each
``expect`` is checked (as ``put``'s) before anything is written (the first that fails raises
VersionMismatch with its ``op_index``), and the record is one record like a transaction's
commit, so recovery shows all of it or nothing. A delete of an absent key is no error (and
writes nothing). ``Transaction.batch`` stages
the same operations in the open transaction, all or none.

Several operations on one key are allowed: they apply in order, so the last one wins (only it
is written), and every ``expect`` is compared with the data as it was before the batch, as in
etcd's compare-then-apply, never with an earlier operation of the same batch.

Owns the operation types and ``prepare``, the checks both paths share (keys, values, the
transaction limits), done before any lock is taken.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from .errors import InvalidBatch, InvalidKey, InvalidTTL, TransactionTooLarge, ValueTooLarge
from .expiry import check_ttl
from .record import EXPIRY, OPERATION_HEADER, RECORD_HEADER_SIZE


# Named tuples, not frozen dataclasses: a batch builds up to thousands of them per request, and
# a tuple is built three times as fast.
class Put(NamedTuple):
    """Write ``value`` under ``key``; ``expect`` and ``ttl`` as for ``Store.put``."""

    key: str
    value: bytes
    expect: int | None = None
    ttl: float | None = None


class Delete(NamedTuple):
    """Remove ``key`` (a missing key is no error unless ``expect`` says it must exist)."""

    key: str
    expect: int | None = None


BatchOp = Put | Delete


class Prepared(NamedTuple):
    """One checked operation: ``value`` None for a delete; ``final`` if no later op has its key."""

    key: str
    encoded: bytes
    value: bytes | None
    expect: int | None
    final: bool
    ttl: float | None = None  # seconds, checked


def prepare(
    ops: Sequence[BatchOp],
    *,
    encode_key: Callable[[str], bytes],
    check_value: Callable[[bytes], bytes],
    max_key_bytes: int,
    max_value_bytes: int,
    max_ops: int,
    max_bytes: int,
) -> list[Prepared]:
    """The operations checked and encoded, or the error of the first one at fault.

    Refused (nothing written or staged): no operation (InvalidBatch); a bad key (InvalidKey) or
    value (TypeError, ValueTooLarge); more operations or record bytes than a transaction may
    hold (TransactionTooLarge), since a batch is written as one such record (counted before
    repeated keys are folded: an upper bound). Every message names the operation's index.

    The common case (a str key and bytes within the limits) is checked inline: a batch costs
    about two microseconds per operation less than calling ``encode_key``/``check_value``,
    which are asked only to name what is wrong.
    """
    if not ops:
        raise InvalidBatch("a batch needs at least one operation")
    if len(ops) > max_ops:
        raise TransactionTooLarge(
            f"the batch holds {len(ops)} operations; the limit is {max_ops} (max_transaction_ops)"
        )
    prepared: list[Prepared] = []
    new = tuple.__new__  # the named tuple built in C, not by its generated Python __new__
    last_index: dict[str, int] = {}
    size = RECORD_HEADER_SIZE
    header = OPERATION_HEADER.size
    for index, op in enumerate(ops):
        kind = type(op)
        ttl = None
        if kind is Put:
            value: bytes | None = op.value  # type: ignore[union-attr]
            if type(value) is not bytes or len(value) > max_value_bytes:
                value = _checked_value(check_value, op.value, index)  # type: ignore[union-attr]
            if op.ttl is not None:  # type: ignore[union-attr]
                ttl = _checked_ttl(op.ttl, index)  # type: ignore[union-attr]
        elif kind is Delete:
            value = None
        else:
            raise TypeError(f"op {index}: a batch operation is a Put or a Delete, not {op!r}")
        key = op.key
        try:  # (a key over 4 * max_key_bytes characters is not encoded: encode_key refuses it)
            short = type(key) is str and len(key) <= 4 * max_key_bytes
            encoded = key.encode("utf-8") if short else b""
        except UnicodeEncodeError:
            encoded = b""
        if not encoded or len(encoded) > max_key_bytes:
            encoded = _encoded_key(encode_key, key, index)  # raises, naming what is wrong
        last_index[op.key] = index
        size += header + len(encoded) + (len(value) if value is not None else 0)
        if ttl is not None:
            size += EXPIRY.size
        if size > max_bytes:
            raise TransactionTooLarge(
                f"the batch passes {max_bytes} record bytes at op {index} (max_transaction_bytes)"
            )
        prepared.append(new(Prepared, (key, encoded, value, op.expect, True, ttl)))
    if len(last_index) < len(prepared):  # a key repeats: only its last operation is final
        prepared = [
            op if last_index[op.key] == index else op._replace(final=False)
            for index, op in enumerate(prepared)
        ]
    return prepared


def _checked_ttl(ttl: float, index: int) -> float:
    try:
        return check_ttl(ttl)
    except InvalidTTL as exc:
        error = InvalidTTL(f"op {index}: {exc}")
        error.op_index = index
        raise error from None


def _encoded_key(encode_key: Callable[[str], bytes], key: str, index: int) -> bytes:
    try:
        return encode_key(key)
    except InvalidKey as exc:
        error = InvalidKey(f"op {index}: {exc}")
        error.op_index = index
        raise error from None


def _checked_value(check_value: Callable[[bytes], bytes], value: bytes, index: int) -> bytes:
    try:
        return check_value(value)
    except ValueTooLarge as exc:
        raise ValueTooLarge(f"op {index}: {exc}") from None
    except TypeError as exc:
        raise TypeError(f"op {index}: {exc}") from None
