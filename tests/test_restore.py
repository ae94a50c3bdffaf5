"""Backup archives and ``filekv.restore``: a round trip, and every bad archive refused unwritten.

Each attack is an archive built by hand (``tarfile``, as an attacker would) around a real
manifest; each must be refused with a message naming the archive and the offset, leaving the data
directory as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from filekv.backup_archive import (
    MANIFEST_NAME,
    MAX_MEMBERS,
    ArchiveError,
    archive_size,
    iter_archive,
    stage_backup,
)
from filekv.engine import Store
from filekv.restore import RestoreRefused, restore
from filekv.service.users import UserFile

FAST = {"fsync": "never", "auto_compact": False, "segment_bytes": 4096}


def _store_with_data(path: Path, keys: int = 120) -> dict[str, bytes]:
    with Store.open(path, **FAST) as db:
        for i in range(keys):
            db.put(f"k{i:03d}", f"value {i}".encode() * 4)
        db.delete("k007")
        UserFile(path).add("root", "$argon2id$v=19$m=19456,t=2,p=1$x$y", role="admin")
        return {key: db.get(key) or b"" for key in db.scan()}


def _archive(store_dir: Path) -> bytes:
    with Store.open(store_dir, **FAST) as db:
        staging, manifest = stage_backup(db)
        try:
            data = b"".join(iter_archive(staging, manifest))
        finally:
            shutil.rmtree(staging)
    assert len(data) == archive_size(manifest)
    return data


def _restore(data: bytes, target: Path, **options: object) -> object:
    return restore(io.BytesIO(data), "in.tar", target, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, bytes]]:
    source = tmp_path_factory.mktemp("source")
    expected = _store_with_data(source)
    return _archive(source), expected


def _members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(info, tar.extractfile(info).read()) for info in tar]  # type: ignore[union-attr]


def _rebuild(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return out.getvalue()


def _with_manifest(
    members: list[tuple[tarfile.TarInfo, bytes]], *, seal: bool = True, **changes: object
) -> bytes:
    """The archive with its manifest's fields replaced by ``changes`` (a field given None is
    left out); with ``seal``, its manifest_sha256 made right again (the rule as documented)."""
    info, content = members[0]
    manifest = {**json.loads(content), **changes}
    manifest = {key: value for key, value in manifest.items() if value is not None}
    if seal and "manifest_sha256" in manifest:
        manifest["manifest_sha256"] = "0" * 64
        blank = json.dumps(manifest).encode()
        manifest["manifest_sha256"] = hashlib.sha256(blank).hexdigest()
    encoded = json.dumps(manifest).encode()
    info.size = len(encoded)
    return _rebuild([(info, encoded), *members[1:]])


def _format_1(data: bytes, **changes: object) -> bytes:
    """``data`` as the code before the checksums wrote it: format 1, no SHA-256 anywhere."""
    members = _members(data)
    files = [
        {k: v for k, v in f.items() if k != "sha256"} for f in json.loads(members[0][1])["files"]
    ]
    return _with_manifest(members, format=1, manifest_sha256=None, files=files, **changes)


def _flipped(data: bytes, at: int) -> bytes:
    """``data`` with the lowest bit of its byte at ``at`` flipped."""
    flipped = bytearray(data)
    flipped[at] ^= 0x01
    return bytes(flipped)


def _file(
    name: str, content: bytes = b"x", kind: bytes = tarfile.REGTYPE
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(content) if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info, content


def test_restore_round_trip_brings_back_keys_revision_and_users(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path
) -> None:
    data, expected = archive
    result = _restore(data, tmp_path / "restored")
    with Store.open(tmp_path / "restored", **FAST) as db:
        assert {key: db.get(key) for key in db.scan()} == expected
        assert result.revision == db.revision and result.keys == len(expected)  # type: ignore[attr-defined]
    assert UserFile(tmp_path / "restored").find("root") is not None
    assert not [n for n in os.listdir(tmp_path / "restored") if n.startswith(".")]


def test_restore_refuses_a_directory_that_is_not_empty_unless_forced(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path
) -> None:
    data, expected = archive
    target = tmp_path / "target"
    with Store.open(target, **FAST) as db:
        db.put("old", b"gone after a forced restore")
    (target / "notes.txt").write_text("not ours")
    with pytest.raises(RestoreRefused, match="not empty"):
        _restore(data, target)
    _restore(data, target, force=True)
    with Store.open(target, **FAST) as db:
        assert db.get("old") is None and len(db) == len(expected)
    assert (target / "notes.txt").read_text() == "not ours"  # only the store's files replaced


def test_restore_refuses_a_directory_in_use(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path
) -> None:
    with Store.open(tmp_path / "busy", **FAST) as db:
        db.put("mine", b"1")
        with pytest.raises(RestoreRefused, match="in use"):
            _restore(archive[0], tmp_path / "busy", force=True)
        assert db.get("mine") == b"1"


def test_restore_into_a_new_directory_that_fails_leaves_no_directory(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError):
        _restore(b"\0" * 2048, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_restore_names_the_damaged_member_and_its_offset(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path
) -> None:
    data = bytearray(archive[0])
    segment = next(info for info, _ in _members(bytes(data)) if info.name == "0000000001.seg")
    data[segment.offset_data + 200] ^= 0xFF  # inside a record past the segment's header
    with pytest.raises(ArchiveError) as raised:
        _restore(bytes(data), tmp_path / "target")
    message = str(raised.value)
    assert message.startswith("in.tar: member 0000000001.seg is damaged at offset "), message
    found = re.search(r"damaged at offset (\d+) \(offset (\d+) of the archive\)", message)
    assert found is not None, message
    in_member, in_archive = int(found[1]), int(found[2])
    assert 0 < in_member <= 200  # the damaged record starts at or before the flipped byte
    assert in_archive == segment.offset_data + in_member
    assert not (tmp_path / "target").exists()


def test_restore_refuses_a_damaged_hint(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path
) -> None:
    data = bytearray(archive[0])
    hint = next(info for info, _ in _members(bytes(data)) if info.name.endswith(".hint"))
    data[hint.offset_data + 30] ^= 0xFF
    with pytest.raises(ArchiveError, match=rf"member {hint.name} is damaged"):
        _restore(bytes(data), tmp_path / "target")


def test_restore_refuses_a_damaged_tar_header_naming_its_offset(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path
) -> None:
    data = bytearray(archive[0])
    segment = next(info for info, _ in _members(bytes(data)) if info.name.endswith(".seg"))
    data[segment.offset + 3] ^= 0xFF  # inside the member's name: the header checksum fails
    with pytest.raises(
        ArchiveError, match=rf"in.tar: damaged tar header .* \(offset {segment.offset}\)"
    ):
        _restore(bytes(data), tmp_path / "target")


@pytest.mark.parametrize("cut", [100, 700, 5000, -1024 - 1])
def test_restore_refuses_a_truncated_archive(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path, cut: int
) -> None:
    data = archive[0]
    end = len(data) - 10240  # past the last member, in the end-of-archive padding
    with pytest.raises(ArchiveError, match=r"in.tar: .*(ends at offset|without)"):
        _restore(data[: cut if cut > 0 else end + cut], tmp_path / "target")


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_file("../../escape.seg"), "not in the manifest"),
        (_file("/etc/cron.d/x"), "not in the manifest"),
        (_file("sub/0000000001.seg"), "not in the manifest"),
        (_file("0000000099.seg", b"x"), "not in the manifest"),
        (_file("0000000001.seg", kind=tarfile.SYMTYPE), "not a regular file"),
        (_file("0000000001.seg", kind=tarfile.LNKTYPE), "not a regular file"),
        (_file("0000000001.seg", kind=tarfile.CHRTYPE), "not a regular file"),
        (_file("0000000001.seg", kind=tarfile.DIRTYPE), "not a regular file"),
        (_file("0000000001.seg", kind=tarfile.FIFOTYPE), "not a regular file"),
    ],
    ids=[
        "dotdot",
        "absolute",
        "subdir",
        "unlisted",
        "symlink",
        "hardlink",
        "device",
        "dir",
        "fifo",
    ],
)
def test_restore_refuses_a_member_that_is_not_a_listed_file(
    archive: tuple[bytes, dict[str, bytes]],
    tmp_path: Path,
    member: tuple[tarfile.TarInfo, bytes],
    why: str,
) -> None:
    members = _members(archive[0])
    data = _rebuild([members[0], member, *members[1:]])
    with pytest.raises(ArchiveError, match=why):
        _restore(data, tmp_path / "target")
    assert not (tmp_path / "target").exists()
    assert not (tmp_path / "escape.seg").exists()


def test_restore_refuses_a_member_twice_or_of_another_size(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path
) -> None:
    members = _members(archive[0])
    with pytest.raises(ArchiveError, match="a second copy of"):
        _restore(_rebuild([*members[:2], members[1], *members[2:]]), tmp_path / "a")
    info, content = members[1]
    longer = tarfile.TarInfo(info.name)
    longer.size = info.size + 512
    with pytest.raises(ArchiveError, match="the manifest says"):
        _restore(
            _rebuild([members[0], (longer, content + bytes(512)), *members[2:]]), tmp_path / "b"
        )


def test_restore_refuses_an_archive_that_is_not_a_backup(tmp_path: Path) -> None:
    plain = _rebuild([_file("0000000001.seg")])
    with pytest.raises(ArchiveError, match="not a filekv backup"):
        _restore(plain, tmp_path / "a")
    with pytest.raises(ArchiveError, match="gzip"):
        _restore(b"\x1f\x8b" + bytes(1000), tmp_path / "b")
    with pytest.raises(ArchiveError, match="not a tar archive"):
        _restore(b"hello" * 200, tmp_path / "c")


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"format": 3}, "format"),
        ({"revision": -1}, "revision"),
        ({"files": [{"name": "../x", "bytes": 1}]}, "files"),
        (
            {"files": [{"name": f"{i:010d}.seg", "bytes": 1} for i in range(MAX_MEMBERS + 1)]},
            "files",
        ),
        ({"extra": 1}, "extra"),
    ],
    ids=["format", "revision", "traversal", "too-many-members", "unknown-field"],
)
def test_restore_refuses_a_bad_manifest(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path, changes: dict[str, object], why: str
) -> None:
    data = _with_manifest(_members(archive[0]), **changes)
    with pytest.raises(ArchiveError, match=rf"damaged manifest: {why}"):
        _restore(data, tmp_path / "target")


def test_restore_refuses_more_bytes_than_the_limit_before_writing_any(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path
) -> None:
    members = _members(archive[0])
    # A manifest announcing a petabyte: refused on reading it, against the free space.
    files = json.loads(members[0][1])["files"]
    files[0]["bytes"] = 1 << 50
    with pytest.raises(ArchiveError, match="over the limit"):
        _restore(_with_manifest(members, files=files), tmp_path / "a")
    with pytest.raises(ArchiveError, match="over the limit of 100"):
        _restore(archive[0], tmp_path / "b", max_bytes=100)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_restore_refuses_a_manifest_over_its_size_limit(tmp_path: Path) -> None:
    info = tarfile.TarInfo(MANIFEST_NAME)
    info.size = 64 << 20
    header = info.tobuf(tarfile.GNU_FORMAT)
    with pytest.raises(ArchiveError, match="manifest of 67,108,864 bytes"):
        _restore(header + bytes(1024), tmp_path / "a")


def test_a_backup_carries_the_sha256_of_users_json_and_of_its_manifest(
    archive: tuple[bytes, dict[str, bytes]],
) -> None:
    members = dict((info.name, content) for info, content in _members(archive[0]))
    manifest = json.loads(members[MANIFEST_NAME])
    assert manifest["format"] == 2
    users = next(f for f in manifest["files"] if f["name"] == "users.json")
    assert users["sha256"] == hashlib.sha256(members["users.json"]).hexdigest()
    # Segments and hints carry checksums of their own: no SHA-256 for them.
    assert all("sha256" not in f for f in manifest["files"] if f["name"] != "users.json")
    # The manifest's digest is of its bytes as written, with the digest's value blanked.
    raw, digest = members[MANIFEST_NAME], manifest["manifest_sha256"]
    assert hashlib.sha256(raw.replace(digest.encode(), b"0" * 64)).hexdigest() == digest


def test_restore_refuses_users_json_with_a_bit_flipped_anywhere(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path
) -> None:
    """A flip in a password hash's salt (the right password is then refused) or in a name (the
    user renamed) still parses: only the SHA-256 tells. Each restore is refused, leaving
    nothing."""
    data = archive[0]
    info, users = next((i, c) for i, c in _members(data) if i.name == "users.json")
    salt_at = users.index(b"$x$y") + 1  # the salt of root's (fake) argon2id hash
    name_at = users.index(b'"root"') + 2
    spread = range(0, info.size, max(1, info.size // 25))
    for at in sorted({salt_at, name_at, info.size - 1, *spread}):
        with pytest.raises(ArchiveError) as raised:
            _restore(_flipped(data, info.offset_data + at), tmp_path / "target")
        assert str(raised.value) == (
            "in.tar: member users.json is damaged: its SHA-256 is not the one the manifest "
            f"gives (offset {info.offset_data})"
        )
        assert not (tmp_path / "target").exists()


def test_restore_refuses_a_manifest_with_any_bit_flipped_or_a_figure_changed(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path
) -> None:
    data = archive[0]
    raw = _members(data)[0][1]
    digest_field = re.search(rb'"manifest_sha256": *"[0-9a-f]{64}"', raw)
    assert digest_field is not None
    for at in range(len(raw)):  # the manifest's bytes follow its 512-byte header
        with pytest.raises(ArchiveError, match=r"^in.tar: damaged manifest: ") as raised:
            _restore(_flipped(data, 512 + at), tmp_path / "target")
        assert not (tmp_path / "target").exists()
        if not digest_field.start() <= at < digest_field.end():
            # The digest is checked before any field: a flip elsewhere is called what it is,
            # not the field it happened to break ("keys: Field required").
            assert "does not match its manifest_sha256" in str(raised.value), at
    # The audit's case: "keys" edited by hand, the same length.
    keys = json.loads(raw)["keys"]
    edited = raw.replace(f'"keys": {keys},'.encode(), f'"keys": {keys - 10},'.encode())
    assert edited != raw and len(edited) == len(raw)
    with pytest.raises(ArchiveError, match="does not match its manifest_sha256"):
        _restore(data.replace(raw, edited), tmp_path / "target")
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"manifest_sha256": None}, "format 2 without its manifest_sha256"),
        ({"manifest_sha256": "0" * 64}, "does not match its manifest_sha256"),
        ({"manifest_sha256": "a" * 63}, "manifest_sha256: String should match"),
        ({"format": 1}, "does not match its manifest_sha256"),
    ],
    ids=["no-digest", "zero-digest", "short-digest", "format-1-with-digest"],
)
def test_restore_refuses_a_manifest_without_its_checksum_or_with_a_wrong_one(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path, changes: dict[str, object], why: str
) -> None:
    data = _with_manifest(_members(archive[0]), seal=False, **changes)
    with pytest.raises(ArchiveError, match=rf"^in.tar: damaged manifest: .*{why}"):
        _restore(data, tmp_path / "target")


def test_restore_refuses_a_format_2_manifest_listing_users_json_without_its_sha256(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path
) -> None:
    members = _members(archive[0])
    files = [
        {k: v for k, v in f.items() if k != "sha256"} for f in json.loads(members[0][1])["files"]
    ]
    data = _with_manifest(members, files=files)  # sealed: only the users' digest is missing
    with pytest.raises(
        ArchiveError, match=r"damaged manifest: users\.json listed without its sha256"
    ):
        _restore(data, tmp_path / "target")


def test_restore_accepts_a_format_1_archive_and_checks_its_figures(
    archive: tuple[bytes, dict[str, bytes]], tmp_path: Path
) -> None:
    """Archives written before the checksums restore as they did; their key count and
    revision are still checked against the restored store."""
    data, expected = archive
    result = _restore(_format_1(data), tmp_path / "old")
    assert result.keys == len(expected)  # type: ignore[attr-defined]
    with Store.open(tmp_path / "old", **FAST) as db:
        assert {key: db.get(key) for key in db.scan()} == expected
    assert UserFile(tmp_path / "old").find("root") is not None
    with pytest.raises(
        ArchiveError,
        match=rf"^in.tar: the restored store holds {len(expected)} keys; the manifest says "
        rf"{len(expected) - 10}$",
    ):
        _restore(_format_1(data, keys=len(expected) - 10), tmp_path / "fewer")
    with pytest.raises(ArchiveError, match="the manifest says 1,000"):
        _restore(_format_1(data, keys=1000), tmp_path / "more")
    assert not (tmp_path / "fewer").exists() and not (tmp_path / "more").exists()


def test_restore_counts_keys_expired_since_the_backup_as_the_manifest_does(
    tmp_path: Path,
) -> None:
    """The manifest counts the keys alive when the backup was taken; keys that expired since
    are not missing (the restored store holds them, expired)."""
    then = time.time() - 3600  # the backup is taken an hour ago, as far as TTLs go
    with Store.open(tmp_path / "source", clock=lambda: then, **FAST) as db:
        for i in range(20):
            db.put(f"forever{i}", b"x")
        for i in range(5):
            db.put(f"gone{i}", b"x", ttl=10)  # expired before the backup: not in its count
        then += 20
        for i in range(7):
            db.put(f"brief{i}", b"x", ttl=60)  # alive at the backup, expired by now
        assert len(db) == 27
    with Store.open(tmp_path / "source", clock=lambda: then, **FAST) as db:
        staging, manifest = stage_backup(db)
        try:
            data = b"".join(iter_archive(staging, manifest))
        finally:
            shutil.rmtree(staging)
    assert manifest.keys == 27
    result = _restore(data, tmp_path / "restored")
    assert result.keys == 20  # type: ignore[attr-defined]  # alive now
    with pytest.raises(ArchiveError, match=r"holds 32 keys, 12 of them expired; the manifest"):
        _restore(_format_1(data, keys=33), tmp_path / "more")
    with pytest.raises(ArchiveError, match=r"holds 32 keys, 12 of them expired; the manifest"):
        _restore(_format_1(data, keys=19), tmp_path / "fewer")


def test_restore_counts_keys_by_the_backup_servers_clock_not_this_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys expired at the backup (held, not swept yet) looked alive on a machine whose clock
    is behind, the count passed the manifest's, and a good archive was refused as damaged."""
    then = time.time() - 3600
    with Store.open(tmp_path / "source", clock=lambda: then, **FAST) as db:
        for i in range(20):
            db.put(f"forever{i}", b"x")
        for i in range(5):
            db.put(f"gone{i}", b"x", ttl=10)
    data = _archive(tmp_path / "source")  # by the real clock: the gone keys expired
    behind = then - 7 * 86_400  # a week behind: every TTL above is still running there
    monkeypatch.setattr(time, "time", lambda: behind)
    result = _restore(data, tmp_path / "restored")
    assert result.keys == 20  # type: ignore[attr-defined]


def test_restore_of_a_malformed_users_json_is_one_refusal_and_no_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A users.json that was malformed when the backup was taken matches its SHA-256: the
    parse refuses it, saying so once (the server's "logins are refused" log is not for this)."""
    _store_with_data(tmp_path / "source", keys=5)
    (tmp_path / "source" / "users.json").write_text('{"format": 1, "users": []}\n')
    data = _archive(tmp_path / "source")
    with pytest.raises(ArchiveError) as raised:
        _restore(data, tmp_path / "target")
    assert str(raised.value) == (
        "in.tar: member users.json is damaged: not a filekv users file "
        "(AttributeError: 'list' object has no attribute 'items')"
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not (tmp_path / "target").exists()
