"""The JSON shapes of the HTTP API, as pydantic models for the OpenAPI document.

Hot-path routes return ready ``orjson`` responses and name these models only in ``responses=``,
so they document the wire format without validating every answer.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Final, Literal, get_type_hints

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from pydantic.json_schema import SkipJsonSchema

from filekv.engine.expiry import MAX_TTL
from filekv.engine.stats import StoreStats


class ValueIn(BaseModel):
    """Body of ``PUT /keys/{key}``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"value": "hello"}, {"value": "alice", "ttl": 30}]},
    )

    value: str = Field(description="The value, any string (counted in UTF-8 bytes).")
    ttl: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TTL,
        description="Seconds until the key expires (then it is gone for every read); "
        "omitted or null: never, and an earlier expiry of the key ends.",
    )


class KeyValue(BaseModel):
    """One key and its value, as ``GET /keys/{key}`` returns it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"key": "greeting", "value": "hello", "revision": 1, "expires_in": None}]
        }
    )

    key: str
    value: str
    revision: int | None = Field(description="Revision of the last write; null while staged.")
    expires_in: float | None = Field(
        default=None, description="Seconds until the key expires; null if it never does."
    )


class PutResult(KeyValue):
    """Answer to ``PUT /keys/{key}``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "key": "greeting",
                    "value": "hello",
                    "revision": 1,
                    "expires_in": None,
                    "staged": False,
                }
            ]
        }
    )

    staged: bool = Field(description="True when the write waits in the caller's transaction.")


MAX_BATCH_OPS: Final = 1000
MAX_BATCH_BYTES: Final = 16 << 20  # the whole request body, refused unread past this

_EXPECT_DOC: Final = (
    "Apply the batch only if the key is at this revision; 0: only if it does not exist."
)


def _whole_number(value: Any) -> Any:
    """A float with no fraction as the int it is: JSON has one number type, and the schema's
    "integer" (JSON Schema 2020-12) includes 7.0; the fuzz suite sends such revisions."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


# ``expect`` and ``ttl`` are strict, as PUT reads them (``wire.parse_ttl``, an If-Match):
# lax mode would take ``true`` as 1, ``"30"`` as 30 and ``false`` as a revision. Strict floats
# still take JSON integers (``"ttl": 30``); a revision may be written 7.0, never 7.5.
_Revision = Annotated[int, Field(ge=0, strict=True), BeforeValidator(_whole_number)]
_Expect = Annotated[_Revision | None, Field(description=_EXPECT_DOC)]


class BatchPut(BaseModel):
    """Write ``value`` under ``key``."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["put"]
    key: str = Field(min_length=1)
    value: str = Field(description="The value, any string (counted in UTF-8 bytes).")
    expect: _Expect = None
    ttl: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TTL,
        strict=True,
        description="Seconds until the key expires, as in PUT.",
    )


class BatchDelete(BaseModel):
    """Delete ``key``; a key that does not exist is no error unless ``expect`` is given."""

    model_config = ConfigDict(extra="forbid")

    op: Literal["delete"]
    key: str = Field(min_length=1)
    expect: _Expect = None


class BatchIn(BaseModel):
    """Body of ``POST /batch``: the operations, applied together or not at all."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "ops": [
                        {"op": "put", "key": "users/alice/colour", "value": "blue"},
                        {"op": "delete", "key": "users/bob/colour", "expect": 4},
                    ]
                }
            ]
        },
    )

    ops: list[Annotated[BatchPut | BatchDelete, Field(discriminator="op")]] = Field(
        min_length=1,
        max_length=MAX_BATCH_OPS,
        description="Applied in order: of several operations on one key the last wins; every "
        "`expect` is compared with the data as it was before the batch.",
    )


class BatchResult(BaseModel):
    """Answer to ``POST /batch``."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"revision": 12, "applied": 2, "staged": False}]}
    )

    revision: int | None = Field(
        description="The revision of the batch's record (the current one if nothing had to be "
        "written: only deletes of absent keys); null while staged in your transaction."
    )
    applied: int = Field(description="Number of operations applied (or staged).")
    staged: bool = Field(description="True when the operations wait in the caller's transaction.")


class KeyPage(BaseModel):
    """One page of sorted keys; pass ``next`` as ``after`` for the following page."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"keys": ["users/alice/colour"], "next": None}]}
    )

    keys: list[str]
    next: str | None = Field(description="Cursor for the next page; null on the last page.")
    revision: int | None = Field(
        None,
        description="Only in a long poll's answer (wait or after_revision given): the store's "
        "revision before the keys were read; pass it as after_revision to wait for the next "
        "change.",
    )


class Depth(BaseModel):
    """The caller's transaction depth after the call (0: no transaction)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"depth": 1}]})

    depth: int


class CommitResult(Depth):
    """Answer to ``POST /transactions/commit``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"depth": 0, "applied": 1}]})

    applied: int = Field(description="Number of staged writes applied, atomically and durably.")


class TransactionState(BaseModel):
    """Answer to ``GET /transactions``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"active": True, "mine": True, "depth": 1, "expires_in": 29.5}]
        }
    )

    active: bool = Field(description="Whether anyone holds a transaction.")
    mine: bool = Field(description="Whether the caller holds it.")
    depth: int = Field(description="The caller's depth, 0 unless the caller is the holder.")
    expires_in: float | None = Field(
        description="Seconds until it is rolled back: the lease left (renewed by the holder's "
        "requests), or its time left under transaction_max_seconds if sooner; null if none open."
    )


class LockBroken(BaseModel):
    """Answer to ``DELETE /transactions``: ``depth`` only when a transaction was rolled back."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"rolled_back": True, "depth": 2}, {"rolled_back": False}]}
    )

    rolled_back: bool = Field(description="Whether a transaction was open, and is now rolled back.")
    # Absent, never null, when none was open (the route leaves out None).
    depth: int | SkipJsonSchema[None] = Field(
        default=None, description="The depth it had; absent when no transaction was open."
    )


class Health(BaseModel):
    """Answer to ``GET /healthz``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: str


def _model_of(source: type[Any], doc: str) -> type[BaseModel]:
    """A response model with the fields of the engine's dataclass ``source``, descriptions too."""
    types = get_type_hints(source)
    fields: dict[str, Any] = {
        field.name: (types[field.name], Field(description=field.metadata["description"]))
        for field in dataclasses.fields(source)
    }
    return create_model(source.__name__.removeprefix("Store"), __doc__=doc, **fields)


# Answer to GET /stats: exactly the fields of the engine's StoreStats, which the route sends.
Stats = _model_of(StoreStats, "Answer to ``GET /stats``: ``Store.stats()``.")


class ErrorBody(BaseModel):
    """Every error except request validation (422 keeps FastAPI's list form)."""

    detail: str
    request_id: str = Field(
        description="The request's X-Request-ID (the client's, or one the server chose): "
        "the access log line of the request names it too."
    )


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` written in place, for an ``openapi_extra`` body.

    Pydantic points nested models at ``#/$defs/...``, which means nothing inside an OpenAPI
    document (Swagger UI and schemathesis would see an empty body); a discriminator's
    ``mapping`` holds such pointers too, and its ``propertyName`` alone says the same.
    """
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {
                name: resolve(value)
                for name, value in node.items()
                if not (name == "mapping" and "propertyName" in node)
            }
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def error(description: str) -> dict[str, Any]:
    """An entry of a route's ``responses=`` for an error status."""
    return {"model": ErrorBody, "description": description}


def invalid(description: str) -> dict[str, Any]:
    """A ``responses=`` entry for 422, in FastAPI's list form: what the route refuses, beyond
    what FastAPI's own "Validation Error" would say."""
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
        },
    }


RETRY_AFTER: Final[dict[str, Any]] = {
    "Retry-After": {"description": "Whole seconds to wait.", "schema": {"type": "integer"}}
}
ETAG: Final[dict[str, Any]] = {
    "ETag": {"description": 'The revision, quoted: `"<rev>"`.', "schema": {"type": "string"}}
}
# Descriptions are Markdown (HTML passes through it), so a literal ``<rev>`` is in backquotes.

# The bearer token is optional on the routes whose answer depends on who asks (the holder of the
# transaction sees and writes its staged data; auth_mode may require a login): declaring it
# makes Swagger UI send the token once Authorize was used. ``{}`` is "or no token at all".
# The conditional headers have no example on purpose: Swagger UI would fill it in, and a plain
# Execute would send a precondition.
OPTIONAL_BEARER: Final[list[dict[str, list[str]]]] = [{"OAuth2PasswordBearer": []}, {}]
IF_MATCH: Final[dict[str, Any]] = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": (
        'Write only if the key is at this revision, as a read\'s ETag gives it: `"<rev>"`. '
        "Anything else, or another revision, is 412."
    ),
    "schema": {"type": "string"},
}
IF_NONE_MATCH: Final[dict[str, Any]] = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "`*`: write only if the key does not exist yet (other values are ignored).",
    "schema": {"type": "string"},
}
UNAUTHORIZED: Final = error("Not authenticated: no, unknown, revoked or expired token.")
ADMINS_ONLY: Final = error("The token is valid, but its user is not an admin.")
LOCKED: Final[dict[str, Any]] = {
    **error("Another client holds the transaction."),
    "headers": RETRY_AFTER,
}
DISK_FULL: Final = error("The disk is full: nothing was written; retry once space is freed.")
STORE_FAILED: Final = error(
    "The store is not writable: an fsync failed (writes are refused until the server is "
    "restarted), or it is closed."
)
