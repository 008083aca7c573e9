"""Registry.with_api redoes only the API monitors that changed: its tables
must equal a registry built from scratch, whatever the sequence of
creates, updates and deletes (YAML monitors with the same id, group
metrics, derived UUIDs and adapters' indexes included)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import monitor_from_definition
from exporter.core import Registry
from exporter.credentials import derive_secret, derived_uuid_digest

from .conftest import T0, registry_from, write_config

YAML = """
groups:
  - name: backups
    metrics: [duration_histogram]
monitors:
  - {id: y0, schedule: {interval: 1h}}
  - {id: y1, group: backups, schedule: {interval: 1h}}
  - {id: a2, schedule: {interval: 2h}}
"""
IDS = ["a0", "a1", "a2", "a3", "y0"]  # a2 and y0 are also YAML monitors: YAML wins
GROUPS = [None, "backups", "other"]
KINDS = ["api_key", "shortcode"]


def api_monitor(monitor_id: str, version: int, group: str | None):
    spec = {"id": monitor_id, "schedule": {"interval": f"{version + 1}h"}}
    if group:
        spec["group"] = group
    return monitor_from_definition(monitor_id, {"spec": spec, "owner": "o"}, T0)


def version_key(monitor) -> tuple[str, ...]:
    """An adapter index's keys (as CrossCheck's flight ids): API monitors of
    an even version and YAML monitors have one, the others none."""
    if monitor.from_yaml:
        return (f"yaml:{monitor.id}",)
    hours = int(monitor.schedule.seconds // 3600)
    return (f"{monitor.id}:v{hours}",) if hours % 2 else ()


def tables(registry: Registry) -> tuple:
    return (list(registry.monitors.items()), dict(registry._uuid_index))


steps = st.lists(
    st.tuples(st.sampled_from(IDS), st.sampled_from(["put", "delete"]), st.integers(0, 3), st.sampled_from(GROUPS)),
    min_size=1,
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(steps, min_size=1, max_size=8))
def test_incremental_registry_equals_a_full_rebuild(tmp_path_factory, batches):
    tmp = tmp_path_factory.mktemp("registry")
    base = registry_from(write_config(tmp, YAML), tmp)
    assert base.secrets is not None and base.secrets.uuid_key_digest is not None
    base.by_secret("api_key", "warm")  # a built secret index, carried into each registry after it
    base.index("versions", version_key)  # an adapter's index, likewise
    registry, api = base, {}
    for batch in batches:
        # As Core.sync_api_monitors applies a feed of changes: each changed
        # id leaves `api` and comes back at its end, unless deleted.
        api = dict(api)
        changed = []
        for monitor_id, action, version, group in batch:
            if monitor_id in changed:
                continue  # the feed names each id once
            changed.append(monitor_id)
            api.pop(monitor_id, None)
            if action == "put":
                api[monitor_id] = api_monitor(monitor_id, version, group)
        registry = registry.with_api(api, None, changed=tuple(changed))
        full = base.with_api(api, None)
        assert tables(registry) == tables(full)
        # CrossCheck's secret lookups, once built, are carried over too.
        for kind in KINDS:
            for monitor_id in IDS:
                presented = derive_secret(base.secrets.uuid_key_digest, kind, monitor_id)
                assert registry.by_secret(kind, presented) == full.by_secret(kind, presented), (kind, monitor_id)
        assert registry._derived_index == full._derived_index
        # The adapter index: derived from the previous registry's (built
        # in the step before), equal to one built from scratch.
        assert registry.index("versions", version_key) == full.index("versions", version_key)
    key = base.secrets.uuid_key_digest
    for monitor_id in IDS:
        found = registry.by_uuid_digest(derived_uuid_digest(key, monitor_id))
        if monitor_id in registry.yaml:
            # A YAML monitor keeps its own UUID; an API one with its id is shadowed.
            assert registry.monitors[monitor_id].from_yaml
        elif monitor_id in api:
            assert found is not None and found.id == monitor_id and not found.from_yaml
        else:
            assert found is None
    # Group metrics reach API monitors of a YAML group, however they came in.
    for monitor_id, monitor in registry.monitors.items():
        if monitor.group == "backups":
            assert "duration_histogram" in monitor.metrics, monitor_id


def test_a_ping_key_is_matched_by_its_whole_text_and_only_matches_are_remembered(tmp_path):
    registry = registry_from(
        write_config(tmp_path, "ping_keys:\n  - {name: ops, env: OPS_KEY}\n  - {name: ci, env: CI_KEY}\n"
                               "monitors:\n  - {id: job, schedule: {interval: 1h}}\n"),
        tmp_path / "data", {"OPS_KEY": "ops-key-0123456789abcdef", "CI_KEY": "ci-key-0123456789abcdefg"},
    )
    secrets = registry.secrets
    assert secrets is not None
    for _ in range(2):  # the second time from what the first remembered
        assert secrets.ping_key_name("ops-key-0123456789abcdef") == "ops"
        assert secrets.ping_key_name("ci-key-0123456789abcdefg") == "ci"
    for wrong in ("ops-key-0123456789abcdeF", "ops-key-0123456789abcde", "", "ci-key-0123456789abcdefg "):
        assert secrets.ping_key_name(wrong) is None
    assert sorted(secrets._matched.values()) == ["ci", "ops"]  # never a wrong key
