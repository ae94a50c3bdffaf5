"""``GET /admin/backup``: the store as a tar archive, taken while writes go on (admins only)."""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from filekv.service.backup import Backups
from filekv.service.deps import AdminDep, StoreDep
from filekv.service.schemas import ADMINS_ONLY, RETRY_AFTER, STORE_FAILED, UNAUTHORIZED, error

router = APIRouter(prefix="/admin", tags=["admin"])


def get_backups(request: Request) -> Backups:
    """The server's backup slot (``app.state.backups``)."""
    backups: Backups = request.app.state.backups
    return backups


BackupsDep = Annotated[Backups, Depends(get_backups)]

ARCHIVE: Final[dict[str, Any]] = {
    "description": (
        "The backup: a tar archive (`filekv-backup.json`, the manifest, first; then the segment "
        "and hint files; then `users.json`). Restore it with `filekv restore FILE --data-dir D`."
    ),
    "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
    "headers": {
        "Content-Disposition": {
            "description": 'attachment; filename="filekv-backup-`<revision>`.tar"',
            "schema": {"type": "string"},
        },
        "X-Filekv-Revision": {
            "description": "The backup's revision: every write up to it is in it, none after.",
            "schema": {"type": "integer"},
        },
    },
}


@router.get(
    "/backup",
    summary="Download a backup (admins only)",
    response_class=Response,
    responses={
        200: ARCHIVE,
        401: UNAUTHORIZED,
        403: ADMINS_ONLY,
        429: {**error("A backup is already streaming (one at a time)."), "headers": RETRY_AFTER},
        500: error("The store found damaged data or an I/O error while taking the backup."),
        503: STORE_FAILED,
        507: error("The disk is full: the active segment could not be sealed."),
    },
)
async def backup(admin: AdminDep, store: StoreDep, backups: BackupsDep) -> Response:
    """A consistent copy of the store as of one revision, streamed while writes go on: every
    write acknowledged before that revision is in it, none after. Every record's checksum is
    verified before the first byte is sent. One backup at a time."""
    return await backups.start(store, admin.username)
