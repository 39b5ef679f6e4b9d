"""The schema of the core's configuration sections (``[daemon]``, ``[pagerduty]``,
``[servicenow]``, ``[plugins]``) and ``Section``, the base of every plugin's section.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .config_secrets import Secret
from .store.postgres_url import split_url

LOG_LEVELS = ("debug", "info", "warning", "error")


class Section(BaseModel):
    """Base for every configuration section: strict types, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)


class DaemonConfig(Section):
    listen_host: str = Field(
        "127.0.0.1", description="Address the webhook server binds to. Keep 127.0.0.1 behind a reverse proxy."
    )
    listen_port: int = Field(
        8080, ge=0, le=65535, description="Port the webhook server listens on (0 picks a free port)."
    )
    public_url: str = Field(
        "", description="The URL PagerDuty and ServiceNow use to reach this daemon (used when provisioning webhooks)."
    )
    hooks_dir: str = Field(
        "",
        description="Folder of user hook files (*.py) customising outbound requests; empty for none. Relative to the config file.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log verbosity: debug, info, warning or error."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: coloured console on a terminal, JSON lines otherwise (journald)."
    )
    log_levels: dict[str, Literal["debug", "info", "warning", "error"]] = Field(
        default_factory=dict,
        description='Levels of single loggers, by name, e.g. {aiosqlite = "debug"}. Libraries (aiosqlite, asyncio, apscheduler, aiohttp, urllib3) stay at warning unless named here; their debug lines carry SQL and payloads.',
    )
    store_url: str = Field(
        "sqlite:///dutybridge.db",
        description="Durable store. sqlite:///PATH (relative to $STATE_DIRECTORY, else the config file's folder), or postgresql://USER@HOST[:PORT]/DATABASE[?schema=NAME] shared by several instances (password in store_password, never in the URL).",
    )
    store_password: Secret | None = Field(
        None,
        description="Password of the PostgreSQL store_url's user: env:NAME or file:PATH. Unset: none (trust, peer or a ~/.pgpass entry).",
    )
    leader_lease_seconds: float = Field(
        15.0,
        ge=1,
        le=3600,
        description="PostgreSQL store: scheduled jobs run on one instance, the leader; another takes over within this many seconds of its death.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest webhook body accepted; larger ones are answered 413."
    )
    max_body_bytes_in_flight: int = Field(
        33_554_432,
        ge=1024,
        description="Body bytes being read at once over all requests (V3 webhooks are read before their signature can be checked); past it new bodies are answered 503 with Retry-After.",
    )
    header_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="A client must send a request's line and headers within this many seconds of connecting (or of starting its next request), else the connection is closed (nginx's client_header_timeout).",
    )
    body_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest wait between two reads of a request body; past it the request is answered 408 and the connection closed (nginx's client_body_timeout).",
    )
    keepalive_timeout_seconds: float = Field(
        75.0,
        gt=0,
        description="An idle keep-alive connection is closed after this many seconds (nginx's keepalive_timeout). Read at start.",
    )
    max_connections: int = Field(
        512,
        ge=1,
        le=1_000_000,
        description="Client connections open at once; at the cap the longest idle one is closed for a newcomer. Lowered to fit the file limit (LimitNOFILE=) with a warning. Read at start.",
    )
    worker_concurrency: int = Field(8, ge=1, le=256, description="Events handled at once (never two of one resource).")
    max_attempts: int = Field(8, ge=1, le=100, description="Attempts per event before it becomes a dead letter.")
    retry_base_seconds: float = Field(2.0, gt=0, description="First retry delay; doubles per attempt, with jitter.")
    retry_max_seconds: float = Field(600.0, gt=0, description="Longest delay between two attempts of one event.")
    lease_seconds: float = Field(
        300.0, gt=0, description="How long a claimed event stays claimed before another worker may take it."
    )
    shutdown_timeout: float = Field(
        20.0,
        gt=0,
        description="Seconds from SIGTERM to exit, all included: in-flight requests, the worker's handlers, their cancellation; keep below systemd's TimeoutStopSec (30 s in the shipped unit).",
    )
    event_retention_days: int = Field(
        14, ge=0, description="Handled events are deleted after this many days (0 keeps them)."
    )

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, v: str) -> str:
        if v.startswith(("postgresql://", "postgres://")):
            split_url(v)  # host, schema name, no password in it
            return v
        if not v.startswith("sqlite:///") or v == "sqlite:///":
            raise ValueError(f"expected sqlite:///PATH or postgresql://USER@HOST/DATABASE, found {v!r}")
        return v


class PagerDutyConfig(Section):
    api_url: str = Field(
        "https://api.pagerduty.com",
        description="PagerDuty REST API v2 base URL (the EU service region uses https://api.eu.pagerduty.com).",
    )
    api_key: Secret = Field(
        description="REST API key (account key, full access). Use env:NAME or file:PATH rather than the key itself."
    )
    default_user_id: str = Field(
        "",
        description="PagerDuty user acting for the integration (base role Manager or higher); its email goes into the From header when no acting user is known.",
    )
    from_email: str = Field(
        "", description="Overrides the default user's email in the From header; empty: looked up from default_user_id."
    )
    webhook_secrets: list[Secret] = Field(
        default_factory=list, description="Secrets of the V3 webhook subscriptions; several while one is being rotated."
    )
    rate_limit_per_minute: int = Field(
        960, ge=1, description="Ceiling on requests per minute with this key (PagerDuty's limit is 960)."
    )
    timeout_seconds: float = Field(30.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(4, ge=0, le=20, description="Retries on 429, 5xx and timeouts before the call fails.")

    @field_validator("api_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v)


class ServiceNowConfig(Section):
    instance_url: str = Field(description="The instance, e.g. https://acme.service-now.com.")
    username: str = Field(
        description="The integration user (basic auth), with read/write on the tables the enabled plugins touch."
    )
    password: Secret = Field(description="The integration user's password. Use env:NAME or file:PATH.")
    doorbell_token: Secret | None = Field(
        None, description="Bearer token the ServiceNow business rule sends to POST /webhooks/servicenow."
    )
    doorbell_username: str = Field(
        "", description="Basic-auth user the business rule may send instead of a bearer token."
    )
    doorbell_password: Secret | None = Field(None, description="Basic-auth password for doorbell_username.")
    timeout_seconds: float = Field(30.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(4, ge=0, le=20, description="Retries on 429, 5xx and timeouts before the call fails.")

    @field_validator("instance_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if PLACEHOLDERS["servicenow.instance_url"].split("//", 1)[1].lower() in v.lower():
            raise ValueError(
                "still the placeholder written by `config init`: "
                "put your instance's URL here, as in https://acme.service-now.com"
            )
        return _check_url(v)


def _check_url(v: str) -> str:
    if not (v.startswith("http://") or v.startswith("https://")):
        raise ValueError(f"expected an http:// or https:// URL, found {v!r}")
    return v.rstrip("/")


class PluginsConfig(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    enabled: list[str] = Field(default_factory=list, description="Plugins to run, by name.")


CORE_SECTIONS: dict[str, type[BaseModel]] = {
    "daemon": DaemonConfig,
    "pagerduty": PagerDutyConfig,
    "servicenow": ServiceNowConfig,
}

#: Values written for required keys, so the starting file shows what to put there (here,
#: not in config_example, because ServiceNowConfig refuses its placeholder URL).
PLACEHOLDERS: dict[str, Any] = {
    "pagerduty.api_key": "env:PAGERDUTY_API_KEY",
    "servicenow.instance_url": "https://YOUR-INSTANCE.service-now.com",
    "servicenow.username": "pagerduty.integration",
    "servicenow.password": "env:SERVICENOW_PASSWORD",
    "servicenow.doorbell_token": "env:DUTYBRIDGE_DOORBELL_TOKEN",
    "servicenow.doorbell_password": "env:DUTYBRIDGE_DOORBELL_PASSWORD",
}
