"""``backup()`` of both clients (``connect``) on a real server: the archive written to ``out``
restores to the store as of its revision; anyone but an admin is refused before a byte is
written; an archive cut short is ``Unavailable`` (an ``httpx.MockTransport``: a real server cuts
one only on a timeout or a SIGTERM, ``tests/e2e/test_e2e_backup.py`` provokes those)."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from clientkit import PASSWORD, BigPage, Body, Connect, add_admin, login_new_user, unique
from support.server import Server

from filekv.client import FilekvError, Forbidden, Unauthorized, Unavailable
from filekv.engine import Store
from filekv.restore import restore


def test_client_backup_writes_an_archive_that_restores(
    connect: Connect, server: Server, tmp_path: Path
) -> None:
    prefix = unique("backup") + "/"
    kv = connect(server.url)
    kv.login(add_admin(server), PASSWORD)
    written = {f"{prefix}{n:02d} ü/日": f"value {n} ✈" for n in range(30)}
    kv.batch([("put", key, value) for key, value in written.items()])
    kv.put(prefix + "gone", "soon")
    kv.delete(prefix + "gone")
    revision = kv.put(prefix + "last", "written last")  # users are not in the store: no write
    written[prefix + "last"] = "written last"
    started: list[int] = []
    progress: list[int] = []
    archive = tmp_path / "filekv.tar"
    with archive.open("wb") as out:
        done = kv.backup(out, on_start=started.append, progress=progress.append)
    assert done == {"revision": revision, "bytes": archive.stat().st_size}
    assert started == [done["bytes"]] and sum(progress) == done["bytes"]
    with archive.open("rb") as file:
        restore(file, archive.name, tmp_path / "restored")
    with Store.open(tmp_path / "restored") as db:
        assert db.revision == revision
        held = {key: (db.get(key) or b"").decode() for key in db.scan(prefix)}
    assert held == written


@pytest.mark.parametrize(
    ("who", "error", "status"), [("anonymous", Unauthorized, 401), ("user", Forbidden, 403)]
)
def test_client_backup_refused_to_all_but_an_admin(
    connect: Connect, server: Server, who: str, error: type[FilekvError], status: int
) -> None:
    kv = connect(server.url)
    if who == "user":
        login_new_user(kv)
    out = io.BytesIO()
    with pytest.raises(error) as raised:
        kv.backup(out, on_start=lambda total: pytest.fail("started"))
    assert (type(raised.value), raised.value.status) == (error, status)
    if status == 403:
        assert raised.value.detail == "only an admin may do this"
    assert out.getvalue() == b""  # nothing written


def test_client_backup_cut_short_is_unavailable(connect: Connect) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/admin/backup"
        # The read timeout is the backup's, not the client's 10 s: the server verifies first.
        assert request.extensions["timeout"]["read"] == 600.0
        headers = {"content-length": "1000", "x-filekv-revision": "7"}
        return httpx.Response(200, headers=headers, stream=Body([b"x" * 300, b"x" * 100]))

    kv = connect("http://filekv.test", transport=httpx.MockTransport(answer))
    out = io.BytesIO()
    with pytest.raises(Unavailable, match="cut off after 400 of 1000 bytes"):
        kv.backup(out)
    assert out.getvalue() == b"x" * 400  # what arrived: the caller renames only on success


@pytest.mark.parametrize("status", [404, 302, 500])
def test_client_backup_reads_little_of_an_answer_that_is_not_a_backup(
    connect: Connect, status: int
) -> None:
    """A --url naming a large page: the error is raised after at most 64 KiB of it is read, not
    once the whole is in memory; nothing is written."""
    page = BigPage()

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"content-type": "text/html"}, stream=page)

    kv = connect("http://filekv.test", transport=httpx.MockTransport(answer))
    out = io.BytesIO()
    with pytest.raises(FilekvError) as raised:
        kv.backup(out)
    assert raised.value.status == status
    assert page.pulled <= 1 << 20
    assert len(raised.value.detail) <= 64 << 10
    assert out.getvalue() == b""
