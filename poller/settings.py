"""Settings from the environment (prefix WA_); every one is documented in .env.example."""

import base64
import binascii
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import orjson
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from poller.db import conninfo_problem, masked
from poller.errors import ConfigError


def host_port(addr: str) -> tuple[str, int]:
    """The host and port of `host:port`, `[ipv6]:port` or `:port` (every IPv4 interface)."""
    host, colon, port = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        colon = ""  # an IPv6 address needs its brackets
    if not (colon and port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(
            "should be host:port with a port from 1 to 65535 (127.0.0.1:9464, [::1]:9464, "
            "or :9464 for every interface)"
        )
    return host, int(port)


def storage_url_problem(url: str) -> str | None:
    """Why `url` is not a project URL (scheme and host, nothing after), or None."""
    try:
        parts = urlsplit(url)
        valid = (
            parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and parts.port != 0
            and parts.path in ("", "/")
            and not (parts.query or parts.fragment)
        )
    except ValueError:  # a port that is not a number up to 65535
        valid = False
    if valid:
        return None
    return (
        "should be the project's URL, https://<ref>.supabase.co (http://127.0.0.1:54321 for "
        "`supabase start`), without /storage/v1"
    )


def key_role_problem(key: str) -> str | None:
    """Why `key` cannot be the service role key, or None: a publishable key, or a JWT whose
    role is another (the anon key: Storage would show it only public objects)."""
    if key.startswith("sb_publishable_"):
        return (
            "should be a secret key (sb_secret_...) or the service_role JWT, not a publishable key"
        )
    head, _, rest = key.partition(".")
    payload, _, signature = rest.partition(".")
    if not (head and payload and signature):
        return None  # not a JWT: a secret key, which only the server can check
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return "should be the service_role JWT: this one does not decode"
    role = claims.get("role") if isinstance(claims, dict) else None
    if role != "service_role":
        return f"should be the service_role key: this JWT's role is {role!r}"
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WA_", env_file=".env", extra="ignore")

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; the poller connects as the wa_poller role."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Python logging level."
    )
    transport: Literal["simulated", "neonize"] = "simulated"
    session_workers: bool | None = Field(
        default=None,
        description="each session's client in a worker process of its own; unset: on for "
        "neonize (its Go core must not hold two clients in one process), off for simulated",
    )

    synchronous_commit: bool = Field(
        default=False,
        description="commit the poller's own writes synchronously (see README: delivery)",
    )

    # Dispatch
    batch_size: int = Field(default=200, ge=1, le=10_000)
    # Delays the database applies to a job are capped at an hour (private.retime_outbound).
    visibility_timeout: int = Field(default=30, ge=2, le=3600, description="queue lease, seconds")
    poll_interval: float = Field(default=1.0, gt=0, description="fallback poll, seconds")
    max_inflight: int = Field(default=2000, ge=1, description="messages held in memory at once")
    session_inflight: int = Field(
        default=100, ge=1, description="of which at most this many for one session"
    )

    # Failure policy
    max_attempts: int = Field(default=5, ge=1)
    retry_initial: float = Field(default=2.0, gt=0, description="first retry delay, seconds")
    retry_max: float = Field(default=300.0, gt=0, le=3600, description="retry delay cap, seconds")
    message_ttl: float = Field(default=86_400.0, gt=0, description="unsent → failed, seconds")

    # Pacing (per session)
    rate_per_minute: float = Field(default=20.0, ge=0, description="0 = unlimited")
    rate_burst: int = Field(default=1, ge=1)
    rate_jitter: float = Field(default=0.3, ge=0, le=1)
    typing_ms: float = Field(
        default=0.0, ge=0, le=20_000, description="'typing…' shown this long before a send; 0: off"
    )

    group_sync_interval: float = Field(
        default=600.0, gt=0, description="seconds between full group syncs"
    )

    # Life
    shutdown_timeout: float = Field(default=10.0, gt=0)
    heartbeat_interval: float = Field(
        default=10.0, gt=0, description="seconds between heartbeats and lease renewals"
    )
    lease_ttl: float = Field(
        default=30.0, gt=0, description="seconds a session lease lasts without a heartbeat"
    )
    metrics_addr: str | None = Field(
        default=None, description="host:port serving /metrics and /healthz; unset: off"
    )
    poller_id: str | None = Field(
        default=None,
        description="stable id (one per systemd unit): a restart takes its sessions back at "
        "once instead of waiting for the leases to expire; unset: host-pid-random",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url", "session_store_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value and (problem := conninfo_problem(value)):
            raise ValueError(problem)
        return value

    @field_validator("metrics_addr")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value:
            host_port(value)
        return value or None  # empty, as .env.example leaves it: off

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        if value and (problem := storage_url_problem(value)):
            raise ValueError(problem)
        return value or None

    @field_validator("service_role_key")
    @classmethod
    def _service_role_key(cls, value: str | None) -> str | None:
        value = (value or "").strip() or None  # a pasted key often ends in a newline
        if value and (problem := key_role_problem(value)):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> "Settings":
        if self.lease_ttl < 2 * self.heartbeat_interval:
            raise ValueError("WA_LEASE_TTL must be at least twice WA_HEARTBEAT_INTERVAL")
        return self

    @model_validator(mode="after")
    def _storage_needs_both(self) -> "Settings":
        if (self.storage_url is None) != (self.service_role_key is None):
            raise ValueError("WA_STORAGE_URL and WA_SERVICE_ROLE_KEY go together (or neither)")
        return self

    # WhatsApp through neonize
    session_store: Literal["sqlite", "postgres"] = "sqlite"
    auth_dir: Path = Field(
        default=Path("auth_info"), description="sqlite stores: session-<id>.db in this folder"
    )
    session_store_url: str | None = Field(
        default=None, description="WA_SESSION_STORE=postgres: the store's database URL"
    )
    reconnect_initial: float = Field(default=2.0, gt=0, description="first reconnect delay, s")
    reconnect_max: float = Field(default=300.0, gt=0, description="reconnect delay cap, s")
    send_timeout: float = Field(default=30.0, gt=0, description="a send or a call to WhatsApp")
    connect_timeout: float = Field(
        default=60.0, gt=0, description="seconds for WhatsApp to answer a connect"
    )
    proxy_url: str | None = Field(default=None, description="socks5:// or http:// proxy")
    stop_timeout: float = Field(default=10.0, gt=0, description="neonize stop() watchdog, s")
    bot_tag: bool = Field(
        default=False, description="let neonize tag 1:1 messages as a bot's (NEONIZE_BOT_TAG)"
    )

    # Attachments, fetched from Supabase Storage
    storage_url: str | None = Field(
        default=None, description="the project's URL; Storage is its /storage/v1; unset: none"
    )
    service_role_key: str | None = Field(
        default=None, description="the key the poller reads Storage with (bypasses its RLS)"
    )
    storage_timeout: float = Field(
        default=60.0, gt=0, description="seconds one download from Storage may take"
    )

    # Simulated WhatsApp
    sim_latency_ms: float = Field(default=50.0, ge=0)
    sim_failure_rate: float = Field(default=0.0, ge=0, le=1)
    sim_failure_kind: Literal["transient", "permanent"] = "transient"
    sim_receipts: bool = Field(default=True, description="send delivered/read receipts")
    sim_delivered_after_ms: float = Field(default=300.0, ge=0)
    sim_read_after_ms: float = Field(default=1500.0, ge=0, description="0 = never read")
    sim_seed: int = 1
    sim_log: Path | None = Field(default=None, description="JSON lines of every accepted send")
    sim_control_dir: Path | None = Field(
        default=None,
        description="file 'disconnected' (or 'disconnected-<session id>') here: offline",
    )
    sim_groups_file: Path | None = Field(
        default=None, description="JSON list of groups; unset: any group JID is accepted"
    )
    sim_own_jid: str = Field(
        default="905550000001@s.whatsapp.net", description="the simulated account's own JID"
    )


# Settings whose value an error never shows.
_SECRET = {"service_role_key"}

# pydantic's wording for these says what failed, not what is allowed.
_ALLOWED = {
    "bool_parsing": "should be true or false",
    "int_parsing": "should be a whole number",
    "float_parsing": "should be a number",
}


def load_settings() -> Settings:
    """Settings() with every invalid value in one line that names its variable and what it
    allows (no traceback); the value is shown with any password masked."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            allowed = _ALLOWED.get(error["type"]) or error["msg"].removeprefix("Value error, ")
            allowed = allowed.replace("Input should", "should")
            if error["loc"]:
                name = str(error["loc"][0])
                value = "***" if name in _SECRET else masked(str(error["input"]))
                problems.append(f"WA_{name.upper()}={value!r}: {allowed}")
            else:  # a rule across settings names them itself
                problems.append(allowed)
        raise ConfigError("invalid setting: " + "; ".join(problems)) from None
