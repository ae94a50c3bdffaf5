"""``GET /auth/register``: whether registration is open, asked quietly (200 either way).

The console asks this on every load to show **Register** or not; before, it POSTed an empty
body and read the refusal (403 closed, 422 open), which the browser logged as an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support.server import PASSWORD


@pytest.mark.parametrize(("registration", "is_open"), [("open", True), ("closed", False)])
@pytest.mark.parametrize("auth_mode", ["transactions", "all"])
def test_registration_open_says_the_setting_to_anyone(
    make_client: Callable[..., TestClient], registration: str, is_open: bool, auth_mode: str
) -> None:
    client = make_client(registration=registration, auth_mode=auth_mode)
    answer = client.get("/auth/register")  # no token, even where every read needs one
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"open": is_open}
    # The POST says the same: the answer is the setting, not a guess.
    signed_up = client.post("/auth/register", json={"username": "ann", "password": PASSWORD})
    assert signed_up.status_code == (201 if is_open else 403), signed_up.text


def test_registration_open_registers_nobody(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    for _ in range(3):
        assert client.get("/auth/register").json() == {"open": True}
    logged_in = client.post("/auth/token", data={"username": "ann", "password": PASSWORD})
    assert logged_in.status_code == 401  # nobody was made
    assert client.post("/auth/register", json={"username": "ann", "password": PASSWORD}).is_success
    assert client.get("/auth/register").json() == {"open": True}


def test_registration_open_is_in_the_openapi_schema(
    make_client: Callable[..., TestClient],
) -> None:
    spec: dict[str, Any] = make_client().get("/openapi.json").json()
    operation = spec["paths"]["/auth/register"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/RegistrationState"}
    model = spec["components"]["schemas"]["RegistrationState"]
    assert model["properties"]["open"]["type"] == "boolean"
    assert model["required"] == ["open"]
    assert "security" not in operation  # no login: no lock in /docs either
    assert "post" in spec["paths"]["/auth/register"]  # beside the sign-up, which stays
