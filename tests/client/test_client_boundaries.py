"""The client stands alone: it imports httpx, never the server (filekv.engine, filekv.service)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import filekv.client

FORBIDDEN = ("fastapi", "starlette", "uvicorn", "pydantic", "filekv.engine", "filekv.service")
CLIENT_DIR = Path(filekv.client.__file__).parent


def test_client_boundaries_importing_client_loads_no_server() -> None:
    code = (
        "import sys, filekv.client\n"
        f"bad = sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing filekv.client loaded: {result.stdout}"


def test_client_boundaries_modules_import_no_server() -> None:
    sources = sorted(CLIENT_DIR.glob("*.py"))
    assert len(sources) >= 5
    offenders = []
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{source.name}: {name}"
                for name in names
                if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)
            ]
    assert not offenders, offenders


def test_client_boundaries_plain_http_loads_no_ca_bundle_and_trusts_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client of an ``http://`` URL skips loading the CA bundle (most of its start-up cost);
    the context it hands httpx instead still verifies, and trusts no certificate at all. With
    a proxy in the environment (perhaps reached over TLS), httpx's default is kept."""
    import os
    import ssl

    from filekv.client._protocol import tls_verify

    for name in [name for name in os.environ if name.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)

    assert tls_verify("https://kv.example:8443") is True
    assert tls_verify("HTTPS://kv.example") is True
    bare = tls_verify("http://127.0.0.1:8000")
    assert isinstance(bare, ssl.SSLContext)
    assert bare.verify_mode == ssl.CERT_REQUIRED and bare.check_hostname
    assert bare.cert_store_stats()["x509_ca"] == 0
    monkeypatch.setenv("HTTPS_PROXY", "https://proxy.example:3128")
    assert tls_verify("http://127.0.0.1:8000") is True
