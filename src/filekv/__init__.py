"""filekv: a crash-safe key-value store in its own files, served over HTTP."""

from __future__ import annotations

__version__ = "0.1.0"
