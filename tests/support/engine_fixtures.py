"""What engine tests import about their fixtures: ``FAST``, the ``open_store``/``reopen`` types.

The fixtures themselves live in ``tests/engine/conftest.py``; a test module must not import from
a ``conftest``: ``from conftest import`` finds whichever directory's ``conftest`` pytest imported
last (``pytest tests/engine tests/client`` imported the client's, and every engine module that
took ``OpenStore`` from it failed to collect). So the names tests need live here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from filekv.engine import Store

OpenStore = Callable[..., Store]  # the ``open_store`` fixture: open a checked store at a path
Reopen = Callable[..., Store]  # the ``reopen`` fixture: close a store and open it again

# Options every test store uses unless it says otherwise: no fsync (speed), no background
# compaction, so a test sees exactly the records it wrote, and no change history kept by
# compaction (watch_history=0), so that a compaction merges every sealed segment (the tests of
# the change feed, tests/engine/test_changes.py, set it themselves).
FAST: dict[str, Any] = {"fsync": "never", "auto_compact": False, "watch_history": 0}
