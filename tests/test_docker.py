"""The Dockerfile and compose.yaml agree with the project: entry point, port, data volume, health.

There is no Docker engine on the CI machines, so the image is not built: the Dockerfile is parsed
and checked against pyproject.toml and Settings, its healthcheck command is run against a real
server, and ``docker-compose config`` validates compose.yaml.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from filekv.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "Dockerfile ends inside a continuation"
    return instructions


INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text())


def args_of(keyword: str) -> list[str]:
    return [arguments for kw, arguments in INSTRUCTIONS if kw == keyword]


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) instruction's argv; shell form is refused (no signals)."""
    argv = json.loads(arguments)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def env() -> dict[str, str]:
    values: dict[str, str] = {}
    for arguments in args_of("ENV"):
        for pair in shlex.split(arguments):
            name, _, value = pair.partition("=")
            values[name] = value
    return values


def healthcheck_argv() -> list[str]:
    (arguments,) = args_of("HEALTHCHECK")
    _, _, command = arguments.partition("CMD ")
    return exec_form(command)


@functools.cache
def compose_config() -> dict[str, Any]:
    """compose.yaml as docker-compose itself resolves it (``docker-compose config``)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (make test installs Debian's package)")
    yaml = pytest.importorskip("yaml", reason="PyYAML (a schemathesis dependency) is missing")
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "config"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_docker_compose_config_passes() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (make test installs Debian's package)")
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_docker_base_image_is_python_311_slim() -> None:
    assert args_of("FROM") == ["python:3.11-slim"]


def test_docker_runs_as_a_non_root_user() -> None:
    users = args_of("USER")
    assert users, "no USER: the server would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert any("useradd" in run and user in run for run in args_of("RUN")), "user never created"
    # the USER comes before the process starts, i.e. it is in force for ENTRYPOINT/CMD
    keywords = [kw for kw, _ in INSTRUCTIONS]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_docker_entrypoint_runs_filekv_serve() -> None:
    (entrypoint,) = args_of("ENTRYPOINT")
    (cmd,) = args_of("CMD")
    argv = exec_form(entrypoint) + exec_form(cmd)
    assert argv == ["filekv", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["filekv"] == "filekv.cli:main"


def test_docker_port_matches_settings_env_and_compose() -> None:
    default_port = Settings.model_fields["port"].default
    assert args_of("EXPOSE") == [str(default_port)]
    assert env()["FILEKV_PORT"] == str(default_port)
    assert env()["FILEKV_HOST"] == "0.0.0.0"
    service = compose_config()["services"]["filekv"]
    published = {_published(port) for port in service["ports"]}
    # Loopback only unless told otherwise (FILEKV_PUBLISH), as the README says.
    assert published == {("127.0.0.1", default_port)}
    assert service["environment"]["FILEKV_PORT"] == str(default_port)


def _published(port: Any) -> tuple[str, int]:
    """(host address, container port) of a ``ports`` entry, long or short form."""
    if isinstance(port, dict):  # docker compose v2: target, published, host_ip
        return str(port.get("host_ip", "0.0.0.0")), int(port["target"])
    # docker-compose v1: "[HOST:]PUBLISHED:TARGET[/PROTOCOL]"
    rest, _, target = str(port).partition("/")[0].rpartition(":")
    return rest.rpartition(":")[0] or "0.0.0.0", int(target)


def test_docker_volume_is_the_data_dir() -> None:
    (volume,) = args_of("VOLUME")
    path = json.loads(volume)[0] if volume.startswith("[") else volume
    assert env()["FILEKV_DATA_DIR"] == path == "/data"
    assert any("chown" in run and path in run for run in args_of("RUN")), "volume not writable"
    service = compose_config()["services"]["filekv"]
    mounts = service["volumes"]
    targets = {m["target"] if isinstance(m, dict) else m.split(":")[1] for m in mounts}
    assert targets == {path}
    assert service["environment"]["FILEKV_DATA_DIR"] == path


def test_docker_env_names_are_settings() -> None:
    for name in env():
        if name.startswith("FILEKV_"):
            assert name.removeprefix("FILEKV_").lower() in Settings.model_fields, name


def test_docker_copies_only_what_exists_and_is_not_ignored() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "data"} <= ignored
    for arguments in args_of("COPY"):
        *sources, _ = arguments.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") not in ignored, source


def test_docker_healthcheck_hits_healthz_on_the_port() -> None:
    argv = healthcheck_argv()
    assert argv[0] == "python"  # no curl in the slim image
    assert "/healthz" in argv[-1]
    assert str(Settings.model_fields["port"].default) in argv[-1]
    compose_test = compose_config()["services"]["filekv"]["healthcheck"]["test"]
    assert compose_test == ["CMD", *argv]


def test_docker_healthcheck_command_works_against_a_real_server(
    make_server: Callable[..., Any],
) -> None:
    argv = [sys.executable, *healthcheck_argv()[1:]]
    server = make_server()
    up = subprocess.run(argv, env={**os.environ, "FILEKV_PORT": str(server.port)}, timeout=30)
    assert up.returncode == 0
    server.stop()
    down = subprocess.run(
        argv,
        env={**os.environ, "FILEKV_PORT": str(server.port)},
        capture_output=True,
        timeout=30,
    )
    assert down.returncode != 0


def test_docker_image_gets_the_docs_assets_and_builds_without_warnings(tmp_path: Path) -> None:
    # The image installs the package with `pip install .`: the wheel must carry every file of
    # service/static (Swagger UI, ReDoc), or /docs is blank without internet in the container.
    # And the build says nothing deprecated (pyproject's licence as an SPDX string, not a table).
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    assert "SetuptoolsDeprecationWarning" not in built.stdout + built.stderr
    (wheel,) = tmp_path.glob("filekv-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    static = ROOT / "src" / "filekv" / "service" / "static"
    expected = {f"filekv/service/static/{path.name}" for path in static.iterdir()}
    assert "filekv/service/static/swagger-ui-bundle.js" in expected
    assert expected <= packaged
