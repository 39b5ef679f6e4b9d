"""Configuration: every problem reported with its dotted path; secrets by reference."""

from __future__ import annotations

import pytest

from dutybridge.app import load
from dutybridge.config import ConfigError


def problems(exc: ConfigError) -> list[str]:
    return exc.problems


def test_valid_config_loads_with_defaults(make_config):
    config, _ = make_config()
    assert config.daemon.listen_host == "127.0.0.1"
    assert config.daemon.max_body_bytes == 1024 * 1024
    assert config.pagerduty.rate_limit_per_minute == 960
    assert config.pagerduty.api_key.get_secret_value() == "pd-key-9f8e7d6c5b4a"
    assert "pd-key" not in repr(config.pagerduty)


def test_every_problem_is_one_line_with_its_dotted_path(write_config):
    path = write_config({
        "daemon": {"listen_port": "eighty", "log_level": "loud", "colour": True},
        "pagerduty": {"webhook_secrets": "not-a-list"},
        "servicenow": {"instance_url": "ftp://sn"},
        "plugins": {"enabled": ["no_such_plugin"]},
        "extra": {},
    })
    with pytest.raises(ConfigError) as info:
        load(path)
    lines = problems(info.value)
    expected = {
        "daemon.listen_port": "found 'eighty' (string)",
        "daemon.log_level": "'debug', 'info', 'warning' or 'error'",
        "daemon.colour": "unknown key",
        "pagerduty.webhook_secrets": "list",
        "servicenow.instance_url": "http:// or https://",
        "plugins.enabled": "unknown plugin 'no_such_plugin' (known: custom_headers",
        "extra": "unknown section",
    }
    for key, fragment in expected.items():
        assert any(line.startswith(key + ":") and fragment in line for line in lines), (key, lines)
    assert len(lines) == len(expected)
    assert all(str(path) in line for line in str(info.value).splitlines())


def test_missing_required_keys_are_named(write_config):
    path = write_config(raw='[pagerduty]\n[servicenow]\nusername = "u"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "pagerduty.api_key: required key is missing" in info.value.problems
    assert "servicenow.instance_url: required key is missing" in info.value.problems
    assert "servicenow.password: required key is missing" in info.value.problems


def test_toml_syntax_error_names_the_file(write_config):
    path = write_config(raw="[daemon\nlisten_port = 1\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value)


def test_env_and_file_secret_references(write_config, tmp_path, monkeypatch):
    monkeypatch.setenv("PD_KEY_FOR_TEST", "from-the-environment")
    (tmp_path / "sn-password").write_text("from-a-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "doorbell").write_text("from-systemd-credentials")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    path = write_config({
        "pagerduty": {"api_key": "env:PD_KEY_FOR_TEST"},
        "servicenow": {"password": f"file:{tmp_path / 'sn-password'}", "doorbell_token": "file:doorbell"},
    })
    config, _ = load(path)
    assert config.pagerduty.api_key.get_secret_value() == "from-the-environment"
    assert config.servicenow.password.get_secret_value() == "from-a-file"
    assert config.servicenow.doorbell_token.get_secret_value() == "from-systemd-credentials"
    assert set(config.secrets()) >= {"from-the-environment", "from-a-file", "from-systemd-credentials"}


def test_unresolvable_secret_reference_is_a_clear_error_without_the_value(write_config, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = write_config({"pagerduty": {"api_key": "env:NOT_SET_ANYWHERE"},
                         "servicenow": {"password": "file:/nonexistent/pw"}})
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "pagerduty.api_key: environment variable NOT_SET_ANYWHERE is not set" in info.value.problems
    assert any(p.startswith("servicenow.password: secret file /nonexistent/pw not found") for p in info.value.problems)


def test_wrong_type_for_a_secret_does_not_echo_it(write_config):
    path = write_config({"servicenow": {"password": 12345678}})
    with pytest.raises(ConfigError) as info:
        load(path)
    assert any(p.startswith("servicenow.password:") for p in info.value.problems)
    assert "12345678" not in str(info.value)


def test_plugin_section_is_validated_by_the_plugin_schema(write_config):
    path = write_config({"plugins": {"enabled": ["custom_headers"],
                                     "custom_headers": {"pagerduty": "no colon here", "color": 1}}})
    with pytest.raises(ConfigError) as info:
        load(path)
    lines = info.value.problems
    assert any(p.startswith("plugins.custom_headers.pagerduty: line 1: expected 'Name: value'") for p in lines), lines
    assert "plugins.custom_headers.color: unknown key" in lines


def test_section_of_a_plugin_not_enabled_is_reported(write_config):
    path = write_config({"plugins": {"custom_headers": {"pagerduty": "X-A: 1"}}})
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [
        "plugins.custom_headers: unknown section; no enabled plugin declares it (enable it in plugins.enabled)"]


def test_relative_store_path_resolves_under_state_directory(make_config, tmp_path, monkeypatch):
    config, _ = make_config()
    assert config.resolve_path("x.db", state=True) == tmp_path / "x.db"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    assert config.resolve_path("x.db", state=True) == tmp_path / "state" / "x.db"
