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
    path = write_config(
        {
            "daemon": {"listen_port": "eighty", "log_level": "loud", "colour": True},
            "pagerduty": {"webhook_secrets": "not-a-list"},
            "servicenow": {"instance_url": "ftp://sn"},
            "plugins": {"enabled": ["no_such_plugin"]},
            "extra": {},
        }
    )
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
    path = write_config(
        {
            "pagerduty": {"api_key": "env:PD_KEY_FOR_TEST"},
            "servicenow": {"password": f"file:{tmp_path / 'sn-password'}", "doorbell_token": "file:doorbell"},
        }
    )
    config, _ = load(path)
    assert config.pagerduty.api_key.get_secret_value() == "from-the-environment"
    assert config.servicenow.password.get_secret_value() == "from-a-file"
    assert config.servicenow.doorbell_token.get_secret_value() == "from-systemd-credentials"
    assert set(config.secrets()) >= {"from-the-environment", "from-a-file", "from-systemd-credentials"}


def test_unresolvable_secret_reference_is_a_clear_error_without_the_value(write_config, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = write_config(
        {"pagerduty": {"api_key": "env:NOT_SET_ANYWHERE"}, "servicenow": {"password": "file:/nonexistent/pw"}}
    )
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
    path = write_config(
        {"plugins": {"enabled": ["custom_headers"], "custom_headers": {"pagerduty": "no colon here", "color": 1}}}
    )
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
        "plugins.custom_headers: unknown section; no enabled plugin declares it (enable it in plugins.enabled)"
    ]


def test_relative_store_path_resolves_under_state_directory(make_config, tmp_path, monkeypatch):
    config, _ = make_config()
    assert config.resolve_path("x.db", state=True) == tmp_path / "x.db"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    assert config.resolve_path("x.db", state=True) == tmp_path / "state" / "x.db"


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_an_empty_secret_file_is_an_error_naming_the_file(write_config, tmp_path, content):
    (tmp_path / "sn-password").write_text(content)
    path = write_config({"servicenow": {"password": f"file:{tmp_path / 'sn-password'}"}})
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [f"servicenow.password: secret file {tmp_path / 'sn-password'} is empty"]


def test_the_instance_url_placeholder_of_config_init_is_rejected(write_config):
    path = write_config({"servicenow": {"instance_url": "https://YOUR-INSTANCE.service-now.com"}})
    with pytest.raises(ConfigError) as info:
        load(path)
    [line] = info.value.problems
    assert line.startswith("servicenow.instance_url: still the placeholder written by `config init`")


def test_a_literal_secret_is_a_warning_naming_the_key_never_the_value(
    write_config, tmp_path, monkeypatch, config_secrets
):
    config, _ = load(write_config())
    assert sorted(w.split(":", 1)[0] for w in config.warnings) == [
        "pagerduty.api_key",
        "pagerduty.webhook_secrets",
        "servicenow.doorbell_token",
        "servicenow.password",
    ]
    assert all("env:NAME or file:PATH" in w for w in config.warnings)
    assert not any(s in w for s in config_secrets for w in config.warnings)

    monkeypatch.setenv("PD_KEY_FOR_TEST", "from-the-environment")
    (tmp_path / "pw").write_text("from-a-file")
    config, _ = load(
        write_config(
            {
                "pagerduty": {"api_key": "env:PD_KEY_FOR_TEST", "webhook_secrets": []},
                "servicenow": {"password": "file:pw", "doorbell_token": "env:PD_KEY_FOR_TEST"},
            }
        )
    )
    assert config.warnings == []


def test_a_relative_secret_file_is_relative_to_the_config_file_not_the_working_folder(
    write_config, tmp_path, monkeypatch
):
    (tmp_path / "sn-password").write_text("beside-the-config")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "sn-password").write_text("in-the-working-folder")
    monkeypatch.chdir(elsewhere)
    path = write_config({"servicenow": {"password": "file:sn-password"}})
    config, _ = load(path)
    assert config.servicenow.password.get_secret_value() == "beside-the-config"

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "sn-password").write_text("from-systemd-credentials")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config, _ = load(path)
    assert config.servicenow.password.get_secret_value() == "from-systemd-credentials"


def test_a_missing_relative_secret_file_names_every_path_looked_at(write_config, tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    path = write_config({"servicenow": {"password": "file:servicenow-password"}})
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [
        f"servicenow.password: secret file servicenow-password not found "
        f"(looked at {creds / 'servicenow-password'}, {tmp_path / 'servicenow-password'})"
    ]


def test_an_unknown_key_suggests_the_closest_known_one(write_config):
    path = write_config(
        {
            "daemon": {"listen_prot": 8080, "zzz": 1},
            "servicenow": {"doorbel_token": "env:X"},
            "plugins": {"enabled": ["custom_headers"], "custom_headers": {"pagerdty": "X-A: 1"}},
        }
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    assert sorted(info.value.problems) == [
        "daemon.listen_prot: unknown key (did you mean listen_port?)",
        "daemon.zzz: unknown key",
        "plugins.custom_headers.pagerdty: unknown key (did you mean pagerduty?)",
        "servicenow.doorbel_token: unknown key (did you mean doorbell_token?)",
    ]
