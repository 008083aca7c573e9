"""Config loading: the example config, every bad-config file, durations."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.config import ConfigError, load_config, parse_duration
from exporter.model import CronSchedule, IntervalSchedule

from .conftest import T0, write_config

ROOT = Path(__file__).resolve().parent.parent
BAD = Path(__file__).parent / "data" / "bad_configs"


def expected_messages(path: Path) -> list[str]:
    return [
        line.removeprefix("# expect: ").replace("{file}", str(path))
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]


@pytest.mark.parametrize("path", sorted(BAD.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_config_reports_exact_messages(path):
    expected = expected_messages(path)
    assert expected, f"{path.name} has no '# expect:' line"
    with pytest.raises(ConfigError) as caught:
        load_config(path, now=T0)
    assert caught.value.problems == expected


def test_example_config_is_valid_and_realistic():
    config = load_config(ROOT / "config", now=T0)
    by_id = {m.id: m for m in config.monitors}
    backup = by_id["nightly-backup"]
    assert backup.schedule == CronSchedule("0 3 * * *", "Europe/Berlin")
    assert backup.max_runtime == 7200
    assert dict(backup.labels) == {"team": "data", "severity": "critical"}
    assert by_id["queue-worker-heartbeat"].schedule == IntervalSchedule(300)
    assert all(dict(m.labels).keys() >= {"team", "severity"} for m in config.monitors)


def test_directory_merges_files_and_finds_duplicates_across_them(tmp_path):
    write_config(tmp_path, "monitors: [{id: a, schedule: {interval: 1m}}]", "a.yaml")
    write_config(tmp_path, "monitors: [{id: a, schedule: {interval: 2m}}]", "b.yml")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, now=T0)
    assert caught.value.problems == [
        f'{tmp_path / "b.yml"}: monitor "a": field "id": duplicate, already declared in {tmp_path / "a.yaml"}'
    ]


def test_all_problems_of_all_files_are_reported_at_once(tmp_path):
    write_config(tmp_path, "monitors: [{id: a, schedule: {interval: 1m}, bogus: 1}]", "a.yaml")
    write_config(tmp_path, "monitors: [{id: b, schedule: {cron: '0 0 30 2 *'}}]", "b.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, now=T0)
    assert len(caught.value.problems) == 2


def test_empty_directory_and_missing_path(tmp_path):
    with pytest.raises(ConfigError, match="no \\*.yaml or \\*.yml files"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="no such file or directory"):
        load_config(tmp_path / "nope.yaml")


def test_defaults(tmp_path):
    path = write_config(tmp_path, "monitors: [{id: a, schedule: {cron: '*/5 * * * *'}}]")
    (m,) = load_config(path, now=T0).monitors
    assert (m.grace, m.max_runtime, m.failure_threshold, m.recovery_threshold) == (300, None, 1, 1)
    assert m.schedule.timezone == "UTC" and m.paused is False and m.labels == ()


@pytest.mark.parametrize(
    "text, seconds",
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("1.5s", 1.5), (90, 90), ("45", 45), (0.5, 0.5)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "1h 30m", "-5s", True, [1]])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", *args], capture_output=True, text=True, cwd=ROOT, env={**os.environ}
    )


def test_check_config_exit_codes():
    ok = run_cli("check-config", "config")
    assert ok.returncode == 0, ok.stderr
    assert "config is valid: 3 monitors" in ok.stdout
    bad = run_cli("check-config", str(BAD / "unknown_zone.yaml"))
    assert bad.returncode == 1
    assert expected_messages(BAD / "unknown_zone.yaml")[0] in bad.stderr
    assert "config is invalid: 1 problem(s)" in bad.stderr


@pytest.mark.parametrize(
    "command, flags",
    [
        (
            "serve",
            [
                "--config",
                "--listen",
                "--redis-url",
                "--data-dir",
                "--redis-server",
                "--public-url",
                "--key-prefix",
                "--log-level",
                "CRONMON_REDIS_URL",
            ],
        ),
        ("check-config", ["PATH"]),
    ],
)
def test_help_explains_every_flag(command, flags):
    out = run_cli(command, "--help")
    assert out.returncode == 0
    for flag in flags:
        assert flag in out.stdout


@pytest.mark.parametrize(
    "field, value",
    [
        ("grace", float("nan")),
        ("grace", float("inf")),
        ("max_runtime", 1e300),
        ("grace", "99999999999999999d"),
    ],
)
def test_api_monitor_specs_refuse_non_finite_and_huge_durations(field, value):
    """JSON bodies can carry NaN and Infinity (Python's json accepts them):
    such a monitor used to answer 500 to every ping after recording it."""
    from exporter.config import SpecError, parse_monitor_spec

    with pytest.raises(SpecError) as refused:
        parse_monitor_spec({"id": "x", "schedule": {"interval": "1h"}, field: value}, 0.0)
    assert refused.value.issues[0][0] == field
