"""The CLI's stored tokens: ``$XDG_CONFIG_HOME/filekv/credentials.json``, one per server URL.

The file is ``{"tokens": {"<url>": "<token>"}}``, mode 0600 in a 0700 directory. It is never
rewritten in place: a temp file is created with mode 0600 (``O_EXCL``, so no moment exists where
it is readable by others), written, fsynced and renamed over the old one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def credentials_path() -> Path:
    """Where the tokens live (``$XDG_CONFIG_HOME``, else ``~/.config``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "filekv" / "credentials.json"


def normalize_url(url: str) -> str:
    """The key a URL is stored under: without a trailing slash."""
    return url.rstrip("/")


def _load(path: Path) -> dict[str, str]:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # an unreadable or damaged file holds no usable token; the next login rewrites it
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, dict):
        return {}
    return {str(k): v for k, v in tokens.items() if isinstance(v, str)}


def _save(path: Path, tokens: dict[str, str]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file with O_EXCL and mode 0600 whatever the umask.
    fd, temp = tempfile.mkstemp(prefix=".credentials.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump({"tokens": tokens}, file, indent=2, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def get_token(url: str) -> str | None:
    """The token stored for ``url``, if any."""
    return _load(credentials_path()).get(normalize_url(url))


def store_token(url: str, token: str) -> Path:
    """Keep ``token`` for ``url`` (replacing an older one); the file's path."""
    path = credentials_path()
    tokens = _load(path)
    tokens[normalize_url(url)] = token
    _save(path, tokens)
    return path


def remove_token(url: str) -> bool:
    """Forget the token of ``url``; whether there was one."""
    path = credentials_path()
    tokens = _load(path)
    if tokens.pop(normalize_url(url), None) is None:
        return False
    _save(path, tokens)
    return True
