"""Helpers the test suites share, one module per thing they hold (issue 16).

Every test directory imports them as ``support.<module>``: ``tests/`` is on ``sys.path`` because
pytest inserts the directory of ``tests/conftest.py`` (there is no ``tests/__init__.py``), and the
scripts here that other tests run by path put it there themselves. A package, so that no helper
shares a top-level name with another directory's module (each test directory has a ``conftest``).

* ``server``: a real ``filekv serve`` subprocess (``Server``), logging in to it, reading keys back.
* ``planted``: values made of valid encoded records, which must never steer recovery.
* ``storefiles``: a store's folder from the outside: segment and hint files, copies, damage,
  and every key read back.
* ``engine_fixtures``: ``FAST`` and the types of the engine fixtures, which test modules import
  (never from a ``conftest``).
* ``disk``: ``SimDisk``, the one simulated disk behind the engine's ``FileIO``: power cuts, I/O
  errors, and what a power cut may leave on disk.
* ``workload``: a seeded engine workload (with the store options it runs with) and the model of
  what the store acknowledged.
* ``power_loss``: runs of that workload on ``SimDisk`` cut at an operation, images checked.
* ``io_faults``: runs of that workload with one operation failing (EIO, ENOSPC), disk checked.
* ``linearizability``: a zipfian key sampler and the per-key interval check of reads.
* ``history``: replaying the HTTP crash writers' logs into what may be on disk afterwards.
* ``crash_client``: the HTTP crash writer process (``test_crash_http`` runs it by path).
* ``crash_writer``: the engine crash writer process (``engine/test_crash`` runs it by path).

``SOAK`` (``FILEKV_SOAK=1``, ``make soak``) asks the long suites for many more rounds and seeds.
"""

from __future__ import annotations

import os
from typing import Final

SOAK: Final = os.environ.get("FILEKV_SOAK") == "1"
