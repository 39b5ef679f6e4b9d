"""contrib/docker checked without Docker: the image's, the compose file's and nginx's parts
agree with each other and with the daemon (its config validates, its port and probe match)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from dutybridge.app import load

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "contrib" / "docker"


def instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def shared_config(tmp_path, monkeypatch):
    creds = tmp_path / "secrets"
    creds.mkdir()
    for name in compose()["secrets"]:
        (creds / name).write_text(f"value-of-{name}\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config, _ = load(DOCKER / "config.toml")
    return config


def test_the_image_is_slim_runs_as_a_user_and_checks_readyz_on_the_daemons_port(tmp_path, monkeypatch):
    steps = instructions()
    bases = [arg for op, arg in steps if op == "FROM"]
    assert bases and all(re.fullmatch(r"python:3\.1[1-9]-slim( AS \w+)?", b) for b in bases), bases
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    for op, arg in steps:
        if op == "COPY" and not arg.startswith("--from"):
            for source in shlex.split(arg)[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    [entry] = [json.loads(arg) for op, arg in steps if op == "ENTRYPOINT"]
    assert entry == ["dutybridge", "run"]
    [cmd] = [json.loads(arg) for op, arg in steps if op == "CMD"]
    [check] = [arg for op, arg in steps if op == "HEALTHCHECK"]
    config = shared_config(tmp_path, monkeypatch)
    assert f"http://127.0.0.1:{config.daemon.listen_port}/readyz" in check
    assert config.daemon.listen_host == "0.0.0.0"
    mounts = compose()["services"]["dutybridge-1"]["volumes"]
    assert any(m.split(":")[1] == cmd[cmd.index("--config") + 1] for m in mounts), (mounts, cmd)


def test_compose_runs_two_instances_on_one_postgresql_behind_the_proxy(tmp_path, monkeypatch):
    doc = compose()
    services = doc["services"]
    instances = [name for name, svc in services.items() if svc.get("image") == "dutybridge:local"]
    assert len(instances) == 2
    config = shared_config(tmp_path, monkeypatch)
    url = urlsplit(config.daemon.store_url)
    pg = services["postgres"]
    assert url.hostname == "postgres" and url.username == pg["environment"]["POSTGRES_USER"]
    assert url.path.lstrip("/") == pg["environment"]["POSTGRES_DB"]
    assert config.daemon.store_password.get_secret_value() == "value-of-db_password"
    for name in instances:
        svc = services[name]
        assert set(svc["secrets"]) <= set(doc["secrets"])
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    nginx = (DOCKER / "nginx.conf").read_text()
    upstream = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", nginx, re.M)
    assert sorted(upstream) == sorted((name, str(config.daemon.listen_port)) for name in instances)
    mounted = [v.split(":")[0] for v in services["proxy"]["volumes"]]
    assert "./nginx.conf" in mounted and "/webhooks/" in nginx
