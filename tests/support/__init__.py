"""Helpers the test suites share, one module per thing they hold (issue 16).

Every test directory imports them as ``support.<module>``: ``tests/`` is on ``sys.path`` because
pytest inserts the directory of ``tests/conftest.py`` (there is no ``tests/__init__.py``), and the
scripts here that other tests run by path put it there themselves. A package, so that no helper
shares a top-level name with another directory's module (each test directory has a ``conftest``).

* ``server``: a real ``filekv serve`` subprocess, logging in to it, reading keys back.

``SOAK`` (``FILEKV_SOAK=1``, ``make soak``) asks the long suites for many more rounds and seeds.
"""

from __future__ import annotations

import os
from typing import Final

SOAK: Final = os.environ.get("FILEKV_SOAK") == "1"
