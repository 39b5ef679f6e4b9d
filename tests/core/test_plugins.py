"""Plugin manager: enabled plugins, entry points, hook files and their failure modes."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest

from dutybridge import hookimpl
from dutybridge.app import load
from dutybridge.http import OutboundRequest
from dutybridge.plugins import (
    PluginError,
    build_plugin_manager,
    describe_plugins,
    register_hook_files,
)


def hook_file(folder: Path, name: str, body: str, mode: int = 0o644) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body))
    os.chmod(path, mode)
    return path


async def test_hook_file_function_needs_no_import_and_runs_after_plugins(tmp_path):
    seen = []

    class Plugin:
        @hookimpl
        def outbound_request(self, request, ctx):
            seen.append("plugin")
            request.headers["X-Layer"] = "plugin"

    hook_file(
        tmp_path / "hooks",
        "stamp.py",
        """
        def outbound_request(request, ctx):
            request.headers["X-Layer"] = request.headers.get("X-Layer", "") + "+hookfile"
    """,
    )
    pm = build_plugin_manager([], tmp_path / "hooks", extra_plugins=[Plugin()])
    req = OutboundRequest("GET", "https://x.example/", service="pagerduty")
    await pm.hooks.outbound_request(request=req, ctx=None)
    assert req.headers["X-Layer"] == "plugin+hookfile"
    assert ("hookfile:stamp.py", ["outbound_request"]) in describe_plugins(pm)


async def test_async_hook_file_implementation_is_awaited(tmp_path):
    hook_file(
        tmp_path / "hooks",
        "a.py",
        """
        async def outbound_request(request, ctx):
            request.headers["X-Async"] = "yes"
    """,
    )
    pm = build_plugin_manager([], tmp_path / "hooks")
    req = OutboundRequest("GET", "https://x.example/", service="servicenow")
    await pm.hooks.outbound_request(request=req, ctx=None)
    assert req.headers["X-Async"] == "yes"


def test_misspelt_hook_names_the_file_line_and_suggests(tmp_path):
    path = hook_file(
        tmp_path / "hooks",
        "typo.py",
        """
        import os

        def outbound_requests(request, ctx):
            pass
    """,
    )
    with pytest.raises(PluginError) as info:
        build_plugin_manager([], tmp_path / "hooks")
    msg = str(info.value)
    assert f"{path}:4:" in msg and "'outbound_requests' is not a dutybridge hook" in msg
    assert "did you mean 'outbound_request'" in msg


def test_decorated_misspelt_hook_is_caught_by_check_pending(tmp_path):
    path = hook_file(
        tmp_path / "hooks",
        "deco.py",
        """
        from dutybridge import hookimpl

        @hookimpl
        def outbound_reqest(request, ctx):
            pass
    """,
    )
    with pytest.raises(PluginError) as info:
        build_plugin_manager([], tmp_path / "hooks")
    assert str(path) in str(info.value) and "outbound_reqest" in str(info.value)


def test_syntax_error_names_file_and_line(tmp_path):
    path = hook_file(tmp_path / "hooks", "broken.py", "def outbound_request(request, ctx)\n    pass\n")
    with pytest.raises(PluginError) as info:
        build_plugin_manager([], tmp_path / "hooks")
    assert str(info.value).startswith(f"{path}:1: syntax error")


def test_exception_at_import_names_file_and_line(tmp_path):
    path = hook_file(tmp_path / "hooks", "boom.py", "x = 1\nraise RuntimeError('no database here')\n")
    with pytest.raises(PluginError) as info:
        build_plugin_manager([], tmp_path / "hooks")
    assert str(info.value) == f"{path}:2: RuntimeError while importing: no database here"


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_group_or_world_writable_hook_file_is_refused(tmp_path, mode):
    path = hook_file(tmp_path / "hooks", "open.py", "def outbound_request(request, ctx):\n    pass\n", mode=mode)
    with pytest.raises(PluginError) as info:
        build_plugin_manager([], tmp_path / "hooks")
    assert str(path) in str(info.value) and "chmod go-w" in str(info.value)


def test_underscore_helpers_and_files_are_allowed(tmp_path):
    hook_file(tmp_path / "hooks", "_shared.py", "def anything():\n    pass\n")
    hook_file(
        tmp_path / "hooks",
        "ok.py",
        """
        def _helper():
            return 1

        def outbound_response(request, response, ctx):
            _helper()
    """,
    )
    pm = build_plugin_manager([], tmp_path / "hooks")
    names = [n for n, _ in describe_plugins(pm)]
    assert names == ["hookfile:ok.py"]


def test_missing_hooks_dir_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(PluginError, match="daemon.hooks_dir: folder .*nope does not exist"):
        build_plugin_manager([], tmp_path / "nope")


def test_failed_reload_keeps_the_previous_hook_files(tmp_path):
    folder = tmp_path / "hooks"
    hook_file(folder, "good.py", "def outbound_request(request, ctx):\n    request.headers['X-Good'] = '1'\n")
    pm = build_plugin_manager([], folder)
    hook_file(folder, "bad.py", "def outbound_requestt(request, ctx):\n    pass\n")
    with pytest.raises(PluginError):
        register_hook_files(pm, folder)
    assert [n for n, _ in describe_plugins(pm)] == ["hookfile:good.py"]


def test_reload_picks_up_changed_hook_files(tmp_path):
    folder = tmp_path / "hooks"
    hook_file(folder, "h.py", "def outbound_request(request, ctx):\n    request.headers['X-V'] = '1'\n")
    pm = build_plugin_manager([], folder)
    hook_file(folder, "h.py", "def outbound_request(request, ctx):\n    request.headers['X-V'] = '2'\n")
    register_hook_files(pm, folder)
    req = OutboundRequest("GET", "https://x.example/", service="pagerduty")
    pm.hook.outbound_request(request=req, ctx=None)
    assert req.headers["X-V"] == "2"


def test_hooks_dir_in_config_is_relative_to_the_config_file(write_config, tmp_path):
    hook_file(tmp_path / "myhooks", "h.py", "def outbound_request(request, ctx):\n    pass\n")
    path = write_config({"daemon": {"hooks_dir": "myhooks"}})
    _, pm = load(path)
    assert "hookfile:h.py" in [n for n, _ in describe_plugins(pm)]


def test_only_enabled_builtin_plugins_are_registered(make_config):
    _, pm = make_config()
    assert not pm.has_plugin("custom_headers")
    _, pm = make_config({"plugins": {"enabled": ["custom_headers"]}})
    assert pm.has_plugin("custom_headers")


async def test_call_first_skips_none_from_async_impls_and_stops_at_first_answer():
    calls = []

    class Declines:
        @hookimpl
        async def escalation_policy_for(self, group, priority, ctx):
            calls.append("declines")
            return None

    class Answers:
        @hookimpl
        def escalation_policy_for(self, group, priority, ctx):
            calls.append("answers")
            return "PEP0001"

    class NeverAsked:
        @hookimpl
        def escalation_policy_for(self, group):
            calls.append("never")
            return "PEP9999"

    pm = build_plugin_manager([], None, extra_plugins=[NeverAsked(), Answers(), Declines()])
    result = await pm.hooks.escalation_policy_for(group={"name": "DB"}, priority="1", ctx=None)
    assert result == "PEP0001"
    assert calls == ["declines", "answers"]


def test_trace_env_logs_hook_calls(monkeypatch, tmp_path):
    from structlog.testing import capture_logs

    monkeypatch.setenv("DUTYBRIDGE_TRACE_HOOKS", "1")
    hook_file(tmp_path / "hooks", "t.py", "def outbound_response(request, response, ctx):\n    pass\n")
    pm = build_plugin_manager([], tmp_path / "hooks")
    with capture_logs() as logs:
        asyncio.run(pm.hooks.outbound_response(request=None, response=None, ctx=None))
        asyncio.run(pm.hooks.send_request(request=None, ctx=None))
    calls = [e for e in logs if e["event"] == "hook_call"]
    # A first-result hook is traced too, though no implementation answers it.
    assert [c["hook"] for c in calls] == ["outbound_response", "send_request"]
    assert calls and calls[0]["hook"] == "outbound_response" and calls[0]["plugins"] == ["hookfile:t.py"]
    assert calls[0]["log_level"] == "debug"


async def test_an_implementation_that_raises_stops_the_call_and_starts_no_other():
    started = []

    class First:
        @hookimpl
        async def handle_event(self, event, ctx):
            started.append("first")
            return True

    class Raises:
        @hookimpl
        async def handle_event(self, event, ctx):
            raise RuntimeError("plugin failed")

    # Later registrations run first: Raises fails, and First is never called.
    pm = build_plugin_manager([], None, extra_plugins=[First(), Raises()])
    with pytest.raises(RuntimeError, match="plugin failed"):
        await pm.hooks.handle_event(event=None, ctx=None)
    assert started == []  # and no "coroutine was never awaited" warning (filterwarnings=error)


def test_entry_point_plugins_load_only_when_enabled(monkeypatch, write_config):
    import importlib.metadata
    import sys
    import types

    from dutybridge.app import load

    module = types.ModuleType("acme_dutybridge_plugin")
    exec(
        "from dutybridge import hookimpl\n\n@hookimpl\ndef outbound_request(request, ctx):\n"
        "    request.headers['X-Acme'] = '1'\n",
        module.__dict__,
    )
    monkeypatch.setitem(sys.modules, "acme_dutybridge_plugin", module)
    ep = importlib.metadata.EntryPoint(name="acme", value="acme_dutybridge_plugin", group="dutybridge")
    real = importlib.metadata.entry_points

    def fake(**kw):
        return importlib.metadata.EntryPoints([ep]) if kw.get("group") == "dutybridge" else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    _, pm = load(write_config())
    assert not pm.has_plugin("acme")  # installed, not enabled: not loaded
    _, pm = load(write_config({"plugins": {"enabled": ["acme"]}}))
    assert ("acme", ["outbound_request"]) in describe_plugins(pm)


@pytest.mark.parametrize("kind", ["hookwrapper", "wrapper"])
def test_wrappers_are_refused_at_registration_with_the_reason(kind):
    class Wraps:
        @hookimpl(**{kind: True})
        def handle_event(self, event, ctx):
            yield

    with pytest.raises(PluginError) as info:
        build_plugin_manager([], None, extra_plugins=[Wraps()])
    assert f"handle_event: {kind}=True is not supported" in str(info.value)


def test_async_implementation_of_a_hook_that_must_return_at_once_is_refused():
    class AsyncRoutes:
        @hookimpl
        async def register_routes(self, ctx):
            return []

    with pytest.raises(PluginError, match="register_routes must not be async"):
        build_plugin_manager([], None, extra_plugins=[AsyncRoutes()])


def test_register_hooks_return_what_the_core_adds_with_the_plugin_name():
    from dutybridge.commands import Command
    from dutybridge.scheduler import Job

    async def handler(args, ctx):
        return 0

    class Adds:
        @hookimpl
        def register_jobs(self, ctx):
            return [Job(id="adds.tick", func=lambda: None, trigger_args={"hours": 1})]

        @hookimpl
        def register_cli_commands(self):
            return [Command("adds", "adds things", handler)]

    pm = build_plugin_manager([], None, extra_plugins=[Adds()])
    assert [job.id for job in pm.hooks.register_jobs(ctx=None)] == ["adds.tick"]
    [(plugin, command)] = pm.hooks.register_cli_commands()
    assert command.name == "adds" and plugin == pm.get_name(pm.get_plugins().pop())
