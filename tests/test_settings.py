"""Settings take the store's defaults from the engine and build its options in one place."""

from __future__ import annotations

from dataclasses import fields

import pytest

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
    )
    assert getattr(settings.store_options(), name) == getattr(settings, name)


def test_settings_store_options_changes_replace_fields() -> None:
    options = Settings().store_options(auto_compact=False)
    assert options.auto_compact is False
    assert options.fsync == StoreOptions().fsync
