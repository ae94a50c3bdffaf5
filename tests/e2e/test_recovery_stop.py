"""SIGTERM during a long recovery stops the server at once, exit 0, files untouched.

Issue 17, finding 1: a restarted server spent minutes in recovery at 100 % CPU, and SIGTERM did
not stop it (recovery ran on the event loop, and nothing asked it to stop). The slow recovery
here is a version 1 segment (an older filekv's) with a 24 MiB damaged tail: version 1 has no
record marker, so the search for a good record after the damage tries every offset.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from support.server import free_port, serve_command

from filekv.engine.record import PUT, SegmentHeader, encode_record_v1, encode_segment_header_v1


def _v1_segment_with_long_damaged_tail(path: Path) -> None:
    header = encode_segment_header_v1(SegmentHeader(1, 0, 0, version=1))
    record = encode_record_v1(1, [(PUT, b"k", b"v")])
    damaged = b"\x01" * (24 << 20)  # not zeros: no write-back hole, the search must run
    path.mkdir()
    (path / "0000000001.seg").write_bytes(header + record + damaged)


def test_sigterm_during_recovery_exits_promptly_with_status_0(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _v1_segment_with_long_damaged_tail(data_dir)
    before = sorted(os.listdir(data_dir))
    size = os.path.getsize(data_dir / "0000000001.seg")
    process = subprocess.Popen(
        serve_command(data_dir, free_port()),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # uvicorn says this just before the lifespan opens the store
            if b"Waiting for application startup" in line:
                break
        time.sleep(1.0)
        assert process.poll() is None, "the server finished recovery too soon for this test"
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        took = time.monotonic() - sent
        output = process.stdout.read().decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, output
    assert "stopped while opening" in output, output
    # Recovery had not cut anything yet: no .broken file, the segment as it was.
    assert sorted(name for name in os.listdir(data_dir) if name != "LOCK") == before
    assert os.path.getsize(data_dir / "0000000001.seg") == size
    # Bounded by the 30 s wait above; the figure goes in the failure message for the record.
    assert took < 10, f"took {took:.1f} s to stop after SIGTERM"
