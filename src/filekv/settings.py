"""Settings: one class, read from ``FILEKV_*`` environment variables and CLI flags.

There is deliberately no module-level instance: the CLI and tests build one with ``load_settings``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from filekv.engine.options import FsyncMode, StoreOptions

# The store's defaults live in the engine (StoreOptions); the fields below repeat none of them.
_STORE: Final = StoreOptions()
AuthMode = Literal["transactions", "writes", "all"]
Registration = Literal["open", "closed"]
LogFormat = Literal["json", "text"]


class Settings(BaseSettings):
    """Everything a filekv server can be told; each field is also ``FILEKV_<NAME>``."""

    # No inf or nan anywhere: FILEKV_TOKEN_TTL=inf passed gt=0, then every login was a 500.
    model_config = SettingsConfigDict(
        env_prefix="FILEKV_", extra="forbid", frozen=True, allow_inf_nan=False
    )

    data_dir: Path = Field(Path("data"), description="Folder holding the store's files.")
    # Not empty: uvicorn listens on every interface for "" (an unset ${VAR} in a unit file
    # would have served a writable store to the network); 0.0.0.0 must be asked for.
    host: str = Field(
        "127.0.0.1", min_length=1, pattern=r"^\S+$", description="Address to listen on."
    )
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        min_length=1,
        description="The reverse proxies whose X-Forwarded-For (the client's address, which the "
        "login throttle and the access log use) is trusted: comma-separated addresses or "
        "networks, or * for any. A proxy on the Docker host reaches the container from the "
        "bridge's gateway, not 127.0.0.1.",
    )
    fsync: FsyncMode = Field(_STORE.fsync, description="When writes reach the disk.")
    fsync_interval_ms: int = Field(
        _STORE.fsync_interval_ms,
        ge=1,
        le=60_000,
        description="With fsync=interval: the longest gap between fsyncs.",
    )
    transaction_timeout: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="Seconds a transaction may stay idle before it is rolled back.",
    )
    transaction_max_seconds: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="Seconds a transaction may stay open, however busy its holder, before it is "
        "rolled back; whichever of this and transaction_timeout comes first ends it (below "
        "transaction_timeout, it is the one limit).",
    )
    token_ttl: float = Field(
        86_400.0, gt=0, le=366 * 86_400, description="Seconds a login token stays valid."
    )
    auth_mode: AuthMode = Field(
        "transactions", description="Which requests need a login: transactions, writes or all."
    )
    registration: Registration = Field("open", description="Whether POST /auth/register works.")
    # At most 16 KiB: a key is in the request target, which httptools caps at 65,535 bytes
    # (service/protocol.py), and a key of which every byte is %-encoded takes three times its size.
    max_key_bytes: int = Field(
        _STORE.max_key_bytes, ge=1, le=16_384, description="Longest key, in UTF-8 bytes."
    )
    max_value_bytes: int = Field(
        _STORE.max_value_bytes, ge=0, le=256 << 20, description="Largest value, in UTF-8 bytes."
    )
    max_transaction_bytes: int = Field(
        _STORE.max_transaction_bytes,
        ge=1,
        lt=1 << 30,  # under the engine's largest record (1 GiB), which commit writes as one
        description="Most bytes one transaction may stage (keys, values, framing), every level.",
    )
    max_transaction_ops: int = Field(
        _STORE.max_transaction_ops,
        ge=1,
        le=1_000_000,
        description="Most writes and deletes one transaction may stage, every level.",
    )
    compact_min_bytes: int = Field(
        _STORE.compact_min_bytes,
        ge=0,
        description="No automatic compaction below this many bytes on disk.",
    )
    compact_dead_ratio: float = Field(
        _STORE.compact_dead_ratio,
        gt=0,
        le=1,
        description="Compact when this share of the bytes on disk is dead.",
    )
    active_hint_bytes: int = Field(
        _STORE.active_hint_bytes,
        ge=0,
        le=1 << 40,
        description="The newest segment's hint file is written again each time it grew this "
        "much, so that a restart after a crash replays about this much of it; 0: only at a "
        "clean shutdown (a crash then replays the whole segment, 64 MiB).",
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds a request's headers may take to arrive (from connection open, or "
        "from the first byte of a keep-alive request); then 408 and the connection is closed.",
    )
    body_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Longest pause, in seconds, between two reads of a request body; then 408.",
    )
    body_total_timeout: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="Seconds a request body may take to arrive in full; then 408.",
    )
    export_max_concurrent: int = Field(
        2,
        ge=1,
        le=64,
        description="GET /export answers streaming at once; one more is 429 (each holds a copy "
        "of its keys and keeps the segment files it reads open).",
    )
    export_time_limit: float = Field(
        600.0,
        gt=0,
        le=86_400,
        description="Seconds one GET /export may take to send, a slow reader's included; then "
        "the connection is closed and the client sees a truncated answer.",
    )
    backup_time_limit: float = Field(
        3600.0,
        gt=0,
        le=7 * 86_400,
        description="Seconds one GET /admin/backup may take to send, a slow reader's included; "
        "then the connection is closed (the client sees a truncated archive) and its staged "
        "links are removed.",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Server log level (info and debug include the access log)."
    )
    log_format: LogFormat = Field(
        "json",
        description="Server log lines, the access log's included: one JSON object a line, or "
        "plain text.",
    )
    log_keys: bool = Field(
        False,
        description="true: name the key in access log lines (values, passwords and tokens "
        "never are).",
    )
    metrics: bool = Field(
        True,
        description="true: serve Prometheus metrics at GET /metrics, counting every request; "
        "false: no /metrics, nothing counted.",
    )

    watch_history: int = Field(
        _STORE.watch_history,
        ge=0,
        le=1 << 40,
        description="Revisions compaction keeps for watchers resuming from an older one "
        "(GET /watch from_revision, Last-Event-ID); older ones answer 410.",
    )
    watch_max_watchers: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="Watch streams and long polls served at once; one more is 503.",
    )
    watch_queue_events: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Events queued for one watch stream that reads too slowly; one more ends "
        "it with event: overflow (it resumes with Last-Event-ID).",
    )
    watch_heartbeat_seconds: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="Seconds between the comment lines that keep an idle watch stream open.",
    )
    # A minute: far beyond what a live reader needs to take 64 KiB (a 10 kbit/s link takes
    # 52 s), four heartbeats at the default; a reader that is cut off loses nothing anyway.
    watch_stall_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Seconds a watch stream may wait for its client to take the next piece "
        "(64 KiB) of it; then the stream is closed and its slot freed (the client resumes "
        "with Last-Event-ID); checked every quarter of it, so a stalled stream ends after 1 "
        "to 1.25 times it. A paused send waits for ~112 KiB to drain, so a reader slower "
        "than ~16 kbit/s while events flow is cut at the default.",
    )

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses(cls, value: str) -> str:
        # Checked here: uvicorn takes a typo for a name it will never match, silently.
        for item in value.split(","):
            item = item.strip()
            if item != "*":
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"{item!r} is not an address, a network or *") from None
        return value

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_not_empty(cls, value: Any) -> Any:
        # Path("") is the current directory: FILEKV_DATA_DIR= (unset in a unit file) would
        # have put the store's files wherever the server happened to start.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty (use . for the current directory)")
        return value

    def store_options(self, **changes: Any) -> StoreOptions:
        """The engine's options these settings describe (``changes`` replacing fields)."""
        fields: dict[str, Any] = {
            "fsync": self.fsync,
            "fsync_interval_ms": self.fsync_interval_ms,
            "max_key_bytes": self.max_key_bytes,
            "max_value_bytes": self.max_value_bytes,
            "max_transaction_bytes": self.max_transaction_bytes,
            "max_transaction_ops": self.max_transaction_ops,
            "compact_min_bytes": self.compact_min_bytes,
            "compact_dead_ratio": self.compact_dead_ratio,
            "active_hint_bytes": self.active_hint_bytes,
            "watch_history": self.watch_history,
        }
        return StoreOptions(**(fields | changes))


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, with explicit (non-None) overrides winning."""
    return Settings(**{name: value for name, value in overrides.items() if value is not None})
