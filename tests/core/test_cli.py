"""The `dutybridge` command line: config init/check, plugins, events, exit codes."""

from __future__ import annotations

import asyncio
import json
import tomllib

import pytest

from dutybridge import __version__
from dutybridge.cli import main
from dutybridge.events import Event


def test_config_init_writes_a_valid_commented_file_and_refuses_to_overwrite(tmp_path, capsys, monkeypatch):
    target = tmp_path / "config.toml"
    assert main(["config", "init", "--output", str(target)]) == 0
    text = target.read_text()
    assert text.startswith("# dutybridge configuration") and "[daemon]" in text
    assert tomllib.loads(text)["pagerduty"]["api_key"] == "env:PAGERDUTY_API_KEY"

    target.write_text("# mine\n")
    assert main(["config", "init", "--output", str(target)]) == 1
    assert "exists; not overwriting it (use --force" in capsys.readouterr().err
    assert target.read_text() == "# mine\n"
    assert main(["config", "init", "--output", str(target), "--force", "--enable", "custom_headers"]) == 0
    assert tomllib.loads(target.read_text())["plugins"]["enabled"] == ["custom_headers"]

    monkeypatch.setenv("PAGERDUTY_API_KEY", "k" * 20)
    monkeypatch.setenv("SERVICENOW_PASSWORD", "p" * 20)
    capsys.readouterr()
    # Left as written, the instance URL is a placeholder that would never answer.
    with pytest.raises(SystemExit) as info:
        main(["config", "check", "--config", str(target)])
    assert info.value.code == 2
    assert "servicenow.instance_url: still the placeholder written by `config init`" in capsys.readouterr().err
    target.write_text(target.read_text().replace("YOUR-INSTANCE", "acme"))
    assert main(["config", "check", "--config", str(target)]) == 0
    captured = capsys.readouterr()
    assert "valid (1 plugin(s) enabled: custom_headers)" in captured.out
    assert "warning" not in captured.err


def test_config_init_systemd_refers_to_the_units_credentials(tmp_path, capsys, monkeypatch):
    target = tmp_path / "config.toml"
    assert main(["config", "init", "--systemd", "--output", str(target)]) == 0
    text = target.read_text()
    data = tomllib.loads(text)
    assert data["pagerduty"]["api_key"] == "file:pagerduty-api-key"
    assert data["pagerduty"]["webhook_secrets"] == ["file:pagerduty-webhook-secret"]
    assert data["servicenow"]["password"] == "file:servicenow-password"
    assert '"env:' not in text
    # The optional doorbell credentials are offered commented out.
    assert '# doorbell_token = "file:doorbell-token"' in text
    assert '# doorbell_password = "file:doorbell-password"' in text

    creds = tmp_path / "credentials"
    creds.mkdir()
    for name, value in [
        ("pagerduty-api-key", "k" * 20),
        ("pagerduty-webhook-secret", "w" * 20),
        ("servicenow-password", "p" * 20),
    ]:
        (creds / name).write_text(value + "\n")
        (creds / name).chmod(0o400)  # as systemd's LoadCredential= leaves them
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    target.write_text(text.replace("YOUR-INSTANCE", "acme"))
    capsys.readouterr()
    assert main(["config", "check", "--config", str(target)]) == 0
    captured = capsys.readouterr()
    assert "valid" in captured.out and captured.err == ""


def test_config_check_warns_of_literal_secrets_without_showing_them(write_config, capsys, config_secrets):
    path = write_config()
    assert main(["config", "check", "--config", str(path)]) == 0
    captured = capsys.readouterr()
    assert "valid" in captured.out
    warned = [line for line in captured.err.splitlines() if line.startswith(f"{path}: warning: ")]
    assert any("pagerduty.api_key: the secret is written in the file itself" in line for line in warned)
    assert len(warned) == 4
    assert not any(secret in captured.err + captured.out for secret in config_secrets)


def test_run_logs_literal_secret_warnings_at_start(write_config, capsys, monkeypatch, config_secrets):
    import dutybridge.serve

    async def serve(config, pm, path, **verbosity):
        return 0

    monkeypatch.setattr(dutybridge.serve, "serve", serve)
    path = write_config({"daemon": {"log_format": "json"}})
    assert main(["run", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    problems = [r["problem"] for r in records if r.get("event") == "configuration_warning"]
    assert any(p.startswith("servicenow.password: the secret is written in the file itself") for p in problems)
    assert not any(secret in out for secret in config_secrets)


def test_config_init_rejects_an_unknown_plugin(capsys):
    assert main(["config", "init", "--output", "-", "--enable", "nope"]) == 2
    assert "unknown plugin(s) nope" in capsys.readouterr().err


def test_config_check_reports_problems_with_exit_2(write_config, capsys):
    path = write_config({"daemon": {"worker_concurrency": 0}})
    with pytest.raises(SystemExit) as info:
        main(["config", "check", "--config", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "daemon.worker_concurrency: input should be greater than or equal to 1, found 0 (int)" in err


def test_config_path_from_the_environment(write_config, capsys, monkeypatch):
    monkeypatch.setenv("DUTYBRIDGE_CONFIG", str(write_config()))
    assert main(["config", "check"]) == 0


def test_plugins_lists_each_plugin_with_its_hooks(write_config, tmp_path, capsys):
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "h.py").write_text("def outbound_response(request, response, ctx):\n    pass\n")
    (tmp_path / "hooks" / "h.py").chmod(0o644)
    path = write_config({"daemon": {"hooks_dir": "hooks"}, "plugins": {"enabled": ["custom_headers"]}})
    assert main(["plugins", "--config", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "custom_headers: outbound_request, register_config_sections" in out
    assert "hookfile:h.py: outbound_response" in out


def test_events_commands_operate_on_the_store(write_config, capsys):
    path = write_config()
    from dutybridge.app import load
    from dutybridge.store import open_store

    config, _ = load(path)

    async def seed():
        store = open_store(config.daemon.store_url, config.resolve_path(".", state=True))
        await store.open()
        a = await store.add_event(Event("pagerduty", "incident.triggered", "E1", "pagerduty:incident:P1", {"n": 1}))
        b = await store.add_event(Event("pagerduty", "incident.resolved", "E2", "pagerduty:incident:P2", {"n": 2}))
        [claimed] = await store.claim("test", 1, 60)
        await store.fail(claimed.id, "boom", None)  # dead
        await store.close()
        return a.id, b.id

    dead_id, other_id = asyncio.run(seed())
    # Run alone, the seeding's own log lines (structlog unconfigured) reach stdout: not the CLI's output.
    capsys.readouterr()
    assert main(["events", "list", "--json", "--config", str(path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(r["id"], r["status"]) for r in rows} == {(dead_id, "dead"), (other_id, "pending")}
    assert main(["events", "show", str(dead_id), "--config", str(path)]) == 0
    assert '"n": 1' in capsys.readouterr().out
    assert main(["events", "show", "999", "--config", str(path)]) == 1
    assert main(["events", "replay", "--dead", "--config", str(path)]) == 0
    capsys.readouterr()
    assert main(["events", "list", "--status", "dead", "--json", "--config", str(path)]) == 0
    assert capsys.readouterr().out.strip() == ""


def test_an_event_done_after_a_retry_and_a_replay_shows_no_stale_error(write_config, capsys):
    path = write_config()
    from dutybridge.app import load
    from dutybridge.store import open_store

    config, _ = load(path)

    async def attempt(outcome):
        store = open_store(config.daemon.store_url, config.resolve_path(".", state=True))
        await store.open()
        try:
            if outcome == "add":
                return (
                    await store.add_event(
                        Event("pagerduty", "incident.triggered", "E1", "pagerduty:incident:P1", {"n": 1})
                    )
                ).id
            [claimed] = await store.claim("test", 1, 60)
            if outcome == "done":
                await store.complete(claimed.id)
            else:
                await store.fail(claimed.id, outcome, None)  # dead
        finally:
            await store.close()

    def shown(event_id):
        assert main(["events", "show", str(event_id), "--config", str(path)]) == 0
        return json.loads(capsys.readouterr().out)

    event_id = asyncio.run(attempt("add"))
    asyncio.run(attempt("ServiceNow answered 503"))
    assert shown(event_id)["last_error"] == "ServiceNow answered 503"
    assert main(["events", "replay", str(event_id), "--config", str(path)]) == 0
    assert "pending again" in capsys.readouterr().out
    asyncio.run(attempt("done"))
    event = shown(event_id)
    assert (event["status"], event["last_error"]) == ("done", None)
    assert main(["events", "list", "--json", "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["last_error"] is None


def test_version_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and __version__ in capsys.readouterr().out
    assert main([]) == 2
    with pytest.raises(SystemExit) as info:
        main(["run", "--bogus"])
    assert info.value.code == 2


def test_a_standalone_plugin_command_runs_without_a_configuration(monkeypatch, tmp_path, capsys):
    from dutybridge import cli, hookimpl
    from dutybridge.commands import Command
    from dutybridge.plugins import build_plugin_manager

    seen = []

    async def agent(args, ctx):
        seen.append((args.port, ctx))
        return 0

    class Agent:
        @hookimpl
        def register_cli_commands(self):
            return [Command("agent", "an agent", agent, lambda p: p.add_argument("--port", type=int), standalone=True)]

    monkeypatch.setattr(
        cli, "build_plugin_manager", lambda *a, **kw: build_plugin_manager([], None, extra_plugins=[Agent()])
    )
    monkeypatch.chdir(tmp_path)  # no config.toml here
    assert cli.main(["agent", "--port", "9"]) == 0
    assert seen == [(9, None)]


def test_a_reader_that_goes_away_ends_the_output_quietly(write_config):
    # `dutybridge events list | head -1`: here the reader is gone before the first write,
    # so the broken pipe is certain rather than a race with the pipe's buffer.
    import os
    import subprocess
    import sys

    path = write_config()
    from dutybridge.app import load
    from dutybridge.store import open_store

    config, _ = load(path)

    async def seed():
        store = open_store(config.daemon.store_url, config.resolve_path(".", state=True))
        await store.open()
        await store.add_event(Event("pagerduty", "incident.triggered", "E1", "pagerduty:incident:P1", {}))
        await store.close()

    asyncio.run(seed())
    for extra in ([], ["--json"]):
        read, write = os.pipe()
        os.close(read)
        try:
            out = subprocess.run(
                [sys.executable, "-m", "dutybridge.cli", "events", "list", *extra, "--config", str(path)],
                stdout=write,
                stderr=subprocess.PIPE,
                text=True,
                timeout=30,
            )
        finally:
            os.close(write)
        assert out.returncode == 141, out.stderr
        assert out.stderr == ""


def test_a_plugin_command_without_a_configuration_file_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    def exit_code(argv):
        with pytest.raises(SystemExit) as info:
            main(argv)
        return info.value.code

    monkeypatch.chdir(tmp_path)  # no ./config.toml, no --config, no $DUTYBRIDGE_CONFIG
    assert exit_code(["incident", "sync", "PABC123"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "config.toml: file not found (create one with: dutybridge config init --output config.toml)"
    ]
    missing = tmp_path / "elsewhere.toml"
    for argv in (
        ["incident", "sync", "PABC123", "--config", str(missing)],
        ["--config", str(missing), "incident", "sync", "PABC123"],
        ["incident", "-c", str(missing), "sync", "PABC123"],
    ):
        assert exit_code(argv) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"{missing}: file not found (create one with: dutybridge config init --output {missing})"
        ]
