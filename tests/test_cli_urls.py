"""Finding a monitor's ping URLs and an API token from the command line:
`cronmon urls`, the start-up banner of `cronmon serve` (print_banner) and
the example config's api_tokens: recipe."""

from pathlib import Path

import pytest

from exporter import cli, credentials
from exporter.config import load_config
from exporter.settings import Settings
from exporter.web.app import create_app

from .conftest import registry_from, write_config

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
ping_keys:
  - {name: ops, env: OPS_KEY}
  - {name: data, env: DATA_KEY}
monitors:
  - {id: every-key, schedule: {interval: 1h}}
  - {id: kept-uuid, schedule: {interval: 1h}, ping: {keys: [data], uuid_env: KEPT_UUID}}
  - {id: no-key, schedule: {interval: 1h}, ping: {keys: []}}
"""
ENV = {"OPS_KEY": "ops-secret-key-123", "DATA_KEY": "data-secret-key-456",
       "KEPT_UUID": "7c1e2d3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"}


def urls(capsys, *args: str) -> tuple[int, dict[str, list[str]], str]:
    """Run `cronmon urls`; its exit status, URLs by monitor, stderr."""
    status = cli.main(["urls", *args])
    captured = capsys.readouterr()
    found: dict[str, list[str]] = {}
    for line in captured.out.splitlines():
        monitor_id, rest = line.split(maxsplit=1)
        found.setdefault(monitor_id, []).append(rest)
    return status, found, captured.err


@pytest.fixture
def env(monkeypatch):
    for name in ("CRONMON_PING_KEY", "CRONMON_PUBLIC_URL", "CRONMON_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


async def test_urls_prints_every_ping_url_with_the_keys_serve_reads(
    aiohttp_client, app_settings, tmp_path, env, capsys, clock
):
    """Every form of every monitor, with the real configured keys and
    UUIDs (the operator running it has them), and each one is a URL the
    server started on the same config and environment accepts."""
    path = write_config(tmp_path, CONFIG)
    status, found, err = urls(capsys, "--config", str(path), "--data-dir", str(tmp_path / "data"),
                              "--public-url", "https://cronmon.example/")
    assert status == 0, err
    config = load_config(path)
    uuid = credentials.resolve(config, tmp_path / "data").monitor_uuids["every-key"]
    base = "https://cronmon.example"
    assert found["every-key"] == [
        f"{base}/ping/{uuid}", f"{base}/ping/ops-secret-key-123/every-key", f"{base}/ping/data-secret-key-456/every-key"
    ]
    assert found["kept-uuid"] == [f"{base}/ping/{ENV['KEPT_UUID']}", f"{base}/ping/data-secret-key-456/kept-uuid"]
    assert found["no-key"] == ["(no ping URL: ping.keys is empty and no ping.uuid_env/uuid_file)"]
    assert not (tmp_path / "data" / "ping_key").exists()

    client = await aiohttp_client(create_app(app_settings(path), clock=clock))
    for url in found["every-key"] + found["kept-uuid"]:
        response = await client.get(url.removeprefix(base))
        assert response.status == 200, (url, await response.text())

    # Only the monitors asked for; an unknown one is an error.
    status, found, _ = urls(capsys, "--config", str(path), "--data-dir", str(tmp_path / "data"), "kept-uuid")
    assert status == 0 and list(found) == ["kept-uuid"]
    status, found, err = urls(capsys, "--config", str(path), "--data-dir", str(tmp_path / "data"), "nope")
    assert status == 1 and not found and "no monitor nope in" in err


def test_urls_uses_the_key_serve_generated_and_never_makes_one(tmp_path, env, capsys, monkeypatch):
    path = write_config(tmp_path, "monitors: [{id: job, schedule: {interval: 1h}}]")
    data_dir = tmp_path / "data"
    status, found, err = urls(capsys, "--config", str(path), "--data-dir", str(data_dir))
    assert status == 1 and not found
    assert "no ping key: CRONMON_PING_KEY is not set, the config declares no ping_keys:" in err
    assert f"and {data_dir}/ping_key (the key `cronmon serve` generates on its first start) does not exist" in err
    assert "pass the --data-dir that `cronmon serve` uses" in err
    assert not data_dir.exists()  # it generated nothing

    secrets = credentials.resolve(load_config(path), data_dir)  # what `cronmon serve` does at its first start
    key = (data_dir / "ping_key").read_text().strip()
    assert secrets.generated_key == key and secrets.generated_now
    monkeypatch.setenv("CRONMON_DATA_DIR", str(data_dir))  # serve's env for the data dir, too
    status, found, err = urls(capsys, "--config", str(path), "--listen", "127.0.0.1:9999")
    assert status == 0, err
    assert found["job"] == [
        f"http://127.0.0.1:9999/ping/{secrets.monitor_uuids['job']}", f"http://127.0.0.1:9999/ping/{key}/job"
    ]
    assert not credentials.resolve(load_config(path), data_dir).generated_now  # read back, not made again

    monkeypatch.setenv("CRONMON_PUBLIC_URL", "https://jobs.example/cronmon")
    monkeypatch.setenv("CRONMON_PING_KEY", "from-the-env")  # ... and serve's env for the key
    status, found, _ = urls(capsys, "--config", str(path))
    assert status == 0 and found["job"][1] == "https://jobs.example/cronmon/ping/from-the-env/job"


def test_urls_names_a_secret_it_cannot_read(tmp_path, env, capsys, monkeypatch):
    monkeypatch.delenv("DATA_KEY")
    path = write_config(tmp_path, CONFIG)
    status, found, err = urls(capsys, "--config", str(path), "--data-dir", str(tmp_path))
    assert status == 1 and not found
    assert f'{path}: ping key "data": field "env": environment variable DATA_KEY is not set or empty' in err


def banner(path: Path, tmp_path: Path, env: dict, capsys) -> dict[str, str]:
    cli.print_banner(Settings(config_path=path, data_dir=tmp_path / "data"), registry_from(path, tmp_path, env))
    out = capsys.readouterr().out
    lines = {line.split(":")[0].strip(): line for line in out.splitlines() if line.startswith("  ")}
    lines["*"] = out
    return lines


def test_banner_prints_the_forms_a_monitor_has_and_no_configured_secret(tmp_path, capsys):
    path = write_config(tmp_path, """
monitors:
  - {id: both, schedule: {interval: 1h}}
  - {id: uuid-only, schedule: {interval: 1h}, ping: {keys: [], uuid_env: KEPT_UUID}}
  - {id: none, schedule: {interval: 1h}, ping: {keys: []}}
""")
    env = {"CRONMON_PING_KEY": "configured-key", "KEPT_UUID": ENV["KEPT_UUID"]}
    lines = banner(path, tmp_path, env, capsys)
    derived = credentials.resolve(load_config(path), tmp_path, env).monitor_uuids["both"]
    base = "http://localhost:9879"
    assert lines["both"] == f"  both: {base}/ping/<ping key default>/both  or  {base}/ping/{derived}"
    assert lines["uuid-only"] == f"  uuid-only: {base}/ping/<uuid from env KEPT_UUID>"
    assert lines["none"] == "  none: no ping URL (its ping.keys is empty)"
    assert "configured-key" not in lines["*"] and ENV["KEPT_UUID"] not in lines["*"] and "<uuid>" not in lines["*"]


def test_banner_says_how_to_get_past_401_only_when_no_api_token_is_configured(tmp_path, capsys):
    hint = 'management APIs: no API token configured, so they answer 401; declare one under api_tokens: in the config'
    path = write_config(tmp_path, "monitors: [{id: job, schedule: {interval: 1h}}]")
    assert hint in banner(path, tmp_path, {"CRONMON_PING_KEY": "k"}, capsys)["*"]
    path = write_config(tmp_path, """
api_tokens: [{name: ci, env: CI_TOKEN, owner: ci}]
monitors: [{id: job, schedule: {interval: 1h}}]
""")
    assert "management APIs" not in banner(path, tmp_path, {"CRONMON_PING_KEY": "k", "CI_TOKEN": "t"}, capsys)["*"]


def example_with_token_enabled() -> str:
    """config/monitors.yaml with its commented-out api_tokens: entry
    uncommented, as its comments tell the reader to."""
    lines = (ROOT / "config" / "monitors.yaml").read_text().splitlines()
    start = lines.index("# api_tokens:")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("#"))
    return "\n".join([*lines[:start], *(line[2:] for line in lines[start:end]), *lines[end:]]) + "\n"


async def test_example_config_shows_an_api_token_recipe_that_works(
    aiohttp_client, app_settings, tmp_path, monkeypatch, capsys
):
    """The example passes check-config as shipped and needs no variable to
    start (the quick start, the image); its commented api_tokens: entry,
    uncommented with the secret in the variable it names, gives a working
    write token."""
    assert cli.main(["check-config", str(ROOT / "config")]) == 0
    assert "config is valid" in capsys.readouterr().out
    assert load_config(ROOT / "config").api_tokens == ()

    text = example_with_token_enabled()
    assert "export CRONMON_ADMIN_TOKEN=" in text  # the comment says how to make the secret
    path = write_config(tmp_path, text)
    assert cli.main(["check-config", str(path)]) == 0, capsys.readouterr().err
    [token] = load_config(path).api_tokens
    assert (token.name, token.env, token.scope) == ("admin", "CRONMON_ADMIN_TOKEN", "write")

    monkeypatch.setenv("CRONMON_ADMIN_TOKEN", "a-secret-made-by-the-reader")
    monkeypatch.setenv("CRONMON_PING_KEY", "example-ping-key")
    client = await aiohttp_client(create_app(app_settings(path)))
    assert (await client.get("/api/v1/monitors")).status == 401
    headers = {"Authorization": "Bearer a-secret-made-by-the-reader"}
    listed = await client.get("/api/v1/monitors", headers=headers)
    assert listed.status == 200 and len((await listed.json())["monitors"]) == 3
    created = await client.post("/api/v1/monitors", json={"id": "etl", "schedule": {"interval": "1h"}},
                                headers=headers)
    assert created.status == 201, await created.text()
