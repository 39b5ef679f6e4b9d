"""The commented starting configuration file that ``dutybridge config init`` writes (and
config.toml.example is): every key with its description and default (``render_example``).
"""

from __future__ import annotations

from typing import Any

import tomli_w
from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from .config_sections import CORE_SECTIONS, PLACEHOLDERS

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
