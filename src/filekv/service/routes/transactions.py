"""``/transactions``: open (or nest), inspect, commit and roll back the one transaction; an
admin breaks the lock (``DELETE``).

All ``async``: the transaction manager lives on the event loop (no thread may touch it), and
none of these calls blocks: commit's encoding, write and fsync wait run off the loop (the engine's
``acommit``), and the manager refuses whatever the holder sends into the transaction meanwhile.
"""

from __future__ import annotations

from fastapi import APIRouter

from filekv.service.deps import (
    AdminDep,
    AuthDep,
    OptionalSessionDep,
    SessionDep,
    TransactionsDep,
)
from filekv.service.schemas import (
    ADMINS_ONLY,
    DISK_FULL,
    LOCKED,
    RETRY_AFTER,
    STORE_FAILED,
    UNAUTHORIZED,
    CommitResult,
    Depth,
    LockBroken,
    TransactionState,
    error,
)

router = APIRouter(prefix="/transactions", tags=["transactions"])

NOT_HOLDER = error(
    "You hold no transaction (or it expired, or an admin ended it, or your commit of it is "
    "running: the detail says which)."
)


@router.post(
    "",
    summary="Begin a transaction or a nested level",
    status_code=201,
    response_model=Depth,
    responses={
        401: UNAUTHORIZED,
        409: error(
            "Your transaction expired, or an admin ended it (told once), or your commit of it "
            "is running, or it is already 1,000 levels deep (the nesting limit): release or "
            "roll back a level first."
        ),
        423: LOCKED,
        429: {
            **error(
                "Your user's last transaction was open longer than transaction_max_seconds and "
                "was rolled back: none of its sessions may begin another until Retry-After "
                "seconds have passed."
            ),
            "headers": RETRY_AFTER,
        },
        503: STORE_FAILED,
    },
)
async def begin(session: SessionDep, auth: AuthDep, transactions: TransactionsDep) -> Depth:
    """Open the transaction, or one more level of it if you already hold it.

    The transaction lasts no longer than the token that opened it: once that is logged out,
    expired or revoked, or its user removed, the transaction is rolled back.
    """
    session_id = session.session_id
    return Depth(
        depth=transactions.begin(
            session_id,
            username=session.username,
            alive=lambda: auth.session_alive(session_id),
        )
    )


@router.get(
    "",
    summary="The transaction lock",
    response_model=TransactionState,
    responses={401: UNAUTHORIZED},
    # The session dependency declares the bearer scheme; ``{}`` adds "or no token" to it.
    openapi_extra={"security": [{}]},
)
async def status(session: OptionalSessionDep, transactions: TransactionsDep) -> TransactionState:
    """Whether a transaction is open, whether it is yours, your depth and the lease left.

    Anyone may ask; a token that is sent is checked (401 if it is not valid).
    """
    found = transactions.status(session.session_id if session is not None else None)
    return TransactionState(
        active=found.active, mine=found.mine, depth=found.depth, expires_in=found.expires_in
    )


@router.post(
    "/commit",
    summary="Commit every level",
    response_model=CommitResult,
    responses={401: UNAUTHORIZED, 409: NOT_HOLDER, 503: STORE_FAILED, 507: DISK_FULL},
)
async def commit(session: SessionDep, transactions: TransactionsDep) -> CommitResult:
    """Apply every staged write atomically; durable on disk before this answers."""
    applied = await transactions.commit(session.session_id)
    return CommitResult(depth=0, applied=applied)


@router.post(
    "/release",
    summary="Release the innermost level",
    response_model=Depth,
    responses={
        401: UNAUTHORIZED,
        409: error(
            "You hold no transaction (or it expired, or an admin ended it, or your commit of it "
            "is running), or you are at depth 1, where there is no level to release into: "
            "commit or roll back."
        ),
    },
)
async def release(session: SessionDep, transactions: TransactionsDep) -> Depth:
    """Merge the innermost level into the one below it, keeping its writes staged (SQL's
    RELEASE SAVEPOINT): a later rollback of the outer level undoes them too."""
    return Depth(depth=transactions.release(session.session_id))


@router.post(
    "/rollback",
    summary="Roll back the innermost level",
    response_model=Depth,
    responses={401: UNAUTHORIZED, 409: NOT_HOLDER},
)
async def rollback(session: SessionDep, transactions: TransactionsDep) -> Depth:
    """Undo the innermost level; at depth 0 the transaction has ended."""
    return Depth(depth=transactions.rollback(session.session_id))


@router.delete(
    "",
    summary="Break the lock: roll back whatever transaction is open (admins only)",
    response_model=LockBroken,
    response_model_exclude_none=True,
    responses={401: UNAUTHORIZED, 403: ADMINS_ONLY},
)
async def break_lock(admin: AdminDep, transactions: TransactionsDep) -> LockBroken:
    """Roll back every level of the open transaction, whoever holds it, and release the lock.

    The former holder's next transaction call, and each of its writes until then, is 409 saying
    that an admin ended its transaction. A commit already running is waited for: if it succeeds,
    nothing was open. Logged at WARNING with both user names.
    """
    depth = await transactions.break_lock(admin.username)
    return LockBroken(rolled_back=depth is not None, depth=depth)
