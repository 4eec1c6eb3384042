"""compose.yaml, read as Compose reads it (PyYAML, merge keys included): Redis persists with an
append-only file on a volume, Ollama keeps its models on a volume, and every semcache replica is
built from the Dockerfile, reaches both through their service names, requires API keys, is probed
with `semcache health`, starts after Redis and Ollama are healthy, and has a state volume of its
own. `docker compose config` checks the rest where Compose v2 is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"


def load() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def image_setting(name: str) -> str:
    """An ENV value the Dockerfile sets (SEMCACHE_PORT, SEMCACHE_STATE_DIR)."""
    found = re.search(rf"\b{name}=(\S+)", DOCKERFILE.read_text())
    assert found is not None, f"the Dockerfile sets no {name}"
    return found.group(1)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, from either of Compose's forms (mapping or KEY=VALUE list)."""
    values = service.get("environment") or {}
    if isinstance(values, list):
        return dict(item.split("=", 1) for item in values)
    return {key: str(value) for key, value in values.items()}


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Target path -> source of a service's volumes, short (source:target[:mode]) or long form."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        mounts[target] = source
    return mounts


def named_volume_at(compose: dict[str, Any], service: str, target: str) -> str:
    """The named volume (declared at the top level, not a host path) mounted at target."""
    source = volume_mounts(compose["services"][service]).get(target)
    assert source, f"{service} mounts nothing at {target}"
    assert source in (compose.get("volumes") or {}), f"{service}: {source} is no named volume"
    return source


def semcache_replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from this repository's Dockerfile."""
    replicas = {}
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        if (COMPOSE.parent / context / dockerfile).resolve() == DOCKERFILE:
            replicas[name] = service
    return replicas


def command_words(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(word) for word in command]


def healthcheck_words(service: dict[str, Any]) -> list[str]:
    test = (service.get("healthcheck") or {}).get("test") or []
    if isinstance(test, str):
        return ["CMD-SHELL", test]
    return [str(word) for word in test]


def test_redis_appends_every_write_fsyncs_each_second_and_keeps_its_data_on_a_volume() -> None:
    compose = load()
    redis = compose["services"]["redis"]
    command = " ".join(command_words(redis))
    assert command.startswith("redis-server"), command
    assert "--appendonly yes" in command and "--appendfsync everysec" in command, command
    named_volume_at(compose, "redis", "/data")
    assert "redis-cli" in healthcheck_words(redis) and "ping" in healthcheck_words(redis)


def test_ollama_keeps_its_models_on_a_volume_and_has_a_health_check() -> None:
    compose = load()
    named_volume_at(compose, "ollama", "/root/.ollama")
    assert healthcheck_words(compose["services"]["ollama"])[:1] == ["CMD"]


def test_each_replica_is_built_from_the_dockerfile_and_reaches_redis_and_ollama_by_service() -> (
    None
):
    compose = load()
    replicas = semcache_replicas(compose)
    assert replicas, "no service is built from the Dockerfile"
    for name, service in replicas.items():
        values = environment(service)
        redis = urlsplit(values.get("REDIS_URL", ""))
        ollama = urlsplit(values.get("OLLAMA_HOST", ""))
        assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379), name
        assert (ollama.scheme, ollama.hostname, ollama.port) == ("http", "ollama", 11434), name
    images = {service.get("image") for service in replicas.values()}
    assert len(images) == 1 and None not in images, "one image name, so Compose builds it once"


def test_each_replica_requires_api_keys_from_a_mounted_file() -> None:
    """The image listens on 0.0.0.0 and refuses to start without keys; accepting that risk
    (SEMCACHE_INSECURE_LISTEN) is not for a file meant for production."""
    compose = load()
    secrets = compose.get("secrets") or {}
    for name, service in semcache_replicas(compose).items():
        values = environment(service)
        assert "SEMCACHE_INSECURE_LISTEN" not in values, name
        keys_file = values.get("SEMCACHE_API_KEYS_FILE")
        mounted = {}
        for secret in service.get("secrets") or []:
            source = secret if isinstance(secret, str) else secret["source"]
            target = source if isinstance(secret, str) else secret.get("target", source)
            assert secrets.get(source, {}).get("file"), f"{name}: secret {source} has no file"
            mounted[target if target.startswith("/") else f"/run/secrets/{target}"] = source
        mounted.update({target: s for target, s in volume_mounts(service).items() if s})
        assert keys_file in mounted, f"{name}: SEMCACHE_API_KEYS_FILE={keys_file} is not mounted"


def test_each_replica_is_probed_with_semcache_health_and_waits_for_healthy_dependencies() -> None:
    compose = load()
    port = image_setting("SEMCACHE_PORT")
    for name, service in semcache_replicas(compose).items():
        probe = healthcheck_words(service)
        assert probe == ["CMD", "semcache", "health", "--target", f"127.0.0.1:{port}"], name
        depends_on = service.get("depends_on")
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions"
        for dependency in ("redis", "ollama"):
            assert depends_on[dependency]["condition"] == "service_healthy", (name, dependency)
            assert healthcheck_words(compose["services"][dependency]), dependency


def test_each_replica_has_a_state_volume_of_its_own() -> None:
    compose = load()
    state_dir = image_setting("SEMCACHE_STATE_DIR")
    replicas = semcache_replicas(compose)
    volumes = [named_volume_at(compose, name, state_dir) for name in replicas]
    assert len(set(volumes)) == len(replicas), f"replicas share a state volume: {volumes}"
    for name, service in replicas.items():
        assert (service.get("deploy") or {}).get("replicas", 1) == 1, (
            f"{name}: copies made by deploy.replicas would share one state volume"
        )


def compose_v2() -> list[str] | None:
    """The Compose v2 command here: the docker CLI plugin, or a standalone docker-compose v2."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        version = subprocess.run(
            [*command, "version", "--short"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2"):
            return command
    return None


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    command = compose_v2()
    if command is None:
        pytest.skip("Compose v2 is not installed (docker compose or docker-compose v2)")
    done = subprocess.run(
        [*command, "--file", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
