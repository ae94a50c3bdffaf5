"""The client verbs of ``filekv`` as a user runs them: real CLI processes against a real server.

One ``filekv serve`` per module; every verb, every exit code provoked for real, ``--json``, the
credentials file, and a transaction spread over separate CLI processes.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.server import FILEKV, Server, free_port, http_client, serve_command

import filekv.client._watch
from filekv import client_cli
from filekv.client import Client, ServerError, Unavailable

PASSWORD = "alice-secret-1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("cli-client")
    srv = Server(base / "data", base / "server.log", transaction_timeout=30)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def config_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config")


def run(
    server: Server | None,
    config: Path,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    url: str | None = None,
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    environ["XDG_CONFIG_HOME"] = str(config)
    environ["FILEKV_URL"] = url or (server.url if server else "")
    environ.update(env or {})
    return subprocess.run(
        [FILEKV, *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("filekv: ")
    return lines[0]


@pytest.fixture(scope="module")
def alice(server: Server, config_home: Path) -> Path:
    """Alice registered and logged in with the CLI; the config dir that holds her token."""
    done = run(server, config_home, "register", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    done = run(server, config_home, "login", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    return config_home


def _token(config: Path, server: Server) -> str:
    data = json.loads((config / "filekv" / "credentials.json").read_text())
    token: str = data["tokens"][server.url]
    return token


def test_login_stores_a_0600_token_per_url(server: Server, alice: Path) -> None:
    path = alice / "filekv" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with Client(server.url, token=_token(alice, server)) as kv:
        assert kv.whoami() == "alice"
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]  # no temp left


def test_put_get_delete_with_odd_keys(server: Server, alice: Path) -> None:
    for key in ["a/b/c", "with space", "100%", "ключ/ü", "%2F"]:
        put = run(server, alice, "put", key, f"v-{key}")
        assert put.returncode == 0, put.stderr
        assert int(put.stdout) > 0
        got = run(server, alice, "get", key)
        assert (got.returncode, got.stdout) == (0, f"v-{key}\n")
        with Client(server.url) as kv:
            assert kv.get(key) == f"v-{key}"
        assert run(server, alice, "delete", key).returncode == 0
        gone = run(server, alice, "get", key)
        assert gone.returncode == 1
        assert "no such key" in _one_error_line(gone)


def test_put_value_from_stdin_as_is(server: Server, alice: Path) -> None:
    value = "line one\nline two\n"
    assert run(server, alice, "put", "stdin-key", "-", stdin=value).returncode == 0
    with Client(server.url) as kv:
        assert kv.get("stdin-key") == value


def test_put_with_ttl_expires(server: Server, alice: Path) -> None:
    # Long enough to outlast starting a second CLI process on a busy machine.
    put = json.loads(run(server, alice, "put", "ttl/k", "v", "--ttl", "4", "--json").stdout)
    assert put["expires_in"] == 4
    got = json.loads(run(server, alice, "get", "ttl/k", "--json").stdout)
    assert 0 < got["expires_in"] <= 4
    deadline = time.monotonic() + 30
    while run(server, alice, "get", "ttl/k").returncode == 0:  # gone once its time is up
        assert time.monotonic() < deadline
        time.sleep(0.1)
    refused = run(server, alice, "put", "ttl/k", "v", "--ttl", "0")
    assert refused.returncode != 0 and "ttl" in refused.stderr.lower()


def test_json_output_of_the_key_verbs(server: Server, alice: Path) -> None:
    put = json.loads(run(server, alice, "put", "j/k", "v", "--json").stdout)
    assert put == {"key": "j/k", "revision": put["revision"], "staged": False, "expires_in": None}
    got = json.loads(run(server, alice, "get", "j/k", "--json").stdout)
    assert got == {"key": "j/k", "value": "v", "revision": put["revision"], "expires_in": None}
    assert json.loads(run(server, alice, "ls", "j/", "--json").stdout) == {"keys": ["j/k"]}
    assert json.loads(run(server, alice, "find", "v", "--prefix", "j/", "--json").stdout) == {
        "keys": ["j/k"]
    }
    assert json.loads(run(server, alice, "delete", "j/k", "--json").stdout) == {
        "key": "j/k",
        "deleted": True,
        "staged": False,
    }


def test_ls_and_find_one_key_per_line_and_null(server: Server, alice: Path) -> None:
    with Client(server.url) as kv:
        kv.batch([("put", f"ls/{i:03}", "same" if i % 2 else "other") for i in range(30)])
        kv.put("ls/new\nline", "same")
    listed = run(server, alice, "ls", "ls/")
    assert listed.returncode == 0
    nul = run(server, alice, "ls", "ls/", "-0")
    keys = nul.stdout.split("\0")
    assert keys[-1] == ""
    assert keys[:-1] == [*(f"ls/{i:03}" for i in range(30)), "ls/new\nline"]
    assert listed.stdout == "\n".join(keys[:-1]) + "\n"
    found = run(server, alice, "find", "same", "--prefix", "ls/", "--null")
    assert found.stdout.split("\0")[:-1] == [
        *(f"ls/{i:03}" for i in range(1, 30, 2)),
        "ls/new\nline",
    ]
    assert run(server, alice, "find", "same", "--prefix", "ls/0").stdout.splitlines()[0] == (
        "ls/001"
    )


def test_batch_from_a_file_and_stdin(server: Server, alice: Path, tmp_path: Path) -> None:
    ops = tmp_path / "ops.jsonl"
    ops.write_text(
        json.dumps({"op": "put", "key": "b/1", "value": "one"})
        + "\n\n"
        + json.dumps({"op": "put", "key": "b/2", "value": "two", "expect": 0})
        + "\n"
    )
    done = run(server, alice, "batch", str(ops), "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["applied"] == 2 and answer["staged"] is False
    with Client(server.url) as kv:
        assert kv.entry("b/1").revision == kv.entry("b/2").revision == answer["revision"]
    line = json.dumps({"op": "delete", "key": "b/1"})
    assert run(server, alice, "batch", "-", stdin=line + "\n").returncode == 0
    with Client(server.url) as kv:
        assert kv.get("b/1", default=None) is None


def test_exit_5_batch_with_a_failing_expect_applies_nothing(server: Server, alice: Path) -> None:
    with Client(server.url) as kv:  # this test's own key, whatever ran before it
        if kv.get("b/2", default=None) is None:
            kv.put("b/2", "x")
        stale = str(kv.entry("b/2").revision + 1)  # not its revision
    lines = [
        {"op": "put", "key": "p/new", "value": "x"},
        {"op": "put", "key": "b/2", "value": "x", "expect": 0},  # b/2 exists
    ]
    done = run(server, alice, "batch", "-", stdin="".join(json.dumps(o) + "\n" for o in lines))
    assert done.returncode == 5
    _one_error_line(done)
    with Client(server.url) as kv:
        assert kv.get("p/new", default=None) is None
    cas = run(server, alice, "put", "b/2", "y", "--expect", stale)
    assert cas.returncode == 5


@pytest.mark.parametrize(
    "args, stdin",
    [
        (["batch", "-"], "not json\n"),
        (["batch", "-"], '{"op": "frobnicate", "key": "k"}\n'),
        (["batch", "-"], '{"op": "put", "key": "k"}\n'),
        (["batch", "-"], ""),
        (["batch", "/nonexistent/ops.jsonl"], ""),
        (["get"], ""),  # a missing argument: click's usage error
        (["put", "k", "v", "--expect", "-1"], ""),
    ],
)
def test_exit_2_usage_and_invalid_input(
    server: Server, alice: Path, args: list[str], stdin: str
) -> None:
    done = run(server, alice, *args, stdin=stdin)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip()


@pytest.mark.parametrize(
    "args, stdin, detail",
    [
        (  # a key over max_key_bytes
            ["put", "k" * 2000, "v"],
            "",
            "path.key: the key is 2000 bytes in UTF-8; the limit is 1024 (422)",
        ),
        (  # a value over max_value_bytes
            ["put", "big", "-"],
            "x" * (2 << 20),
            "the value is 2097152 bytes; the limit is 1048576 (413)",
        ),
        (  # a batch op the server refuses: a ttl over ten years
            ["batch", "-"],
            json.dumps({"op": "put", "key": "k", "value": "v", "ttl": 1e12}) + "\n",
            "body.ops.0.put.ttl: Input should be less than or equal to 315360000 (422)",
        ),
        (  # ... and an empty key
            ["batch", "-"],
            json.dumps({"op": "put", "key": "", "value": "v"}) + "\n",
            "body.ops.0.put.key: String should have at least 1 character (422)",
        ),
    ],
)
def test_exit_2_invalid_input_says_the_servers_detail(
    server: Server, alice: Path, args: list[str], stdin: str, detail: str
) -> None:
    """A 413 or 422 of a real filekv server is the input's fault, said in the server's words:
    not "is not a filekv server? ... check --url" (exit 2 too, but another cause)."""
    done = run(server, alice, *args, stdin=stdin)
    assert done.returncode == 2, done.stderr
    assert _no_traceback(done) == f"filekv: {detail}"


def test_exit_3_locked_by_another_token(server: Server, alice: Path) -> None:
    with Client(server.url) as bob:
        bob.register("bob-locks", "bob-secret-1")
        bob.login("bob-locks", "bob-secret-1")
        bob.begin()
        try:
            done = run(server, alice, "put", "locked", "x")
            assert done.returncode == 3
            assert "locked" in _one_error_line(done)
            status = json.loads(run(server, alice, "status", "--json").stdout)
            assert status["transaction"]["active"] is True
            assert status["transaction"]["mine"] is False
            assert "held by another client" in run(server, alice, "status").stdout
        finally:
            bob.rollback()


def test_exit_4_bad_token_and_token_override(server: Server, alice: Path) -> None:
    bad = run(server, alice, "get", "anything", env={"FILEKV_TOKEN": "not-a-token"})
    assert bad.returncode == 4
    assert "invalid or expired token" in _one_error_line(bad)
    with Client(server.url) as kv:
        kv.register("carol", "carol-secret-1")
        token = kv.login("carol", "carol-secret-1")
    # FILEKV_TOKEN wins over the stored token: the transaction begun is carol's, not alice's
    begun = run(server, alice, "begin", env={"FILEKV_TOKEN": token})
    assert (begun.returncode, begun.stdout) == (0, "1\n")
    with Client(server.url, token=token) as kv:
        assert kv.transaction_status()["mine"] is True
        assert kv.rollback() == 0


def test_exit_6_conflict_and_release(server: Server, alice: Path) -> None:
    nothing = run(server, alice, "commit")
    assert nothing.returncode == 6
    _one_error_line(nothing)
    assert run(server, alice, "rollback").returncode == 6
    assert run(server, alice, "begin").stdout == "1\n"
    try:
        assert run(server, alice, "release").returncode == 6  # depth 1: use commit
        assert json.loads(run(server, alice, "begin", "--json").stdout) == {"depth": 2}
        assert run(server, alice, "put", "rel/k", "inner").stdout == "staged\n"
        assert json.loads(run(server, alice, "release", "--json").stdout) == {"depth": 1}
        assert json.loads(run(server, alice, "rollback", "--json").stdout) == {"depth": 0}
    finally:
        run(server, alice, "rollback")
    with Client(server.url) as kv:
        assert kv.get("rel/k", default=None) is None


def test_transaction_across_cli_processes(server: Server, alice: Path) -> None:
    assert run(server, alice, "begin").returncode == 0
    try:
        assert run(server, alice, "put", "tx/a", "1").stdout == "staged\n"
        assert json.loads(run(server, alice, "put", "tx/b", "2", "--json").stdout)["staged"]
        assert run(server, alice, "get", "tx/a").stdout == "1\n"  # the holder sees its writes
        with Client(server.url) as other:
            assert other.get("tx/a", default=None) is None
        status = json.loads(run(server, alice, "status", "--json").stdout)
        assert status["transaction"]["mine"] is True and status["transaction"]["depth"] == 1
        assert "transaction: yours, depth 1" in run(server, alice, "status").stdout
        committed = run(server, alice, "commit", "--json")
        assert json.loads(committed.stdout) == {"depth": 0, "applied": 2}
    finally:
        run(server, alice, "rollback")
    with Client(server.url) as other:
        assert (other.get("tx/a"), other.get("tx/b")) == ("1", "2")


def test_url_flag_wins_over_the_environment(server: Server, alice: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    assert run(server, alice, "status", url=closed).returncode == 7
    assert run(server, alice, "status", "--url", server.url, url=closed).returncode == 0


def test_status(server: Server, alice: Path) -> None:
    with Client(server.url) as kv:
        count = kv.stats()["keys"]
    done = run(server, alice, "status", "--json")
    assert done.returncode == 0
    answer = json.loads(done.stdout)
    assert answer["health"] == {"status": "ok"}
    assert answer["keys"] == count
    assert answer["transaction"]["active"] is False
    text = run(server, alice, "status").stdout.splitlines()
    assert text == [f"server: {server.url} ok", f"keys: {count}", "transaction: none"]


def test_exit_7_server_unreachable(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    for verb in (["get", "k"], ["status"], ["ls"]):
        done = run(None, tmp_path, *verb, url=closed)
        assert done.returncode == 7, done.stderr
        assert _one_error_line(done) == (
            f"filekv: cannot reach the server at {closed}: connection refused"
        )


def test_exit_8_login_throttled(server: Server, tmp_path: Path) -> None:
    with Client(server.url) as kv:
        kv.register("dave", "dave-secret-1")
    with http_client(server.url) as http:
        for _ in range(5):
            wrong = http.post("/auth/token", data={"username": "dave", "password": "wrong-pass"})
            assert wrong.status_code == 401
    done = run(server, tmp_path, "login", "dave", "--password-stdin", stdin="dave-secret-1\n")
    assert done.returncode == 8
    _one_error_line(done)
    assert not (tmp_path / "filekv" / "credentials.json").exists()


def test_exit_4_wrong_password_and_register_taken(server: Server, tmp_path: Path) -> None:
    wrong = run(server, tmp_path, "login", "alice", "--password-stdin", stdin="nope-nope-1\n")
    assert wrong.returncode == 4
    taken = run(server, tmp_path, "register", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert taken.returncode == 6
    assert run(server, tmp_path, "logout").returncode == 4  # not logged in


def test_exit_4_forbidden_register_on_a_closed_server(tmp_path: Path) -> None:
    """Exit 4 covers 403 as well as 401: registration refused by a server that closed it."""
    closed = Server(tmp_path / "data", tmp_path / "server.log", registration="closed")
    closed.start()
    try:
        refused = run(
            closed, tmp_path, "register", "erin", "--password-stdin", stdin=PASSWORD + "\n"
        )
    finally:
        closed.stop()
    assert refused.returncode == 4
    assert "registration" in _one_error_line(refused)


def test_login_prompts_hidden_and_json(server: Server, tmp_path: Path) -> None:
    done = run(server, tmp_path, "login", "--json", stdin=f"alice\n{PASSWORD}\n")
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    assert answer["username"] == "alice" and answer["url"] == server.url
    assert PASSWORD not in done.stdout + done.stderr  # the prompt does not echo it


def test_logout_revokes_and_forgets(server: Server, tmp_path: Path) -> None:
    other = server.url + "/"  # the same server, stored under one normalized URL
    assert (
        run(
            server, tmp_path, "login", "alice", "--password-stdin", stdin=PASSWORD + "\n", url=other
        ).returncode
        == 0
    )
    token = _token(tmp_path, server)
    out = run(server, tmp_path, "logout", "--json")
    assert json.loads(out.stdout) == {"url": server.url, "logged_out": True}
    with Client(server.url, token=token) as kv, pytest.raises(Exception, match="invalid"):
        kv.whoami()
    data = json.loads((tmp_path / "filekv" / "credentials.json").read_text())
    assert server.url not in data["tokens"]
    assert run(server, tmp_path, "begin").returncode == 4  # no token: begin needs a login


def test_readme_cli_examples_print_what_the_readme_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's "Command line client" blocks, run by ``test_readme``'s own convention."""
    import test_readme

    monkeypatch.setattr(test_readme, "SECTION", "## Command line client")
    found = test_readme.steps(test_readme.README.read_text())
    assert any(step.command.startswith("filekv begin") for step in found)
    found.insert(0, test_readme.Step(0, "exec 2>&1", []))  # the README shows stderr lines too
    srv = Server(tmp_path / "data", tmp_path / "server.log")
    srv.start()
    try:
        for name in [n for n in os.environ if n.startswith("FILEKV_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("PATH", f"{Path(FILEKV).parent}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        monkeypatch.setenv("FILEKV_URL", srv.url)
        outputs = test_readme._run(found, srv.url, tmp_path)
    finally:
        srv.stop()
    for step in found:  # the output names the server's URL too
        step.expected = [line.replace(test_readme.README_URL, srv.url) for line in step.expected]
    problems = [
        problem
        for step, output in zip(found, outputs, strict=True)
        if (problem := test_readme.check(step, output)) is not None
    ]
    assert problems == [], "\n".join(problems)


# -- the audit: no traceback, exit codes of the table, messages that say what to do --------------


URL_EXPECTED = "http://HOST[:PORT] or https://HOST[:PORT] expected; check --url (or FILEKV_URL)"


def _no_traceback(result: subprocess.CompletedProcess[Any]) -> str:
    """The one error line of a run that printed no Python traceback."""
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    assert "Traceback" not in stderr and "Error:" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("filekv: "), stderr
    return lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["put", "k", "v", "--ttl", "inf"], "--ttl must be a number of seconds"),
        (
            ["get", "bad-\udcff"],
            "the key is not valid UTF-8: filekv keys and values are text",
        ),  # the byte 0xff, as argv holds it
        (
            ["put", "k", "bad-\udcff"],
            "the value is not valid UTF-8: filekv keys and values are text",
        ),
        (["ls", "bad-\udcff"], "the prefix is not valid UTF-8: filekv keys and values are text"),
        (["get", "k" * 70_000], "the key (or prefix) is too long"),
        (["get", "x", "--url", "http://[::1"], "invalid server URL 'http://[::1': "),
        (["get", "x", "--url", "127.0.0.1:8000"], URL_EXPECTED),
        (["get", "x", "--url", "ftp://127.0.0.1:8000"], URL_EXPECTED),
        (["get", "x", "--url", " http://127.0.0.1:8000"], URL_EXPECTED),
        (["get", "x", "--url", "http://127.0.0.1:8000 "], URL_EXPECTED),
        # the client's own check, said as it says it (this was a traceback: the CLI's check let
        # a query through, then the client refused it)
        (["get", "x", "--url", "http://127.0.0.1:8000/?a=1"], "a query or fragment has no place"),
        (["login", "--url", "http://127.0.0.1:8000/#x"], "a query or fragment has no place"),
    ],
)
def test_exit_2_without_a_traceback(
    server: Server, alice: Path, args: list[str], message: str
) -> None:
    done = run(server, alice, *args)
    assert done.returncode == 2, done.stderr
    assert message in _no_traceback(done)


def test_exit_2_a_value_on_stdin_that_is_not_utf8(server: Server, alice: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    environ.update(XDG_CONFIG_HOME=str(alice), FILEKV_URL=server.url)
    done = subprocess.run(
        [FILEKV, "put", "k", "-"], input=b"\xff", capture_output=True, env=environ, timeout=60
    )
    assert done.returncode == 2
    assert "the value on stdin is not valid UTF-8" in _no_traceback(done)


def test_exit_2_a_url_that_is_not_a_filekv_server(server: Server, alice: Path) -> None:
    # /docs/keys/x: a 404 of no key (not "no such key")
    docs = run(server, alice, "get", "x", url=server.url + "/docs")
    assert docs.returncode == 2
    assert f"{server.url}/docs is not a filekv server?" in _no_traceback(docs)
    assert run(server, alice, "ls", url=server.url + "/docs").returncode == 2
    # POST /keys/transaction/commit: a key's path takes no POST, a 405
    wrong = run(server, alice, "commit", url=server.url + "/keys")
    assert wrong.returncode == 2
    assert "is not a filekv server? it answered 405" in _no_traceback(wrong)


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[str]:
    """A web server that is not filekv (python -m http.server): its errors are HTML pages."""
    port = free_port()
    (tmp_path / "site").mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path / "site",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        yield url
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize(
    ("args", "stdin", "status"),
    [
        (["get", "x"], "", "404 File not found"),
        (["put", "x", "y"], "", "501 Unsupported method ('PUT')"),
        (["delete", "x"], "", "501 Unsupported method ('DELETE')"),
        (["begin"], "", "501 Unsupported method ('POST')"),
        (["commit"], "", "501 Unsupported method ('POST')"),
        (["login", "alice", "--password-stdin"], PASSWORD + "\n", "501 Unsupported method"),
        (["batch", "-"], '{"op": "put", "key": "k", "value": "v"}\n', "501 Unsupported method"),
        (["watch"], "", "404 File not found"),
    ],
    ids=lambda value: value[0] if isinstance(value, list) else None,
)
def test_exit_2_a_web_server_that_is_not_filekv_for_every_verb(
    web_server: str, tmp_path: Path, args: list[str], stdin: str, status: str
) -> None:
    """Its 501 page (a method it does not take) was a server error: exit 7, the whole page
    flattened as the message. Every verb says what `get` says of its 404 page: not filekv."""
    done = run(None, tmp_path, *args, stdin=stdin, url=web_server)
    line = _no_traceback(done)
    assert done.returncode == 2, line
    assert line.startswith(f"filekv: {web_server} is not a filekv server? it answered {status}")
    assert "(text/html), not filekv's JSON error; check --url" in line
    assert "<" not in line  # not the page


def test_a_stored_login_that_died_reads_anonymously_and_refuses_writes(
    server: Server, tmp_path: Path
) -> None:
    """The server forgot the stored token (as a restart does): reads warn and go on without it,
    writes and transactions stop with exit 4 (a transaction died with the token)."""
    login = run(server, tmp_path, "login", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    assert login.returncode == 0, login.stderr
    with Client(server.url) as kv:
        kv.put("died/k", "v")
    with Client(server.url, token=_token(tmp_path, server)) as kv:
        kv.logout()  # the server no longer knows it; the credentials file still holds it
    advice = (
        f"filekv: the stored login for {server.url} is no longer valid (a restart logs everyone"
        " out); run `filekv login` again, or `filekv logout`"
    )
    for verb, out in [
        (["get", "died/k"], "v\n"),
        (["ls", "died/"], "died/k\n"),
        (["find", "v", "--prefix", "died/"], "died/k\n"),
    ]:
        done = run(server, tmp_path, *verb)
        assert (done.returncode, done.stdout, done.stderr) == (0, out, advice + "\n"), verb
    status = run(server, tmp_path, "status")
    assert status.returncode == 0 and status.stderr == advice + "\n"
    for verb in (["put", "died/k", "w"], ["delete", "died/k"], ["begin"], ["commit"]):
        done = run(server, tmp_path, *verb)
        assert (done.returncode, done.stderr) == (4, advice + "\n"), verb
    with Client(server.url) as kv:
        assert kv.get("died/k") == "v"
    assert run(server, tmp_path, "logout").returncode == 0  # the server had forgotten it: done
    assert (
        server.url
        not in json.loads((tmp_path / "filekv" / "credentials.json").read_text())["tokens"]
    )


def test_delete_in_a_transaction_prints_staged(server: Server, alice: Path) -> None:
    with Client(server.url) as kv:
        kv.put("st/a", "1")
        kv.put("st/b", "2")
    assert run(server, alice, "begin").returncode == 0
    try:
        done = run(server, alice, "delete", "st/a")
        assert (done.returncode, done.stdout) == (0, "staged\n")
        answer = json.loads(run(server, alice, "delete", "st/b", "--json").stdout)
        assert answer == {"key": "st/b", "deleted": True, "staged": True}
    finally:
        run(server, alice, "rollback")
    assert run(server, alice, "delete", "st/a").stdout == ""  # committed at once: nothing


def test_messages_that_say_what_to_do(server: Server, tmp_path: Path) -> None:
    begin = run(server, tmp_path, "begin")
    assert begin.returncode == 4
    assert _no_traceback(begin) == "filekv: not logged in: run `filekv login` (or set FILEKV_TOKEN)"
    empty = run(server, tmp_path, "login", "alice", "--password-stdin", stdin="\n")
    assert (empty.returncode, _no_traceback(empty)) == (2, "filekv: empty password")
    for verb in (["register"], ["login"], ["register", "zed", "--password-stdin"]):
        closed = run(server, tmp_path, *verb)  # stdin is empty: closed at once
        assert closed.returncode == 2, closed.stderr
        assert closed.stderr.rstrip().endswith("given (stdin closed)"), closed.stderr
        assert "Aborted" not in closed.stderr


def test_logout_with_the_server_down_forgets_the_token_and_says_so(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    path = tmp_path / "filekv" / "credentials.json"
    path.parent.mkdir(mode=0o700)
    path.write_text(json.dumps({"tokens": {closed: "some-token"}}))
    done = run(None, tmp_path, "logout", url=closed)
    assert done.returncode == 7
    line = _no_traceback(done)
    assert line.startswith("filekv: forgot the stored token; the server could not be told")
    assert "until it expires (token_ttl) or the server restarts" in line
    assert json.loads(path.read_text())["tokens"] == {}


def test_batch_takes_a_ttl_per_put_and_help_says_the_limits(server: Server, alice: Path) -> None:
    line = json.dumps({"op": "put", "key": "bt/k", "value": "v", "ttl": 300})
    done = run(server, alice, "batch", "-", stdin=line + "\n")
    assert done.returncode == 0, done.stderr
    with Client(server.url) as kv:
        expires_in = kv.entry("bt/k").expires_in
        assert expires_in is not None and 0 < expires_in <= 300
    infinite = run(server, alice, "batch", "-", stdin=line.replace("300", "Infinity") + "\n")
    assert infinite.returncode == 2
    _no_traceback(infinite)
    assert "1000" in run(server, alice, "batch", "--help").stdout
    assert "expires_in" in run(server, alice, "watch", "--help").stdout


def test_watch_fails_at_once_when_the_server_is_down(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = run(None, tmp_path, "watch", url=closed)
    assert done.returncode == 7
    assert _no_traceback(done) == f"filekv: cannot reach the server at {closed}: connection refused"
    assert time.monotonic() - started < 20  # not after the 60 s a lost connection is given


def test_watch_says_it_reconnects_and_resumes(tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", tmp_path / "server.log")
    srv.start()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    environ.update(XDG_CONFIG_HOME=str(tmp_path / "config"), FILEKV_URL=srv.url)
    watcher = subprocess.Popen(
        [FILEKV, "watch", "w/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
    )
    try:
        assert watcher.stdout is not None and watcher.stderr is not None
        time.sleep(2)  # connected (nothing to wait on: a watch prints nothing until a change)
        with Client(srv.url) as kv:
            kv.put("w/1", "one")
        assert watcher.stdout.readline() == '1 put "w/1" "one"\n'
        port = srv.port
        srv.stop()
        line = watcher.stderr.readline()
        assert line.startswith(f"filekv: cannot reach the server at {srv.url}: "), line
        assert line.endswith("; reconnecting\n"), line
        srv.process = subprocess.Popen(
            serve_command(srv.data_dir, port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "FILEKV_FSYNC": "always"},
        )
        deadline = time.monotonic() + 30
        while True:
            with Client(srv.url) as kv:
                try:
                    kv.put("w/2", "two")
                    break
                except Exception:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
        assert watcher.stdout.readline() == '2 put "w/2" "two"\n'
    finally:
        watcher.kill()
        watcher.wait()
        srv.stop()


def test_delete_learns_staged_from_its_own_answer(
    server: Server, alice: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`delete` makes one request: the 204 says whether it was staged. A second one (GET
    /transactions) that failed would exit 7 after the key was deleted."""
    with Client(server.url) as kv:
        kv.put("one/a", "1")
        kv.put("one/b", "2")
    for name in [name for name in os.environ if name.startswith("FILEKV_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(alice))

    def second_request(self: Client) -> dict[str, Any]:
        raise Unavailable("cannot reach the server: the second request")

    monkeypatch.setattr(Client, "transaction_status", second_request)
    client_cli.delete("one/a", url=server.url, as_json=True)
    assert json.loads(capsys.readouterr().out) == {"key": "one/a", "deleted": True, "staged": False}
    with Client(server.url, token=_token(alice, server)) as holder:
        holder.begin()
        try:
            client_cli.delete("one/b", url=server.url)
            assert capsys.readouterr().out == "staged\n"
        finally:
            holder.rollback()


def test_watch_gives_up_when_the_server_answers_but_watch_keeps_failing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server is up (/healthz answers) but every /watch is a 503 (too many watchers): the
    watch gives up after RECONNECT_SECONDS as it does without a server, instead of forever."""
    watches = [0]

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        watches[0] += 1
        if watches[0] > 1000:
            raise RuntimeError("still retrying after 1000 watches")
        return httpx.Response(503, json={"detail": "too many watchers"})

    monkeypatch.setattr(client_cli, "RECONNECT_SECONDS", 0.5)
    monkeypatch.setattr(client_cli, "RETRY_SECONDS", 0.05)
    monkeypatch.setattr(filekv.client._watch, "RETRY_SECONDS", 0.01)
    with Client("http://filekv.test", transport=httpx.MockTransport(answer)) as kv:
        verb = client_cli.Session("http://filekv.test", kv, None)
        with pytest.raises(ServerError) as error:
            client_cli._watch(verb, "", None, as_json=False)
    assert client_cli._message(error.value, verb.server, None) == ("too many watchers (503)", 7)
    assert watches[0] >= 2


def _read_until(fd: int, wanted: bytes, timeout: float = 30) -> bytes:
    """What ``fd`` gives until ``wanted`` is among it (the prompt: no newline after it)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {wanted!r} in {seen!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 1 << 16)
            assert chunk, f"the output ended before {wanted!r}: {seen!r}"
            seen += chunk
    return seen


def _environ(config: Path, url: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FILEKV_")}
    return {**environ, "XDG_CONFIG_HOME": str(config), "FILEKV_URL": url}


def test_watch_ctrl_c_exits_130(server: Server, tmp_path: Path) -> None:
    """The help's exit table says 130 for a Ctrl-C; watch, stopped by one, exited 0."""
    watcher = subprocess.Popen(
        [FILEKV, "watch", "sigint/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_environ(tmp_path, server.url),
    )
    try:
        assert watcher.stdout is not None
        deadline = time.monotonic() + 30
        with Client(server.url) as kv:  # until a change shows it is watching
            while True:
                kv.put("sigint/k", "v")
                ready, _, _ = select.select([watcher.stdout], [], [], 0.5)
                if ready:
                    break
                assert watcher.poll() is None, watcher.communicate()
                assert time.monotonic() < deadline, "watch printed nothing"
        assert " put " in watcher.stdout.readline()
        watcher.send_signal(signal.SIGINT)
        _stdout, stderr = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 130, stderr
    assert stderr == "filekv: interrupted (Ctrl-C)\n"


def test_login_ctrl_c_at_the_username_prompt_exits_130(server: Server, tmp_path: Path) -> None:
    """It said "Aborted." and exited 1 (click's), not 130 as the exit table says. stdin a pipe
    left open: the prompt waits on it."""
    process = subprocess.Popen(
        [FILEKV, "login"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_environ(tmp_path, server.url),
    )
    try:
        assert process.stderr is not None
        _read_until(process.stderr.fileno(), b"Username:")
        process.send_signal(signal.SIGINT)
        _stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert stderr.decode().splitlines()[-1] == "filekv: interrupted (Ctrl-C)"
    assert b"Aborted" not in stderr


@pytest.mark.parametrize(
    ("args", "prompt"),
    [
        (["register"], b"Username: "),
        (["register", "carol"], b"Password: "),  # hidden: getpass, on the terminal
        (["login", "carol"], b"Password: "),
    ],
    ids=["register-username", "register-password", "login-password"],
)
def test_ctrl_c_at_a_prompt_on_a_terminal_exits_130(
    server: Server, tmp_path: Path, args: list[str], prompt: bytes
) -> None:
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [FILEKV, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_environ(tmp_path, server.url),
        start_new_session=True,  # not the terminal of the tests
    )
    os.close(slave)
    try:
        output = _read_until(master, prompt)
        process.send_signal(signal.SIGINT)
        process.wait(30)
        while True:
            ready, _, _ = select.select([master], [], [], 5)
            if not ready:
                break
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: the process is gone and closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    text = output.decode()
    assert process.returncode == 130, text
    assert text.splitlines()[-1] == "filekv: interrupted (Ctrl-C)", text
    assert "Aborted" not in text
