"""Load and validate ``config.toml``; every error names the dotted key path.
Secret values may be ``env:NAME`` or ``file:PATH`` references (see ``resolve_secret``).
"""

from __future__ import annotations

import difflib
import os
import stat
import tomllib
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticUndefined

from .store.postgres_url import split_url

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], path: str | os.PathLike[str] | None = None):
        self.problems = problems
        self.path = str(path) if path else None
        where = f"{self.path}: " if self.path else ""
        super().__init__("\n".join(f"{where}{p}" for p in problems))


SECRET_PREFIXES = ("env:", "file:")


def resolve_secret(value: Any, info: ValidationInfo) -> Any:
    """Turn ``env:NAME`` / ``file:PATH`` references into their value.

    ``env:NAME`` reads an environment variable, ``file:PATH`` reads a file. A relative
    ``file:`` path is looked up in ``$CREDENTIALS_DIRECTORY`` first (systemd credentials),
    then in the validation context's ``base_dir`` (the config file's folder, as for
    ``hooks_dir`` and ``store_url``; else the working folder).
    """
    if not isinstance(value, str):
        return value
    if value.startswith("env:"):
        name = value[4:]
        if not name:
            raise ValueError("'env:' needs a variable name, as in env:PAGERDUTY_API_KEY")
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return os.environ[name]
    if value.startswith("file:"):
        raw = value[5:]
        if not raw:
            raise ValueError("'file:' needs a path, as in file:/etc/dutybridge/pd-key")
        path = Path(raw)
        candidates = [path]
        if not path.is_absolute():
            context = info.context if isinstance(info.context, dict) else {}
            base = Path(context.get("base_dir") or Path.cwd())
            candidates = [base / path]
            creds = os.environ.get("CREDENTIALS_DIRECTORY")
            if creds:
                candidates.insert(0, Path(creds) / path)
        for candidate in candidates:
            if candidate.is_file():
                try:
                    text = candidate.read_text().strip()
                except OSError as exc:
                    raise ValueError(f"cannot read secret file {candidate}: {exc.strerror}") from None
                if not text:
                    raise ValueError(f"secret file {candidate} is empty")
                context = info.context if isinstance(info.context, dict) else {}
                mode = candidate.stat().st_mode
                if mode & (stat.S_IRGRP | stat.S_IROTH) and isinstance(context.get("warnings"), list):
                    context["warnings"].append(
                        f"secret file {candidate} is readable by group or others ({stat.filemode(mode)}). "
                        f"Fix with: chmod 600 {candidate}"
                    )
                return text
        raise ValueError(f"secret file {raw} not found (looked at {', '.join(map(str, candidates))})")
    return value


Secret = Annotated[SecretStr, BeforeValidator(resolve_secret)]
"""A secret: shown as ``**********``; ``.get_secret_value()`` gives the value."""


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


class Config(BaseModel):
    """The whole validated configuration.

    The core owns ``[daemon]``, ``[pagerduty]``, ``[servicenow]`` and ``[plugins]``; each
    enabled plugin declares the schema of its own ``[plugins.<name>]`` section through the
    ``register_config_sections`` hook.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)
    daemon: DaemonConfig
    pagerduty: PagerDutyConfig
    servicenow: ServiceNowConfig
    plugins_enabled: list[str] = Field(default_factory=list)
    plugin_sections: dict[str, Any] = Field(default_factory=dict)
    path: str | None = None
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)
    #: Problems that do not stop start-up (``config check`` prints them, ``run`` logs them).
    warnings: list[str] = Field(default_factory=list)

    @property
    def base_dir(self) -> Path:
        return Path(self.path).resolve().parent if self.path else Path.cwd()

    def resolve_path(self, value: str, *, state: bool = False) -> Path:
        """A path from the config: relative ones resolve against $STATE_DIRECTORY
        (for state files, when set by systemd) or the config file's folder."""
        p = Path(value)
        if p.is_absolute():
            return p
        if state and os.environ.get("STATE_DIRECTORY"):
            return Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / p
        return self.base_dir / p

    def secrets(self) -> list[str]:
        """Every secret value in the configuration, for log redaction."""
        out: list[str] = []

        def walk(obj: Any) -> None:
            if isinstance(obj, SecretStr):
                v = obj.get_secret_value()
                if v:
                    out.append(v)
            elif isinstance(obj, BaseModel):
                for name in type(obj).model_fields:
                    walk(getattr(obj, name))
                # Values a section resolves and keeps privately (a plugin's header values).
                walk(list((obj.__pydantic_private__ or {}).values()))
            elif isinstance(obj, (list, tuple)):
                for item in obj:
                    walk(item)
            elif isinstance(obj, dict):
                for item in obj.values():
                    walk(item)

        walk([self.daemon, self.pagerduty, self.servicenow, self.plugin_sections])
        # Basic auth sends base64("user:password"): the pair is a secret of its own.
        sn = self.servicenow
        for user, password in ((sn.username, sn.password), (sn.doorbell_username, sn.doorbell_password)):
            if user and password is not None and password.get_secret_value():
                out.append(f"{user}:{password.get_secret_value()}")
        return out


CORE_SECTIONS: dict[str, type[BaseModel]] = {
    "daemon": DaemonConfig,
    "pagerduty": PagerDutyConfig,
    "servicenow": ServiceNowConfig,
}


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (boolean)"
    if isinstance(value, (int, float)):
        return f"{value!r} ({type(value).__name__})"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"{shown!r} (string)"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def _known_keys(model: type[BaseModel] | None, loc: list[str]) -> list[str]:
    """The keys the (sub)model at ``loc`` accepts, following nested sections."""
    for part in loc:
        field = model.model_fields.get(part) if model is not None else None
        annotation = field.annotation if field is not None else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def _did_you_mean(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def format_validation_error(
    prefix: str,
    exc: ValidationError,
    secret_paths: AbstractSet[str] = frozenset(),
    model: type[BaseModel] | None = None,
) -> list[str]:
    """One line per error: ``dotted.path: expected ..., found ...``.

    With ``model`` (the schema validated), an unknown key names the closest known one.
    """
    lines = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        # pydantic adds the validator's name for Annotated/union members; keep the key path only.
        loc = [
            p
            for p in loc
            if p
            not in (
                "str",
                "SecretStr",
                "constrained-str",
                "is-instance[SecretStr]",
                "function-before[resolve_secret(), SecretStr]",
            )
        ]
        path = ".".join([prefix, *loc]) if prefix else ".".join(loc)
        kind = err["type"]
        msg = err["msg"]
        if kind == "extra_forbidden":
            lines.append(f"{path}: unknown key{_did_you_mean(loc[-1], _known_keys(model, loc[:-1]))}")
            continue
        if kind == "missing":
            lines.append(f"{path}: required key is missing")
            continue
        found = err.get("input")
        is_secret = any(path == s or path.startswith(s + ".") for s in secret_paths)
        found_text = "" if is_secret or kind == "value_error" else f", found {_describe(found)}"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"{path}: {msg[0].lower() + msg[1:]}{found_text}")
    return lines


def _secret_paths(prefix: str, model: type[BaseModel]) -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        text = repr(field.annotation)
        if "SecretStr" in text:
            out.add(f"{prefix}.{name}")
    return out


def _literal_secrets(prefix: str, model: type[BaseModel], data: dict[str, Any]) -> list[str]:
    """A warning for each secret written into the file itself rather than referenced."""
    out = []
    for dotted in sorted(_secret_paths(prefix, model)):
        value = data.get(dotted.rsplit(".", 1)[1])
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and v and not v.startswith(SECRET_PREFIXES) for v in values):
            out.append(
                f"{dotted}: the secret is written in the file itself; refer to it as env:NAME or file:PATH instead"
            )
    return out


def _held_secrets(prefix: str, model: type[BaseModel], data: dict[str, Any]) -> list[str]:
    """The keys whose secret the file holds itself: what any reader of the file learns.
    (A ``file:`` secret's own file is checked where it is read, in resolve_secret.)"""
    out = []
    for dotted in sorted(_secret_paths(prefix, model)):
        value = data.get(dotted.rsplit(".", 1)[1])
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and v and not v.startswith(SECRET_PREFIXES) for v in values):
            out.append(dotted)
    return out


def file_permission_findings(path: str | os.PathLike, holders: list[str]) -> tuple[list[str], list[str]]:
    """(problems, warnings) about the config file's mode: writable by others is refused
    (whoever writes it picks hooks_dir, and so runs code as the daemon); readable by
    group or others is a warning when it holds secrets or the paths of their files."""
    try:
        st = os.stat(path)
    except OSError:
        return [], []
    mode = stat.filemode(st.st_mode)
    if st.st_mode & stat.S_IWOTH:
        return [
            f"refused: the file is writable by others ({mode}); whoever can write it chooses the code the "
            f"daemon runs. Fix with: chmod o-w {path}"
        ], []
    warnings = []
    if st.st_mode & stat.S_IWGRP:
        warnings.append(
            f"the file is writable by its group ({mode}); every member can change what the daemon "
            f"runs. Fix with: chmod g-w {path}"
        )
    if holders and st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(
            f"the file holds secrets ({', '.join(holders)}) and is readable by "
            f"group or others ({mode}). Fix with: chmod 600 {path}"
        )
    return [], warnings


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"file not found (create one with: dutybridge config init --output {p})"], path) from None
    except IsADirectoryError:
        raise ConfigError(["is a folder, not a TOML file"], path) from None
    except PermissionError:
        raise ConfigError(["permission denied"], path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], path) from None


def validate(
    raw: dict[str, Any],
    plugin_schemas: dict[str, type[BaseModel]],
    *,
    known_plugins: list[str] | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Config:
    """Validate a parsed TOML document; raise ConfigError with every problem found."""
    problems: list[str] = []
    warnings: list[str] = []
    holders: list[str] = []
    # Relative file: secrets resolve against the config file's folder, as hooks_dir does.
    context: dict[str, Any] = {"base_dir": Path(path).resolve().parent if path else Path.cwd(), "warnings": warnings}
    sections: dict[str, Any] = {}
    allowed_top = set(CORE_SECTIONS) | {"plugins"}
    for key in raw:
        if key not in allowed_top:
            problems.append(f"{key}: unknown section (known: {', '.join(sorted(allowed_top))})")
    for name, model in CORE_SECTIONS.items():
        data = raw.get(name, {})
        if not isinstance(data, dict):
            problems.append(f"{name}: expected a table, found {_describe(data)}")
            continue
        try:
            sections[name] = model.model_validate(data, context=context)
        except ValidationError as exc:
            problems += format_validation_error(name, exc, _secret_paths(name, model), model)
        warnings += _literal_secrets(name, model, data)
        holders += _held_secrets(name, model, data)

    # Plugin sections may check what they depend on in the core's (e.g. daemon.public_url).
    context["daemon"] = sections.get("daemon")
    plugins_raw = raw.get("plugins", {})
    enabled: list[str] = []
    plugin_sections: dict[str, Any] = {}
    if not isinstance(plugins_raw, dict):
        problems.append(f"plugins: expected a table, found {_describe(plugins_raw)}")
    else:
        en = plugins_raw.get("enabled", [])
        if not isinstance(en, list) or not all(isinstance(x, str) for x in en):
            problems.append(f"plugins.enabled: expected an array of plugin names, found {_describe(en)}")
        else:
            enabled = list(en)
            if known_plugins is not None:
                for name in enabled:
                    if name not in known_plugins:
                        problems.append(
                            f"plugins.enabled: unknown plugin {name!r} (known: {', '.join(sorted(known_plugins)) or 'none'})"
                        )
            seen = set()
            for name in enabled:
                if name in seen:
                    problems.append(f"plugins.enabled: {name!r} is listed twice")
                seen.add(name)
        for key, value in plugins_raw.items():
            if key == "enabled":
                continue
            if key not in plugin_schemas:
                hint = " (enable it in plugins.enabled)" if known_plugins and key in known_plugins else ""
                problems.append(f"plugins.{key}: unknown section; no enabled plugin declares it{hint}")
            elif not isinstance(value, dict):
                problems.append(f"plugins.{key}: expected a table, found {_describe(value)}")
        for name, model in plugin_schemas.items():
            data = plugins_raw.get(name, {})
            if not isinstance(data, dict):
                continue
            try:
                plugin_sections[name] = model.model_validate(data, context=context)
            except ValidationError as exc:
                problems += format_validation_error(
                    f"plugins.{name}", exc, _secret_paths(f"plugins.{name}", model), model
                )
            warnings += _literal_secrets(f"plugins.{name}", model, data)
            holders += _held_secrets(f"plugins.{name}", model, data)
    if path:
        refused, permission_warnings = file_permission_findings(path, holders)
        problems += refused
        warnings += permission_warnings
    if problems:
        raise ConfigError(problems, path)
    return Config(
        daemon=sections["daemon"],
        pagerduty=sections["pagerduty"],
        servicenow=sections["servicenow"],
        plugins_enabled=enabled,
        plugin_sections=plugin_sections,
        path=str(path) if path else None,
        raw=raw,
        warnings=warnings,
    )


# --------------------------------------------------------------------------------------
# The commented starting file: `dutybridge config init` and config.toml.example
# --------------------------------------------------------------------------------------

#: Values written for required keys, so the starting file shows what to put there.
PLACEHOLDERS: dict[str, Any] = {
    "pagerduty.api_key": "env:PAGERDUTY_API_KEY",
    "servicenow.instance_url": "https://YOUR-INSTANCE.service-now.com",
    "servicenow.username": "pagerduty.integration",
    "servicenow.password": "env:SERVICENOW_PASSWORD",
    "servicenow.doorbell_token": "env:DUTYBRIDGE_DOORBELL_TOKEN",
    "servicenow.doorbell_password": "env:DUTYBRIDGE_DOORBELL_PASSWORD",
}

#: ``config init --systemd``: the unit hands no environment, only the credentials of
#: contrib/systemd/dutybridge.service (``LoadCredential=``), found in $CREDENTIALS_DIRECTORY.
SYSTEMD_PLACEHOLDERS: dict[str, Any] = {
    **PLACEHOLDERS,
    "pagerduty.api_key": "file:pagerduty-api-key",
    "pagerduty.webhook_secrets": ["file:pagerduty-webhook-secret"],
    "servicenow.password": "file:servicenow-password",
    "servicenow.doorbell_token": "file:doorbell-token",
    "servicenow.doorbell_password": "file:doorbell-password",
}

SECTION_COMMENTS = {
    "daemon": "The daemon itself: listening, logging, the durable store, the worker.",
    "pagerduty": "PagerDuty REST API v2 and V3 webhooks.",
    "servicenow": "ServiceNow Table API, and the doorbell its business rule posts to /webhooks/servicenow.",
}


def _example_value(path: str, field: Any, placeholders: dict[str, Any]) -> tuple[Any, bool]:
    """(value to write, whether the key is required)."""
    if field.is_required():
        return placeholders.get(path, ""), True
    default = field.get_default(call_default_factory=True)
    if default is PydanticUndefined:
        return "", True
    if default is not None and path in placeholders:
        return placeholders[path], False
    return default, False


def _render_section(
    header: str, model: type[BaseModel], comment: str, commented: bool, placeholders: dict[str, Any] = PLACEHOLDERS
) -> list[str]:
    lines = [f"# {comment}" if comment else "", f"[{header}]"]
    for name, field in model.model_fields.items():
        path = f"{header}.{name}"
        value, required = _example_value(path, field, placeholders)
        desc = field.description or ""
        note = " (required)" if required else ""
        if desc or note:
            lines.append(f"# {desc}{note}".rstrip())
        if value is None:
            # Unset by default: shown commented out, with the form a value takes.
            hint = tomli_w.dumps({name: placeholders.get(path, "")}).rstrip("\n")
            lines.append(f"# {hint}")
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, dict):
            # tomli_w writes a table as a [header], which would take in the keys after it.
            items = ", ".join(tomli_w.dumps({k: v}).rstrip("\n") for k, v in value.items())
            lines.append(f"{name} = {{{items}}}")
            continue
        # A long array is written over several lines: each is its own line, to be commented out.
        lines.extend(tomli_w.dumps({name: value}).rstrip("\n").splitlines())
    if commented:
        lines = [lines[0]] + [line if (not line or line.startswith("#")) else "# " + line for line in lines[1:]]
    return lines


def render_example(
    plugin_schemas: dict[str, type[BaseModel]], enabled: list[str] | None = None, *, systemd: bool = False
) -> str:
    """A complete, commented configuration file: every key with its default.

    Sections of plugins that are not in ``enabled`` are written commented out, so the
    file validates as it is and enabling a plugin means uncommenting its section.
    ``systemd``: secrets are ``file:`` references named for the unit's credentials.
    """
    enabled = list(enabled or [])
    placeholders = SYSTEMD_PLACEHOLDERS if systemd else PLACEHOLDERS
    secrets_note = (
        [
            "# Secrets: file:NAME reads the credential NAME that contrib/systemd/dutybridge.service",
            "# loads with LoadCredential= from /etc/dutybridge/credentials/NAME ($CREDENTIALS_DIRECTORY).",
        ]
        if systemd
        else [
            "# Secrets: write env:NAME to read an environment variable, or file:PATH to read a file",
            "# (relative paths: $CREDENTIALS_DIRECTORY first, for systemd, then this file's folder).",
        ]
    )
    out = [
        "# dutybridge configuration. Every key is shown with its default.",
        *secrets_note,
        "# Validate with: dutybridge config check --config PATH",
        "",
    ]
    for name, model in CORE_SECTIONS.items():
        out += _render_section(name, model, SECTION_COMMENTS[name], commented=False, placeholders=placeholders)
        out.append("")
    out += [
        "# Features, each a plugin, enabled by name. Known built-in plugins: "
        + (", ".join(sorted(plugin_schemas)) or "none"),
        "[plugins]",
        tomli_w.dumps({"enabled": enabled}).rstrip("\n"),
        "",
    ]
    for name, model in sorted(plugin_schemas.items()):
        doc = (model.__doc__ or "").strip().splitlines()
        out += _render_section(
            f"plugins.{name}", model, doc[0] if doc else f"The {name} plugin.", commented=name not in enabled
        )
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"
