"""Checking a key and a value against the store's limits, before any lock is taken.

Owns no state: the limits are passed in (``StoreOptions.max_key_bytes``, ``max_value_bytes``).
"""

from __future__ import annotations

from .errors import InvalidKey, ValueTooLarge


def encode_key(key: str, max_key_bytes: int) -> bytes:
    """The key's UTF-8 bytes; InvalidKey if it is not a non-empty str within the limit."""
    if type(key) is not str:
        raise InvalidKey(f"a key must be a string, not {type(key).__name__}")
    if len(key) > 4 * max_key_bytes:  # too long whatever its UTF-8: refused before encoding it
        raise InvalidKey(
            f"the key is over {4 * max_key_bytes} characters; the limit is {max_key_bytes} bytes"
        )
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey("the key is not valid Unicode text (lone surrogate)") from None
    if not encoded:
        raise InvalidKey("the key is empty")
    if len(encoded) > max_key_bytes:
        raise InvalidKey(f"the key is {len(encoded)} bytes in UTF-8; the limit is {max_key_bytes}")
    return encoded


def check_value(value: bytes, max_value_bytes: int) -> bytes:
    """``value`` as bytes (a bytearray or memoryview is copied, once it is known to be within
    the limit: a copy of a huge one first was work done before the refusal); TypeError or
    ValueTooLarge."""
    if type(value) is not bytes and not isinstance(value, bytearray | memoryview):
        raise TypeError(f"a value must be bytes, not {type(value).__name__}")
    size = value.nbytes if isinstance(value, memoryview) else len(value)
    if size > max_value_bytes:
        raise ValueTooLarge(f"the value is {size} bytes; the limit is {max_value_bytes}")
    return value if type(value) is bytes else bytes(value)
