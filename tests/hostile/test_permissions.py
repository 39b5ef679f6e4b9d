"""Files that decide what the daemon runs or knows: hook files and their folders,
the configuration file. Refused (or warned about) with the fix in the message.
"""

from __future__ import annotations

import os
import stat

import pytest

from dutybridge.cli import main
from dutybridge.config import ConfigError
from dutybridge.plugins import PluginError, build_plugin_manager

HOOK = "def outbound_request(request, ctx):\n    request.headers['X-Hooked'] = '1'\n"
NOBODY = 65534

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture
def hooks(tmp_path):
    folder = tmp_path / "hooks"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    (folder / "hook.py").write_text(HOOK)
    (folder / "hook.py").chmod(0o644)
    return folder


def test_a_safe_hooks_folder_loads(hooks):
    pm = build_plugin_manager([], hooks)
    assert "hookfile:hook.py" in [n for n, _ in pm.list_name_plugin()]


def test_a_hooks_folder_writable_by_others_is_refused_with_the_fix(hooks):
    hooks.chmod(0o777)
    with pytest.raises(PluginError) as info:
        build_plugin_manager([], hooks)
    assert f"chmod go-w {hooks}" in str(info.value) and "drwxrwxrwx" in str(info.value)


def test_a_group_writable_folder_above_the_hooks_folder_is_refused(hooks):
    hooks.parent.chmod(0o775)
    try:
        with pytest.raises(PluginError) as info:
            build_plugin_manager([], hooks)
        assert f"chmod go-w {hooks.parent}" in str(info.value)
    finally:
        hooks.parent.chmod(0o755)


def test_a_sticky_world_writable_hooks_folder_of_ours_is_allowed(hooks):
    # As /tmp: others may add files (refused as not ours), never replace ours.
    hooks.chmod(0o1777)
    pm = build_plugin_manager([], hooks)
    assert "hookfile:hook.py" in [n for n, _ in pm.list_name_plugin()]


@root_only
def test_a_hook_file_owned_by_another_user_is_refused_with_the_fix(hooks):
    foreign = hooks / "dropped.py"
    foreign.write_text(HOOK)
    foreign.chmod(0o644)
    os.chown(foreign, NOBODY, NOBODY)
    with pytest.raises(PluginError) as info:
        build_plugin_manager([], hooks)
    assert str(foreign) in str(info.value) and f"chown root {foreign}" in str(info.value)


@root_only
def test_a_hooks_folder_owned_by_another_user_is_refused(hooks):
    os.chown(hooks, NOBODY, NOBODY)
    with pytest.raises(PluginError) as info:
        build_plugin_manager([], hooks)
    assert f"chown root {hooks}" in str(info.value)


def test_config_with_literal_secrets_readable_by_others_warns_in_config_check(write_config, capsys):
    path = write_config()
    path.chmod(0o644)
    assert main(["config", "check", "-c", str(path)]) == 0
    err = capsys.readouterr().err
    assert "readable by group or others (-rw-r--r--)" in err and f"chmod 600 {path}" in err
    path.chmod(0o600)
    assert main(["config", "check", "-c", str(path)]) == 0
    assert "readable by group or others" not in capsys.readouterr().err


def test_a_file_secret_readable_by_others_warns(write_config, make_config):
    path = write_config()
    (path.parent / "key").write_text("pd-key-from-a-file")
    (path.parent / "key").chmod(0o644)
    text = path.read_text().replace('api_key = "pd-key-9f8e7d6c5b4a"', 'api_key = "file:key"')
    path.write_text(text)
    path.chmod(0o600)
    from dutybridge.app import load

    config, _ = load(path)
    assert any(f"secret file {path.parent / 'key'} is readable" in w and "chmod 600" in w for w in config.warnings)
    (path.parent / "key").chmod(0o600)
    config, _ = load(path)
    assert not any("readable" in w for w in config.warnings)


def test_config_with_only_env_secrets_readable_by_others_does_not_warn(write_config, monkeypatch):
    monkeypatch.setenv("PD", "k" * 12)
    monkeypatch.setenv("SN", "p" * 12)
    monkeypatch.setenv("SECRETS", "w" * 12)
    path = write_config(
        {
            "pagerduty": {"api_key": "env:PD", "webhook_secrets": ["env:SECRETS"]},
            "servicenow": {"password": "env:SN", "doorbell_token": "env:SECRETS"},
        }
    )
    path.chmod(0o644)
    from dutybridge.app import load

    config, _ = load(path)
    assert not any("readable by group or others" in w for w in config.warnings)


def test_config_writable_by_others_is_refused_at_start_and_in_config_check(write_config, capsys):
    path = write_config()
    path.chmod(0o666)
    with pytest.raises(SystemExit) as exited:
        main(["config", "check", "-c", str(path)])
    assert exited.value.code == 2
    assert f"chmod o-w {path}" in capsys.readouterr().err
    from dutybridge.app import load

    with pytest.raises(ConfigError, match="writable by others"):
        load(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666
