"""Settings take the store's defaults from the engine and build its options in one place."""

from __future__ import annotations

from dataclasses import fields

import pytest
from pydantic import ValidationError

from filekv.engine import StoreOptions
from filekv.settings import Settings

SHARED = sorted(f.name for f in fields(StoreOptions) if f.name in Settings.model_fields)


def test_settings_share_the_store_options_that_the_server_exposes() -> None:
    assert {"fsync", "fsync_interval_ms", "max_key_bytes", "max_value_bytes"} <= set(SHARED)


@pytest.mark.parametrize("name", SHARED)
def test_settings_default_is_the_store_default(name: str) -> None:
    assert Settings.model_fields[name].default == getattr(StoreOptions(), name)


@pytest.mark.parametrize("name", SHARED)
def test_settings_store_options_carries_every_shared_field(name: str) -> None:
    settings = Settings(
        fsync="interval",
        fsync_interval_ms=7,
        max_key_bytes=99,
        max_value_bytes=12_345,
        max_transaction_bytes=54_321,
        max_transaction_ops=77,
        compact_min_bytes=4242,
        compact_dead_ratio=0.25,
        active_hint_bytes=12_288,
        watch_history=123,
    )
    # Every shared field off its default, so that one store_options() forgot fails here.
    assert getattr(settings, name) != getattr(StoreOptions(), name), name
    assert getattr(settings.store_options(), name) == getattr(settings, name)


def test_settings_store_options_changes_replace_fields() -> None:
    options = Settings().store_options(auto_compact=False)
    assert options.auto_compact is False
    assert options.fsync == StoreOptions().fsync


def test_settings_transaction_max_seconds_defaults_to_five_minutes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().transaction_max_seconds == 300.0
    monkeypatch.setenv("FILEKV_TRANSACTION_MAX_SECONDS", "2.5")
    assert Settings().transaction_max_seconds == 2.5


@pytest.mark.parametrize("value", [0, -1.0, "soon"])
def test_settings_transaction_max_seconds_must_be_positive(value: object) -> None:
    with pytest.raises(ValidationError, match="transaction_max_seconds"):
        Settings(transaction_max_seconds=value)


@pytest.mark.parametrize(("timeout", "max_seconds"), [(30.0, 300.0), (600.0, 300.0), (1.0, 1.0)])
def test_settings_transaction_max_seconds_may_be_below_the_timeout(
    timeout: float, max_seconds: float
) -> None:
    # Documented, not refused: whichever limit comes first ends a transaction, so a timeout
    # above the maximum age only means the maximum age is the one that applies.
    settings = Settings(transaction_timeout=timeout, transaction_max_seconds=max_seconds)
    assert (settings.transaction_timeout, settings.transaction_max_seconds) == (
        timeout,
        max_seconds,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("token_ttl", "inf"),  # passed gt=0, then every login was a 500 (int(inf))
        ("transaction_timeout", "1e309"),  # a 423's Retry-After was a 500 (ceil(inf))
        ("transaction_max_seconds", "nan"),
        ("body_timeout", "inf"),
        ("compact_dead_ratio", "nan"),
    ],
)
def test_settings_refuse_infinite_and_nan_numbers(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"FILEKV_{name.upper()}", value)
    with pytest.raises(ValidationError, match=name):
        Settings()


@pytest.mark.parametrize("value", ["", " ", "127.0.0.1 "])
def test_settings_refuse_an_empty_host(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # uvicorn listens on every interface for "": an unset ${VAR} would expose the store.
    monkeypatch.setenv("FILEKV_HOST", value)
    with pytest.raises(ValidationError, match="host"):
        Settings()


@pytest.mark.parametrize("value", ["", "  "])
def test_settings_refuse_an_empty_data_dir(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    # Path("") is the current directory: the store's files would land wherever serve started.
    monkeypatch.setenv("FILEKV_DATA_DIR", value)
    with pytest.raises(ValidationError, match="data_dir"):
        Settings()
    monkeypatch.setenv("FILEKV_DATA_DIR", ".")
    assert str(Settings().data_dir) == "."


def test_settings_max_key_bytes_fits_the_longest_request_target() -> None:
    # httptools refuses a URL over 65,535 bytes; a key of which every byte is %-encoded must
    # still fit, with room for the path's prefix and a query.
    from filekv.service.protocol import MAX_TARGET_BYTES

    longest = Settings.model_fields["max_key_bytes"].metadata
    cap = next(rule.le for rule in longest if getattr(rule, "le", None) is not None)
    assert Settings(max_key_bytes=cap).max_key_bytes == cap
    assert 3 * cap + len("/keys/") + 1024 <= MAX_TARGET_BYTES
    with pytest.raises(ValidationError, match="max_key_bytes"):
        Settings(max_key_bytes=cap + 1)


@pytest.mark.parametrize("value", ["", "10.0.0.300", "proxy.example", "10.0.0.1,"])
def test_settings_forwarded_allow_ips_are_addresses(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # uvicorn takes a typo for a name it never matches, silently: refused here instead.
    monkeypatch.setenv("FILEKV_FORWARDED_ALLOW_IPS", value)
    with pytest.raises(ValidationError, match="forwarded_allow_ips"):
        Settings()


def test_settings_forwarded_allow_ips_take_lists_networks_and_any() -> None:
    for value in ("*", "172.17.0.1", "10.0.0.1, 192.168.0.0/16", "::1"):
        assert Settings(forwarded_allow_ips=value).forwarded_allow_ips == value
