"""``GET /metrics`` on a real server: each named metric moves when its event happens (issue 11).

Every scrape is parsed with prometheus-client's own parser (``support.metrics``), as Prometheus
would read it; each test reads the metrics before and after the event and checks the change.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from support.metrics import Samples, scrape
from support.server import PASSWORD, Server, http_client, login
from support.storefiles import as_after_a_crash, last_segment

MakeServer = Callable[..., Server]
KEY = "/keys/private/KEYSECRET-7f3a"


def _moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def test_e2e_metrics_requests_store_and_fsync(make_server: MakeServer) -> None:
    server = make_server()  # fsync=always: every write waits for a group-commit round
    with server.client() as client:
        before = scrape(client)
        assert client.put(KEY, json={"value": "v1"}).status_code == 201
        assert client.get(KEY).status_code == 200
        assert client.get("/keys/absent").status_code == 404
        assert client.get("/no/such/route").status_code == 404
        after = scrape(client)

    keys = {"route": "/keys/{key}"}
    requests = "filekv_http_requests_total"
    assert _moved(before, after, requests, method="PUT", status="201", **keys) == 1
    assert _moved(before, after, requests, method="GET", status="200", **keys) == 1
    assert _moved(before, after, requests, method="GET", status="404", **keys) == 1
    assert _moved(before, after, requests, method="GET", status="404", route="unmatched") == 1
    durations = "filekv_http_request_duration_seconds_count"
    assert _moved(before, after, durations, method="GET", **keys) == 2
    assert _moved(before, after, "filekv_http_request_duration_seconds_sum", method="PUT") > 0
    # By route template only: neither the key nor the path it came in is ever a label value.
    assert not any("KEYSECRET" in value or "/no/such" in value for value in after.label_values())

    assert _moved(before, after, "filekv_keys") == 1
    assert _moved(before, after, "filekv_revision") == 1
    assert _moved(before, after, "filekv_disk_bytes") > 0
    assert _moved(before, after, "filekv_live_bytes") > 0
    assert _moved(before, after, "filekv_fsync_duration_seconds_count") >= 1
    assert _moved(before, after, "filekv_fsync_duration_seconds_sum") > 0
    assert _moved(before, after, "filekv_group_commit_batch_size_count") >= 1
    assert _moved(before, after, "filekv_group_commit_batch_size_sum") >= 1  # records covered


def test_e2e_metrics_transaction_lock_logins_and_tokens(make_server: MakeServer) -> None:
    server = make_server()
    with server.client() as client:
        before = scrape(client)
        assert before.value("filekv_transaction_active") == 0
        assert before.value("filekv_transaction_depth") == 0

        refused = client.post("/auth/token", data={"username": "alice", "password": "wrong!!"})
        assert refused.status_code == 401
        alice = login(client, "alice")
        failed_and_issued = scrape(client)
        assert _moved(before, failed_and_issued, "filekv_login_failures_total") == 1
        assert _moved(before, failed_and_issued, "filekv_tokens_active") == 1

        assert client.post("/transactions", headers=alice).status_code == 201
        assert client.post("/transactions", headers=alice).status_code == 201  # depth 2
        time.sleep(0.2)
        held = scrape(client)
        assert held.value("filekv_transaction_active") == 1
        assert held.value("filekv_transaction_depth") == 2
        assert held.value("filekv_transaction_held_seconds") >= 0.2

        # Anyone else's write meets the lock: 423, counted on its own and by status.
        assert client.put("/keys/k", json={"value": "x"}).status_code == 423
        locked = scrape(client)
        assert _moved(held, locked, "filekv_locked_responses_total") == 1
        assert _moved(held, locked, "filekv_http_requests_total", method="PUT", status="423") == 1

        assert client.post("/transactions/commit", headers=alice).status_code == 200
        assert client.post("/auth/logout", headers=alice).status_code == 204
        done = scrape(client)
        assert done.value("filekv_transaction_active") == 0
        assert done.value("filekv_transaction_depth") == 0
        assert done.value("filekv_transaction_held_seconds") == 0
        assert _moved(failed_and_issued, done, "filekv_tokens_active") == -1


def test_e2e_metrics_a_compaction_is_counted_and_timed(make_server: MakeServer) -> None:
    # No minimum size and a low dead ratio: the writer's threshold check (every 1024 writes)
    # starts a background compaction once most of the file is overwritten values.
    # (watch_history=0: where the store keeps recent history for watchers, keep none of it.)
    server = make_server(
        fsync="never", compact_min_bytes=0, compact_dead_ratio=0.5, watch_history=0
    )
    with server.client() as client:
        before = scrape(client)
        for i in range(1100):
            assert client.put(f"/keys/k{i % 4}", json={"value": f"v{i}"}).status_code in (200, 201)
        deadline = time.monotonic() + 30
        after = scrape(client)
        while after.value("filekv_compactions_total") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
            after = scrape(client)
    assert _moved(before, after, "filekv_compactions_total") >= 1
    assert _moved(before, after, "filekv_compaction_duration_seconds_count") >= 1
    assert _moved(before, after, "filekv_compaction_duration_seconds_sum") > 0
    assert after.value("filekv_live_bytes") <= after.value("filekv_disk_bytes")


def test_e2e_metrics_a_recovered_torn_tail_is_counted(make_server: MakeServer) -> None:
    server = make_server()
    with server.client() as client:
        assert client.put("/keys/k", json={"value": "kept"}).status_code == 201
        assert scrape(client).value("filekv_recovered_truncations_total") == 0
    assert server.stop() == 0
    # What a crash mid-append leaves: the newest segment ends in half a record, and no hint.
    as_after_a_crash(server.data_dir)
    with last_segment(server.data_dir).open("ab") as segment:
        segment.write(b"\x00\x01torn record")
    server.start()
    with server.client() as client:
        samples = scrape(client)
        assert client.get("/keys/k").json()["value"] == "kept"
    assert samples.value("filekv_recovered_truncations_total") == 1


def test_e2e_metrics_off_there_is_no_route(make_server: MakeServer) -> None:
    server = make_server(metrics=False)
    with server.client() as client:
        answer = client.get("/metrics")
        assert answer.status_code == 404
        assert answer.json()["request_id"] == answer.headers["x-request-id"]
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_e2e_metrics_with_auth_mode_all_need_a_token(make_server: MakeServer) -> None:
    server = make_server(auth_mode="all")
    with server.client() as client:
        assert client.get("/metrics").status_code == 401
        client.post("/auth/register", json={"username": "prom", "password": PASSWORD})
        token = client.post("/auth/token", data={"username": "prom", "password": PASSWORD})
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        assert scrape(client, headers=headers).value("filekv_tokens_active") == 1


def test_e2e_metrics_openmetrics_when_asked(server: Server) -> None:
    with http_client(server.url) as client:
        answer = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.rstrip().endswith("# EOF")
