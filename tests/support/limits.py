"""Resource limits for the CLI's child processes: a full disk, as far as the writer can tell."""

from __future__ import annotations

import resource
import signal
from collections.abc import Callable


def limit_file_size(limit: int) -> Callable[[], None]:
    """A ``preexec_fn``: files the child writes may grow to ``limit`` bytes, then a write fails
    with EFBIG (a full disk, as far as the writer can tell; SIGXFSZ ignored, so not killed)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply
