"""Meta-tests: the docs, the example config and the tests keep up with the code."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from dutybridge import hookspecs
from dutybridge.app import plugin_schemas
from dutybridge.config import CORE_SECTIONS, render_example
from dutybridge.plugins import BUILTIN_PLUGINS, HOOK_NAMES, build_plugin_manager

REPO = Path(__file__).resolve().parents[2]


def documented_signatures() -> dict[str, str]:
    text = (REPO / "docs" / "hooks.md").read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"^## `(\w+)(\(.*\).*)`$", text, re.M)}


def spec_signature(name: str) -> str:
    return str(inspect.signature(getattr(hookspecs, name))).replace('"', "").replace("'", "")


@pytest.mark.parametrize("name", sorted(HOOK_NAMES))
def test_every_hook_is_documented_with_its_exact_signature(name):
    docs = documented_signatures()
    assert name in docs, f"docs/hooks.md has no section for {name}"
    assert docs[name] == spec_signature(name)
    assert getattr(hookspecs, name).__doc__.strip(), f"hookspec {name} has no docstring"


def test_docs_name_no_hook_that_does_not_exist():
    assert set(documented_signatures()) <= HOOK_NAMES


@pytest.mark.parametrize("name", sorted(HOOK_NAMES))
def test_every_hook_has_a_test(name):
    tests = [p for p in (REPO / "tests").rglob("test_*.py") if p.name != "test_docs.py"]
    assert any(re.search(rf"\b{name}\b", p.read_text()) for p in tests), f"no test mentions hook {name}"


def all_schemas() -> dict[str, type[BaseModel]]:
    pm = build_plugin_manager(list(BUILTIN_PLUGINS), None)
    return {**CORE_SECTIONS, **{f"plugins.{k}": v for k, v in plugin_schemas(pm).items()}}


def test_example_config_is_the_rendered_one():
    pm = build_plugin_manager(list(BUILTIN_PLUGINS), None)
    expected = render_example(plugin_schemas(pm))
    assert (REPO / "config.toml.example").read_text() == expected, (
        "config.toml.example is stale: regenerate it with `dutybridge config init -o config.toml.example --force`"
    )


@pytest.mark.parametrize("section", sorted(all_schemas()))
def test_every_config_key_appears_in_the_example(section):
    text = (REPO / "config.toml.example").read_text()
    body = text.split(f"[{section}]", 1)
    assert len(body) == 2, f"[{section}] missing from config.toml.example"
    block = body[1].split("\n[", 1)[0].split("\n# [", 1)[0]
    for key in all_schemas()[section].model_fields:
        assert re.search(rf"^(# )?{key} = ", block, re.M), f"{section}.{key} missing from config.toml.example"


def test_example_config_parses_and_every_hook_example_loads(tmp_path):
    data = tomllib.loads((REPO / "config.toml.example").read_text())
    assert set(data) == {"daemon", "pagerduty", "servicenow", "plugins"}
    pm = build_plugin_manager([], REPO / "hooks")
    assert {n for n, _ in pm.list_name_plugin()} >= {
        "hookfile:pagerduty_header.py",
        "hookfile:redact_field.py",
        "hookfile:servicenow_correlation.py",
    }


def shell_blocks(path: Path, under: str | None = None) -> list[str]:
    """The commands of the ```sh blocks (of the section ``under``), continuations joined."""
    text = path.read_text()
    if under is not None:
        text = text.split(under, 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands += [c.strip() for c in line.split("&&")]
    return commands


INSTALL_DOCS = [(REPO / "README.md", "## Install and run as a service"), (REPO / "contrib/systemd/README.md", None)]


@pytest.mark.parametrize("path,under", INSTALL_DOCS, ids=["README", "contrib-systemd-README"])
def test_install_commands_run_as_written(path, under):
    commands = shell_blocks(path, under)
    assert commands, f"no shell commands in {path.name}"
    for command in commands:
        words = command.split()
        program = next(w for w in words if w != "sudo" and not re.match(r"^[A-Z_]+=", w))
        # pip installs no `dutybridge` on PATH: the venv's own path is the command.
        assert program != "dutybridge", f"bare dutybridge command: {command}"
        if "/etc/" in command or "/opt/" in command:
            assert words[0] in ("sudo", "sudoedit"), f"writes to /etc or /opt without sudo: {command}"
        assert "mkdir" not in words, f"use install -d, which sets the mode too: {command}"
    init = [c for c in commands if "config init" in c]
    assert init and all("--systemd" in c for c in init), "the unit passes no environment for env: references"


def test_readme_error_examples_are_what_config_check_prints(write_config):
    from dutybridge.app import load
    from dutybridge.config import ConfigError

    text = (REPO / "README.md").read_text().split("## Configuration", 1)[1].split("### Plugins", 1)[0]
    [block] = re.findall(r"```\n(config\.toml: .*?)```", text, re.S)
    shown = [line.removeprefix("config.toml: ") for line in block.splitlines()]
    path = write_config(
        {
            "daemon": {"listen_port": "eighty", "listen_prot": 8080},
            "servicenow": {"instance_url": "https://YOUR-INSTANCE.service-now.com"},
            "plugins": {"enabled": ["incident_synk"]},
        }
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    assert shown == info.value.problems


def test_the_servicenow_readme_names_the_fields_the_doorbell_script_sends():
    from dutybridge.receivers.servicenow import DOORBELL_FIELDS

    readme = (REPO / "contrib/servicenow/README.md").read_text()
    [sent] = re.findall(r"It sends only\s+`\{(.*?)\}`", readme, re.S)
    documented = re.findall(r'"(\w+)"', sent)
    script = (REPO / "contrib/servicenow/dutybridge_doorbell.js").read_text()
    body = script.split("var body = {", 1)[1].split("};", 1)[0]
    sent_by_script = re.findall(r"^\s*(\w+):", body, re.M)
    assert documented == sent_by_script == list(DOORBELL_FIELDS)
