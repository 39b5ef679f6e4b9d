"""Secrets in the configuration: ``env:NAME`` / ``file:PATH`` references (``resolve_secret``,
``Secret``), and the findings about secrets held in the file and about its permissions.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, SecretStr, ValidationInfo

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
