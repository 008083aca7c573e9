"""Repository artifacts that users run directly."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_file_is_valid_and_wires_cronmon_to_redis():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"cronmon", "redis"} <= services.keys()
    assert services["cronmon"]["environment"]["CRONMON_REDIS_URL"] == "redis://redis:6379/0"
    assert "--appendonly" in services["redis"]["command"]
    for volume in ("redis-data", "cronmon-data"):
        assert volume in compose["volumes"]


def test_dockerfile_serves_the_shipped_config_on_the_default_port():
    from exporter.settings import DEFAULT_PORT

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {DEFAULT_PORT}" in dockerfile
    assert '"--config", "/etc/cronmon"' in dockerfile


def test_readme_quick_start_has_exactly_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["python3 dev.py serve", "python3 dev.py test"]
    assert "python3 dev.py test" in (ROOT / ".ci" / "run").read_text()
