"""FastAPI dependencies: what a route may ask for, as ``Annotated`` aliases.

Everything lives on ``request.app.state`` (set by the lifespan in ``app.py``), so nothing is opened
at import time.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from filekv.engine import Store
from filekv.service.auth import AuthService, Session
from filekv.service.errors import Forbidden, NotAuthenticated
from filekv.service.logs import SCOPE_USER
from filekv.service.transactions import TransactionManager

__all__ = [
    "AdminDep",
    "AuthDep",
    "BearerTokenDep",
    "OptionalSessionDep",
    "SessionDep",
    "StoreDep",
    "TransactionsDep",
    "admin_session",
    "bearer_token",
    "caller_session_id",
    "current_session",
    "get_auth",
    "get_store",
    "get_transactions",
    "oauth2_scheme",
    "optional_session",
    "request_session_id",
]

# auto_error=False: a missing header is ours to answer (401 with our body, or anonymous access).
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


def get_store(request: Request) -> Store:
    """The open engine store."""
    store: Store = request.app.state.store
    return store


def get_auth(request: Request) -> AuthService:
    """The user and token service."""
    auth: AuthService = request.app.state.auth
    return auth


def get_transactions(request: Request) -> TransactionManager:
    """The transaction lock holder and its lease."""
    transactions: TransactionManager = request.app.state.transactions
    return transactions


StoreDep = Annotated[Store, Depends(get_store)]
AuthDep = Annotated[AuthService, Depends(get_auth)]
TransactionsDep = Annotated[TransactionManager, Depends(get_transactions)]


def bearer_token(token: Annotated[str | None, Depends(oauth2_scheme)]) -> str:
    """The raw bearer token; 401 when the request carries none."""
    if not token:
        raise NotAuthenticated("not authenticated: send Authorization: Bearer <token>")
    return token


BearerTokenDep = Annotated[str, Depends(bearer_token)]


def _verified(request: Request, session: Session | None) -> Session:
    """``session``, or 401; its user is noted in the scope for the access log (never the token)."""
    if session is None:
        raise NotAuthenticated("invalid or expired token")
    request.scope[SCOPE_USER] = session.username
    return session


def current_session(request: Request, token: BearerTokenDep, auth: AuthDep) -> Session:
    """The caller's login session; 401 when the token is unknown, revoked or expired."""
    return _verified(request, auth.authenticate(token))


SessionDep = Annotated[Session, Depends(current_session)]


def admin_session(session: SessionDep) -> Session:
    """The caller's session if its user is an admin now (the role as ``users.json`` has it); 403
    for any other valid token, 401 without one."""
    if not session.is_admin:
        raise Forbidden("only an admin may do this")
    return session


AdminDep = Annotated[Session, Depends(admin_session)]


def optional_session(
    request: Request, token: Annotated[str | None, Depends(oauth2_scheme)], auth: AuthDep
) -> Session | None:
    """The caller's session, or None when anonymous; a token that is sent is checked (401)."""
    if not token:
        if request.headers.get("authorization"):  # sent, but not as "Bearer <token>"
            raise NotAuthenticated("the Authorization header must be: Bearer <token>")
        return None
    return _verified(request, auth.authenticate(token))


OptionalSessionDep = Annotated[Session | None, Depends(optional_session)]


def caller_session_id(request: Request, *, required: bool) -> str | None:
    """The session id behind the request's bearer token, read straight from the header.

    For hot-path routes, which call it only when the answer matters (auth mode, or a transaction
    open), instead of resolving a dependency on every request. A token that is present but not
    valid is 401, never silently anonymous; a missing one is 401 only when ``required``.
    """
    header = request.headers.get("authorization")
    if not header:
        if required:
            raise NotAuthenticated("not authenticated: send Authorization: Bearer <token>")
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise NotAuthenticated("the Authorization header must be: Bearer <token>")
    return _verified(request, get_auth(request).authenticate(token.strip())).session_id


def request_session_id(
    request: Request, transactions: TransactionManager, *, write: bool
) -> str | None:
    """For the data routes (keys, batch): the caller's session id when it matters, else None.

    It matters when the auth mode requires a login for this kind of request, when a token is
    sent, or when a transaction is open (the holder must be told apart from everyone else).
    """
    mode = request.app.state.settings.auth_mode
    required = mode == "all" or (write and mode == "writes")
    # A token that is sent is always checked: a client whose token expired must hear so (401),
    # not have its writes go through as anonymous. Without one, the header is not even parsed.
    if (
        required
        or "authorization" in request.headers
        or (transactions.wants_identity if write else transactions.is_open)
    ):
        return caller_session_id(request, required=required)
    return None
