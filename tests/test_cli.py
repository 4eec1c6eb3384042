"""The front door: `semcache serve` on the embedded default, asked through `semcache ask`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import free_port

SEMCACHE = shutil.which("semcache") or str(Path(sys.executable).parent / "semcache")


def _environment() -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("SEMCACHE_", "REDIS_"))}
    environment.pop("OLLAMA_HOST", None)
    return environment


class ServeProcess:
    def __init__(self, state_dir: Path, ollama_url: str) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self._command = [
            SEMCACHE,
            "serve",
            "--port",
            str(self.port),
            "--state-dir",
            str(state_dir),
            "--ollama-host",
            ollama_url,
        ]
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self._command,
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"semcache serve exited:\n{self.process.stdout.read()}")  # type: ignore[union-attr]
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    time.sleep(0.2)
        raise RuntimeError("semcache serve did not become healthy")

    def terminate(self) -> tuple[int, str]:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=30)
        return self.process.returncode, output


def ask(target: str, prompt: str) -> tuple[dict[str, object], str]:
    done = subprocess.run(
        [SEMCACHE, "ask", prompt, "--target", target, "--json"],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (json.loads(done.stdout) if done.returncode == 0 else {}), done.stderr


@pytest.fixture
def served(tmp_path: Path, ollama: FakeOllama) -> Iterator[ServeProcess]:
    server = ServeProcess(tmp_path / "state", ollama.url)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.terminate()  # SIGTERM: a killed server would leave its embedded Redis running


def test_serve_on_the_embedded_default_answers_caches_and_keeps_the_cache_across_restarts(
    served: ServeProcess, ollama: FakeOllama, tmp_path: Path
) -> None:
    first, _ = ask(served.target, "What is a semantic cache?")
    second, _ = ask(served.target, "What is a semantic cache?")
    code, log = served.terminate()

    served.start()
    after_restart, _ = ask(served.target, "What is a semantic cache?")
    paraphrase, _ = ask(served.target, "What's a semantic cache?")

    assert first["source"] == "SOURCE_LLM" and first["text"] == ollama.reply_for(
        "What is a semantic cache?"
    )
    assert second["source"] == "SOURCE_EXACT"
    assert code == 0, log
    assert after_restart["source"] == "SOURCE_EXACT"
    assert paraphrase["source"] == "SOURCE_SEMANTIC"
    assert ollama.call_count() == 1
    assert (tmp_path / "state" / "redis").is_dir()


def test_ask_reports_a_status_a_person_can_act_on(served: ServeProcess) -> None:
    result, stderr = ask(served.target, "   ")
    assert result == {}
    assert "INVALID_ARGUMENT: prompt: must not be empty or blank" in stderr


def test_every_setting_has_a_flag_and_an_environment_variable_listed_in_the_readme() -> None:
    import dataclasses

    import click
    from semcache_server.cli import serve
    from semcache_server.settings import Settings

    options = {param.name: param for param in serve.params if isinstance(param, click.Option)}
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()

    for setting in dataclasses.fields(Settings):
        option = options.get(setting.name)
        assert option is not None, f"no flag for {setting.name}"
        assert option.envvar, f"no environment variable for {option.opts[0]}"
        assert f"`{option.opts[0]}`" in readme and f"`{option.envvar}`" in readme, setting.name
