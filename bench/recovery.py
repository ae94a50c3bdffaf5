"""Reopening a store whose newest segment ends in a damaged tail: format version 1 against 2.

Recovery must tell a torn tail from damage in the middle, so it looks past the damage for a good
record. Version 1 had no record boundary marker: it tried every byte offset and, wherever the
four bytes there read as a length that fits, hashed that many bytes (quadratic in the tail).
Version 2 looks only where its segment's random marker occurs (``bytes.find``; linear).

The damaged tail is what a hostile value leaves: bytes whose every aligned 4-byte word reads as a
length of a quarter of the tail, so that version 1 hashes long stretches from most offsets. Both
versions are read by the current code (version 1 segments are still read as they are), side by
side, on the same bytes after the same one good record.

    .venv/bin/python bench/recovery.py    # prints a table, writes bench/results/recovery.txt
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import RESULTS_DIR, machine_info

from filekv.engine import Store
from filekv.engine.record import (
    PUT,
    SegmentHeader,
    encode_record,
    encode_record_v1,
    encode_segment_header,
    encode_segment_header_v1,
)
from filekv.engine.segment import new_marker


def hostile_tail(size: int) -> bytes:
    word = (size // 4).to_bytes(4, "little")
    return word * (size // 4)


def build(folder: Path, version: int, tail: bytes) -> None:
    folder.mkdir(parents=True)
    if version == 1:
        header = encode_segment_header_v1(SegmentHeader(1, 0, 0, version=1))
        record = encode_record_v1(1, [(PUT, b"acknowledged", b"must survive")])
    else:
        marker = new_marker()
        header = encode_segment_header(SegmentHeader(1, 0, 0, marker))
        record = encode_record(marker, 1, [(PUT, b"acknowledged", b"must survive")])
    (folder / "0000000001.seg").write_bytes(header + record + tail)


def time_open(root: Path, version: int, tail: bytes, repeat: int) -> float:
    samples = []
    for attempt in range(repeat):
        folder = root / f"v{version}-{len(tail)}-{attempt}"
        build(folder, version, tail)
        started = time.perf_counter()
        with Store.open(folder, fsync="never", auto_compact=False) as db:
            assert db.get("acknowledged") == b"must survive"
        samples.append(time.perf_counter() - started)
        shutil.rmtree(folder)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-kib", default="64,128,256,512")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(size) << 10 for size in args.sizes_kib.split(",")]
    root = Path(tempfile.mkdtemp(prefix="filekv-bench-recovery-"))
    lines = [
        "Reopen with a hostile damaged tail (median of "
        f"{args.repeat}; one good record, then the tail)",
        "machine: " + ", ".join(f"{k}={v}" for k, v in machine_info(root).items()),
        "",
        "| tail | version 1 | version 2 | v1 / v2 |",
        "| ---: | ---: | ---: | ---: |",
    ]
    try:
        for size in sizes:
            tail = hostile_tail(size)
            v1 = time_open(root, 1, tail, args.repeat)
            v2 = time_open(root, 2, tail, args.repeat)
            lines.append(
                f"| {size >> 10} KiB | {v1 * 1000:,.1f} ms | {v2 * 1000:,.2f} ms "
                f"| {v1 / v2:,.0f}x |"
            )
            print(lines[-1], flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "recovery.txt").write_text(text)
    os.sync()


if __name__ == "__main__":
    main()
