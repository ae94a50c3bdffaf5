"""A transaction cannot grow without bound (issue 17, finding 1), against a real server.

The attack: ``POST /transactions``, then 1 MiB values until something gives. Before the fix
nothing did: 2,060 of them were acknowledged (server peak 6.4 GB) and committed as one record
that the store could not read back. Now, at the default limits (64 MiB, 10,000 operations), the
write that would pass the limit is 413 and stages nothing, the transaction stays usable, its
commit is acknowledged and every committed key is there after a restart.
"""

from __future__ import annotations

from collections.abc import Callable

from support.server import Server, login

VALUE = "v" * (1 << 20)  # the largest value, 1 MiB
LIMIT = 64 << 20  # the default max_transaction_bytes
FRAMING = 7  # an operation's header in the record: kind, key length, value length


def test_transaction_limits_default_bytes_limit_refuses_the_write_over_it(
    make_server: Callable[..., Server],
) -> None:
    server = make_server(log_level="warning")
    fits = LIMIT // (FRAMING + len("big/00") + len(VALUE))  # 63: the 64th passes 64 MiB
    with server.client() as client:
        bulk = login(client, "bulk")
        assert client.post("/transactions", headers=bulk).status_code == 201
        for number in range(fits):
            staged = client.put(f"/keys/big/{number:02}", json={"value": VALUE}, headers=bulk)
            assert staged.status_code == 201, (number, staged.text)
        over = client.put(f"/keys/big/{fits:02}", json={"value": VALUE}, headers=bulk)
        print(f"\n{fits} x 1 MiB staged; the next: {over.status_code} {over.json()['detail']}")
        assert over.status_code == 413
        assert client.get(f"/keys/big/{fits:02}", headers=bulk).status_code == 404
        assert client.put("/keys/small", json={"value": "s"}, headers=bulk).status_code == 201
        committed = client.post("/transactions/commit", headers=bulk)
        assert committed.json() == {"depth": 0, "applied": fits + 1}
    server.restart()
    with server.client() as client:
        keys = client.get("/keys", params={"prefix": "big/"}).json()["keys"]
        assert keys == [f"big/{number:02}" for number in range(fits)]
        assert client.get("/keys/big/00").json()["value"] == VALUE
        assert client.get("/keys/small").json()["value"] == "s"
