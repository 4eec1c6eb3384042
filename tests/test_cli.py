"""The front door: `semcache serve` on the embedded default, asked through `semcache ask`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from semcache_server.settings import Settings
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.serve_process import SEMCACHE, ServeProcess, clean_environment


def ask(target: str, prompt: str) -> tuple[dict[str, object], str]:
    done = subprocess.run(
        [SEMCACHE, "ask", prompt, "--target", target, "--json"],
        env=clean_environment(),
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


def test_the_default_state_dir_of_a_test_run_is_not_the_users(no_user_state: Path) -> None:
    """A server a test starts without --state-dir writes under the session's temporary folder."""
    assert Settings().state_dir.is_relative_to(no_user_state)
    assert not Settings().state_dir.is_relative_to(Path.home() / ".local" / "state")
