"""``/auth``: sign up (and whether one may), log in (OAuth2 password flow), log out, who am I.

Plain ``def`` routes on purpose: argon2 hashing is CPU-bound, and FastAPI runs ``def`` routes in
its threadpool, so a login never blocks the event loop. The one exception is ``logout``, which
hashes nothing and must run on the event loop, where the transaction manager lives (it releases
the transaction the session held). Errors are the auth service's exceptions;
``filekv.service.errors`` turns them into statuses.

The routes that take a body (register, token) are ``BodyCappedRoute``s: before FastAPI reads the
body, registration's openness is checked (403 for a closed one, whatever is sent), and then at
most ``MAX_AUTH_BODY_BYTES`` are read: a larger ``Content-Length`` is 413 unread, and a body
streamed without one is counted as it arrives and refused (413) as soon as it passes the cap.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.routing import APIRoute
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.types import Message

from filekv.service.deps import AuthDep, BearerTokenDep, SessionDep, TransactionsDep, get_auth
from filekv.service.errors import BodyTooLarge
from filekv.service.schemas import RETRY_AFTER, UNAUTHORIZED, error
from filekv.service.users import (
    MAX_PASSWORD_CHARS,
    MIN_PASSWORD_CHARS,
    USERNAME_PATTERN,
    Role,
    check_password,
)
from filekv.service.wire import check_json_body, check_no_content_coding

# A user name is at most 64 ASCII bytes and a password 1024 characters; JSON or form encoding may
# spell one character as up to 12 bytes (an escaped surrogate pair, four %XX escapes). So no real
# sign-up or login body comes near 16 KiB, and a larger one is refused before it is read.
MAX_AUTH_BODY_BYTES: Final = 16 * 1024


def _declared_length(request: Request) -> int | None:
    """``Content-Length`` as a number, without ever converting thousands of digits."""
    value = request.headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None  # absent, or malformed (the server's parser refuses those)
    digits = value.strip().lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else 10**18


async def _read_capped(request: Request, cap: int) -> Request:
    """A request whose body is read already, at most ``cap`` bytes of it (else 413)."""
    too_large = f"the request body is over {cap} bytes"
    declared = _declared_length(request)
    if declared is not None and declared > cap:
        raise BodyTooLarge(too_large)
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > cap:
                raise BodyTooLarge(too_large)
        return message

    capped = Request(request.scope, counted)
    await capped.body()  # cached on ``capped``: FastAPI parses it from there
    return capped


def _before_register(request: Request) -> None:
    get_auth(request).check_registration_open()
    # A JSON body declared as something else was a 422 about its fields, where PUT and batch
    # say 415: the same rule for every JSON body.
    check_json_body(request)


# Checks that need no body, run before it is read: route name -> check.
_BEFORE_BODY: Final[dict[str, Callable[[Request], None]]] = {"register": _before_register}


class BodyCappedRoute(APIRoute):
    """An ``APIRoute`` that runs its cheap checks, then reads at most the capped body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        before = _BEFORE_BODY.get(self.name)

        async def capped_handler(request: Request) -> Response:
            if before is not None:
                before(request)
            check_no_content_coding(request)  # a gzip body was parsed as it came (422, or 401)
            return await handler(await _read_capped(request, MAX_AUTH_BODY_BYTES))

        return capped_handler


router = APIRouter(prefix="/auth", tags=["auth"], route_class=BodyCappedRoute)


class Credentials(BaseModel):
    """Body of ``POST /auth/register``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"username": "alice", "password": "alice-secret-1"}]},
    )

    username: str = Field(
        min_length=1,
        max_length=64,
        pattern=USERNAME_PATTERN,
        description=(
            "1-64 characters of A-Z, a-z, 0-9, '_', '.', '-', starting with a letter or digit;"
            " unique whatever the case."
        ),
    )
    password: str = Field(
        min_length=MIN_PASSWORD_CHARS,
        max_length=MAX_PASSWORD_CHARS,
        description=f"At least {MIN_PASSWORD_CHARS} characters, not only whitespace.",
    )

    @field_validator("password")
    @classmethod
    def _not_only_whitespace(cls, password: str) -> str:
        check_password(password)  # the one rule, shared with ``filekv user add``
        return password


class UserOut(BaseModel):
    """A user, by name (nothing else about a user is ever sent)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"username": "alice"}]})

    username: str


class Me(UserOut):
    """Answer to ``GET /auth/me``: the token's user and role, as ``users.json`` has it now."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"username": "alice", "role": "user"}]}
    )

    role: Role = Field(description="`user`, or `admin` (who may break the transaction lock).")


class RegistrationState(BaseModel):
    """Answer to ``GET /auth/register``: whether ``POST /auth/register`` works now."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"open": True}]})

    open: bool = Field(
        description="True: anyone may register; false: users come from `filekv user add`."
    )


class TokenOut(BaseModel):
    """A new bearer token: send it as ``Authorization: Bearer <access_token>``."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.")


BAD_LOGIN: dict[str, Any] = {
    **error("Unknown username or wrong password (one answer for both)."),
    "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
}
THROTTLED: dict[str, Any] = {
    **error(
        "Too many failed logins for this username from this address, from this address, or"
        " for this username from many addresses; wait Retry-After seconds."
    ),
    "headers": RETRY_AFTER,
}
TOO_LARGE: Final = error(f"The request body is over {MAX_AUTH_BODY_BYTES} bytes; not read.")
USERS_UNAVAILABLE: Final = error("users.json is damaged or cannot be read; see the server log.")
CODED: Final = error("The body is content-coded (Content-Encoding other than identity): not read.")


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses={
        403: error("Registration is closed; users are added with `filekv user add`."),
        409: error("That username is taken (names are unique whatever the case)."),
        413: TOO_LARGE,
        415: error("The body is not declared JSON, or is content-coded: not read."),
        503: USERS_UNAVAILABLE,
        507: error("The disk is full: the user was not added."),
    },
)
def register(body: Credentials, auth: AuthDep) -> UserOut:
    """Create a user (while registration is open)."""
    auth.register(body.username, body.password)
    return UserOut(username=body.username)


@router.get(
    "/register",
    responses={200: {"description": "Whether registration is open (the `registration` setting)."}},
)
def registration_open(auth: AuthDep) -> RegistrationState:
    """Whether registration is open, asked without registering anyone (no login needed)."""
    return RegistrationState(open=auth.registration == "open")


@router.post(
    "/token",
    responses={
        401: BAD_LOGIN,
        413: TOO_LARGE,
        415: CODED,
        429: THROTTLED,
        503: USERS_UNAVAILABLE,
    },
)
def token(
    request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()], auth: AuthDep
) -> TokenOut:
    """Log in with the OAuth2 password flow (form fields ``username``, ``password``).

    The user name matches whatever its case. Failed logins are throttled per user name and
    client address, per address, and per user name from many addresses (see the README).
    """
    client = request.client.host if request.client is not None else None
    issued = auth.login(form.username, form.password, client=client)
    return TokenOut(access_token=issued.access_token, expires_in=issued.expires_in)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={401: UNAUTHORIZED},
)
async def logout(
    token: BearerTokenDep, session: SessionDep, auth: AuthDep, transactions: TransactionsDep
) -> Response:
    """Revoke the token this request carries; the user's other tokens keep working.

    A transaction held by this token is rolled back whole and the lock released: nobody could
    ever commit it, so it must not keep the store locked until its lease runs out.
    """
    auth.logout(token)  # a dict update under a lock: cheap enough for the event loop
    transactions.end_session(session.session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", responses={401: UNAUTHORIZED})
def me(session: SessionDep) -> Me:
    """The user the token belongs to, and its role."""
    return Me(username=session.username, role=session.role)
