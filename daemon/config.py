"""Load and validate ``config.toml``; every error names the dotted key path.
The sections' schema, secrets and the example file live in config_sections, config_secrets, config_example.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from .config_example import SECTION_COMMENTS, SYSTEMD_PLACEHOLDERS, render_example
from .config_secrets import (
    SECRET_PREFIXES,
    Secret,
    _held_secrets,
    _literal_secrets,
    _secret_paths,
    file_permission_findings,
    resolve_secret,
)
from .config_sections import (
    CORE_SECTIONS,
    LOG_LEVELS,
    PLACEHOLDERS,
    DaemonConfig,
    PagerDutyConfig,
    PluginsConfig,
    Section,
    ServiceNowConfig,
)


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], path: str | os.PathLike[str] | None = None):
        self.problems = problems
        self.path = str(path) if path else None
        where = f"{self.path}: " if self.path else ""
        super().__init__("\n".join(f"{where}{p}" for p in problems))


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


__all__ = [
    "CORE_SECTIONS",
    "LOG_LEVELS",
    "PLACEHOLDERS",
    "SECRET_PREFIXES",
    "SECTION_COMMENTS",
    "SYSTEMD_PLACEHOLDERS",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "PagerDutyConfig",
    "PluginsConfig",
    "Secret",
    "Section",
    "ServiceNowConfig",
    "file_permission_findings",
    "format_validation_error",
    "read_toml",
    "render_example",
    "resolve_secret",
    "validate",
]
