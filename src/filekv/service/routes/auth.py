"""``/auth``: sign up, log in (OAuth2 password flow), log out, who am I.

Plain ``def`` routes on purpose: argon2 hashing is CPU-bound, and FastAPI runs ``def`` routes in
its threadpool, so a login never blocks the event loop. The one exception is ``logout``, which
hashes nothing and must run on the event loop, where the transaction manager lives (it releases
the transaction the session held). Errors are the auth service's exceptions;
``filekv.service.errors`` turns them into statuses.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Response, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, ConfigDict, Field

from filekv.service.deps import AuthDep, BearerTokenDep, SessionDep, TransactionsDep
from filekv.service.schemas import RETRY_AFTER, UNAUTHORIZED, error
from filekv.service.users import MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, USERNAME_PATTERN

router = APIRouter(prefix="/auth", tags=["auth"])


class Credentials(BaseModel):
    """Body of ``POST /auth/register``."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(
        min_length=1,
        max_length=64,
        pattern=USERNAME_PATTERN,
        description="1-64 characters of A-Z, a-z, 0-9, '_', '.', '-'.",
    )
    password: str = Field(
        min_length=MIN_PASSWORD_CHARS,
        max_length=MAX_PASSWORD_CHARS,
        description=f"At least {MIN_PASSWORD_CHARS} characters.",
    )


class UserOut(BaseModel):
    """A user, by name (nothing else about a user is ever sent)."""

    username: str


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
    **error("Too many failed logins for this username; wait Retry-After seconds."),
    "headers": RETRY_AFTER,
}


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses={
        403: error("Registration is closed; users are added with `filekv user add`."),
        409: error("That username is taken."),
    },
)
def register(body: Credentials, auth: AuthDep) -> UserOut:
    """Create a user (while registration is open)."""
    auth.register(body.username, body.password)
    return UserOut(username=body.username)


@router.post("/token", responses={401: BAD_LOGIN, 429: THROTTLED})
def token(form: Annotated[OAuth2PasswordRequestForm, Depends()], auth: AuthDep) -> TokenOut:
    """Log in with the OAuth2 password flow (form fields ``username``, ``password``)."""
    issued = auth.login(form.username, form.password)
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
def me(session: SessionDep) -> UserOut:
    """The user the token belongs to."""
    return UserOut(username=session.username)
