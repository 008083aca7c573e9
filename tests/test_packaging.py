"""Repository artifacts that users run directly."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_stack_is_complete_and_its_mounts_exist():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"cronmon", "redis", "prometheus", "alertmanager", "grafana"} <= services.keys()
    assert services["cronmon"]["environment"]["CRONMON_REDIS_URL"] == "redis://redis:6379/0"
    assert "--appendonly" in services["redis"]["command"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
    # Prometheus and Alertmanager read the shipped files from the mount.
    assert "--config.file=/etc/cronmon-stack/prometheus.yml" in services["prometheus"]["command"]
    assert "--config.file=/etc/cronmon-stack/alertmanager.yml" in services["alertmanager"]["command"]
    # The example receivers resolve inside the stack.
    aliases = services["alert-receiver"]["networks"]["default"]["aliases"]
    assert "alert-receiver.example" in aliases


def test_stack_prometheus_config_is_valid():
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    assert promtool, "promtool is required"
    result = subprocess.run([promtool, "check", "config", str(ROOT / "alertmanager/prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cronmon-rules.yml" in result.stdout  # the rule file was found and checked


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


def test_readme_points_only_at_files_a_clone_has():
    """A path the README names in the repository exists, and none leads
    outside it (it once sent readers to ../shared/DESIGN.md)."""
    readme = (ROOT / "README.md").read_text()
    assert not re.search(r"(?<!\.)\.\./", readme)  # `.../runs` is an ellipsis, not a way out
    paths = set(re.findall(r"`((?:exporter|config|alertmanager|grafana|tests|bench|\.ci)/[\w./-]*[\w/])`", readme))
    assert len(paths) >= 5  # the pattern still finds the README's paths
    assert [p for p in sorted(paths) if not (ROOT / p).exists()] == []


def test_sentinel_compose_variant_is_consistent():
    """docker-compose.sentinel.yml (README, "High availability"): cronmon's
    URL names the sentinels the file runs and the service they monitor,
    with a quorum the three of them can reach, and there are enough
    replicas that the new primary still has one for cronmon's WAIT."""
    from exporter.store import parse_sentinel_url

    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    variant = yaml.safe_load((ROOT / "docker-compose.sentinel.yml").read_text())["services"]
    url = parse_sentinel_url(variant["cronmon"]["environment"]["CRONMON_REDIS_URL"])
    sentinels = sorted(name for name in variant if name.startswith("sentinel-"))
    assert sorted(url.sentinels) == [(name, 26379) for name in sentinels] and len(sentinels) == 3
    for name in sentinels:
        script = variant[name]["command"][-1]
        assert f"sentinel monitor {url.service} redis 6379 2" in script and "--sentinel" in script
    replicas = [name for name, service in variant.items() if "--replicaof" in service.get("command", [])]
    for name in replicas:
        command = variant[name]["command"]
        at = command.index("--replicaof")
        assert command[at + 1 : at + 3] == ["redis", "6379"], name
    assert len(replicas) >= url.wait_replicas + 1
    assert set(variant["cronmon"]["depends_on"]) == {*sentinels, *replicas}
    assert "redis" in base and "cronmon" in base  # an override of the stack, not a stack of its own
