"""Every command of the README's ```sh blocks is run by a test; a long one (a benchmark, training,
calibration on the shared data, docker) is at least checked to parse. The audit, by section:

- Two commands: `scripts/dev serve` runs here as written (on a free port: SEMCACHE_PORT) and
  answers; `scripts/dev test` runs here with one test file (the whole suite is CI's: .ci/run).
- Calling it, and the grpcurl lines of API keys and Admin: tests/test_readme_commands.py runs
  every `buf curl` and `grpcurl` against a live server.
- Use it from an Ollama or OpenAI client: tests/test_http_readme.py runs `semcache serve
  --http-port` and every `curl`.
- Semantic accuracy, and The pair verifier: `bench.accuracy`, `bench.verified`,
  `semcache calibrate`, `semcache train-verifier` and `scripts/fetch_wordnet.py` parse here with
  the README's arguments (they take minutes to hours on ../shared/data); the `train` extra the
  `pip install` names exists, and the repository files they read exist.
- API keys, Admin: `semcache ask --api-key`, `stats`, `list`, `get`, `delete` and `invalidate`
  run here as written, in order, against a `semcache serve` with a tenant's and an operator's
  key; the tenant's keys file is the one the README's `printf` makes.
- Certificates, step by step: tests/test_tls_walkthrough.py runs every line.
- Docker and Compose: the `printf` that makes `api-keys` runs here (above). No image is built:
  `docker build` and `docker run` are checked against the Dockerfile here (tag, port, volume,
  the keys file's mount, and variables semcache reads), `docker compose` against compose.yaml
  (the services named, a build for each replica); tests/test_compose.py checks the file, and
  runs `docker compose config` where Compose v2 is installed.
- Development: `scripts/dev check` is CI's (.ci/run runs it; checked here);
  `scripts/dev gen`'s generator finds the checked-in code fresh here (`--check`: what gen would
  write); `bench/gptcache_env.sh` (it installs GPTCache) passes `bash -n`; `bench.shutdown` runs
  here with one round; the other `bench.*` parse.

test_every_readme_shell_command_is_in_the_audit fails on a command none of these covers."""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import grpc
import pytest
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc
from semcache_client import build_request
from semcache_server.cli import serve
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import free_port
from semcache_server.testing.serve_process import ServeProcess, clean_environment

from tests.test_readme_commands import FENCE, README, logical_lines
from tests.test_tls_walkthrough import START_PATIENCE, STARTED, drain

ROOT = README.parent
TOOLS_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
OPERATOR_KEY = "readme-operator-key-0123456789abcdef"


@dataclass(frozen=True)
class Command:
    line: int
    text: str
    """As written, a trailing comment included (sh ignores it)."""

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text, comments=True)


def quoted_lines(lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Lines joined as sh joins them inside a quotation left open at a line's end."""
    pending: tuple[int, str] | None = None
    for number, line in lines:
        first, text = (number, line) if pending is None else (pending[0], f"{pending[1]}\n{line}")
        try:
            shlex.split(text, comments=True)
        except ValueError:  # no closing quotation yet
            pending = (first, text)
            continue
        pending = None
        yield first, text
    if pending is not None:
        yield pending


def readme_commands() -> list[Command]:
    """The commands of every ```sh block: its logical lines but comments and blanks; in a block
    with `$ ` prompts, only the prompted lines (the others are output)."""
    lines = README.read_text().splitlines()
    found: list[Command] = []
    opened: int | None = None
    for number, line in enumerate(lines):
        if not FENCE.match(line):
            continue
        if opened is None:
            opened = number
            continue
        if lines[opened].strip() == "```sh":
            body = lines[opened + 1 : number]
            prompted = any(text.startswith("$ ") for text in body)
            joined = logical_lines(opened + 2, body)
            # Output lines need not be sh: an apostrophe there would swallow the next prompt.
            for first, text in joined if prompted else quoted_lines(joined):
                stripped = text.strip()
                if prompted and not stripped.startswith("$ "):
                    continue
                stripped = stripped.removeprefix("$ ")
                if stripped and not stripped.startswith("#"):
                    found.append(Command(first, stripped))
        opened = None
    return found


COMMANDS = readme_commands()

AUDIT: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), where)
    for p, where in [
        (r"^(buf curl|grpcurl) ", "tests/test_readme_commands.py"),
        (r"^(semcache serve --http-port |curl )", "tests/test_http_readme.py"),
        (
            r"^(openssl |printf '(subjectAltName|extendedKeyUsage)|semcache (serve|ask) --tls)",
            "tests/test_tls_walkthrough.py",
        ),
        (r"^semcache (ask|stats|list|get|delete|invalidate) --api-key ", "keys and admin, here"),
        (r"^printf 'my-team:%s\\n' ", "keys and admin, here (the keys file)"),
        (r"^docker (build|run) ", "the Dockerfile, here"),
        (r"^docker compose ", "compose.yaml, here"),
        (r"^scripts/dev (serve|test)\s", "run here"),
        (r"^scripts/dev check\s", ".ci/run, checked here"),
        (r"^scripts/dev gen\s", "generate_proto.py --check, here"),
        (r"^bench/gptcache_env\.sh\b", "bash -n, here"),
        (r"^\.venv/bin/python -m bench\.shutdown\b", "run here with one round"),
        (
            r"^\.venv/bin/(python -m (bench|semcache_server\.calibration)\.\w+"
            r"|semcache (calibrate|train-verifier)|pip install )",
            "parsed here",
        ),
    ]
]


def commands_like(pattern: str) -> list[Command]:
    chosen = [command for command in COMMANDS if re.match(pattern, command.text)]
    assert chosen, f"the README has no command matching {pattern}"
    return chosen


def test_every_readme_shell_command_is_in_the_audit() -> None:
    assert len(COMMANDS) > 40, "the extraction finds the README's commands"
    unaudited = [
        f"README line {c.line}: {c.text}"
        for c in COMMANDS
        if not any(pattern.match(c.text) for pattern, _ in AUDIT)
    ]
    assert not unaudited, "commands no test runs or parses:\n" + "\n".join(unaudited)


# ------------------------------------------------------------------------ run as written


def run_sh(
    command: str, environment: dict[str, str], cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command],
        cwd=cwd,
        env=clean_environment() | {"PATH": TOOLS_PATH} | environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def dev_script_would_install() -> str | None:
    """Why scripts/dev would set .venv up first (a pip install, not for a test), or None."""
    stamp = ROOT / ".venv" / ".semcache-installed"
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        return f"the tests run in {sys.prefix}, not in the .venv scripts/dev manages"
    if not stamp.exists():
        return f"{stamp} is missing: scripts/dev would install first"
    newer = [
        p
        for p in (ROOT / "pyproject.toml", ROOT / "client" / "pyproject.toml")
        if p.stat().st_mtime > stamp.stat().st_mtime
    ]
    return (
        f"{newer} changed since .venv was set up: scripts/dev would install first"
        if newer
        else None
    )


def test_scripts_dev_serve_serves_the_embedded_default_as_written(
    tmp_path: Path, ollama: FakeOllama
) -> None:
    reason = dev_script_would_install()
    if reason is not None:
        pytest.skip(reason)
    (command,) = commands_like(r"^scripts/dev serve\s")
    port = free_port()
    environment = clean_environment() | {
        "PATH": TOOLS_PATH,
        "SEMCACHE_PORT": str(port),
        "SEMCACHE_STATE_DIR": str(tmp_path / "state"),
        "OLLAMA_HOST": ollama.url,
    }
    server = subprocess.Popen(
        ["sh", "-c", f"exec {command.text}"],
        cwd=ROOT,
        env=environment,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert server.stderr is not None
    written: queue.Queue[str] = queue.Queue()
    threading.Thread(target=drain, args=(server.stderr, written), daemon=True).start()
    try:
        said: list[str] = []
        while not said or STARTED not in said[-1]:
            try:
                said.append(written.get(timeout=START_PATIENCE))
            except queue.Empty:
                pytest.fail(f"scripts/dev serve said nothing for a while:\n{''.join(said)}")
            assert said[-1], f"scripts/dev serve exited:\n{''.join(said)}"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = semcache_pb2_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
            request = build_request(
                pb.AskRequest, "What is the capital of France?", model="llama3.2"
            )
            answer: pb.AskResponse = stub.Ask(request, timeout=60)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)

    assert f"127.0.0.1:{port} over plaintext" in said[-1]
    assert answer.source == pb.SOURCE_LLM and answer.stored
    assert answer.text == ollama.reply_for("What is the capital of France?")
    assert code == 0
    assert (tmp_path / "state" / "redis").is_dir()  # the embedded Redis


def test_scripts_dev_test_runs_pytest_with_the_arguments_given() -> None:
    reason = dev_script_would_install()
    if reason is not None:
        pytest.skip(reason)
    (command,) = commands_like(r"^scripts/dev test\s")
    words = command.words
    done = run_sh(
        shlex.join([*words, "tests/test_dev_script.py", "-q", "-p", "no:cacheprovider"]), {}
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_ci_runs_the_development_commands() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in (
        *commands_like(r"^scripts/dev check\s"),
        *commands_like(r"^scripts/dev test\s"),
    ):
        assert shlex.join(command.words) in ci, f"{command.text}: .ci/run does not run it"


def test_the_generated_code_is_what_scripts_dev_gen_writes() -> None:
    commands_like(r"^scripts/dev gen\s")
    assert (
        '"$VENV/bin/python" scripts/generate_proto.py\n' in (ROOT / "scripts" / "dev").read_text()
    )
    done = subprocess.run(
        [sys.executable, "scripts/generate_proto.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_bench_shutdown_runs_and_prints_its_table() -> None:
    (command,) = commands_like(r"^\.venv/bin/python -m bench\.shutdown\b")
    module = command.words[2]
    done = subprocess.run(
        [sys.executable, "-m", module, "--rounds", "1"],
        cwd=ROOT,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| embedded Redis |" in done.stdout and "| external Redis |" in done.stdout


def test_the_gptcache_setup_script_is_valid_bash() -> None:
    (command,) = commands_like(r"^bench/gptcache_env\.sh\b")
    script = ROOT / command.words[0]
    assert os.access(script, os.X_OK), f"{script} is not executable"
    done = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------- keys and admin


@dataclass(frozen=True)
class Keyed:
    server: ServeProcess
    key: str
    folder: Path


@pytest.fixture
def keyed(tmp_path: Path, ollama: FakeOllama) -> Iterator[Keyed]:
    """A `semcache serve` with the tenant's keys file the README's printf makes, and an
    operator's key."""
    makes = commands_like(r"^printf 'my-team:")
    assert len({tuple(make.words) for make in makes}) == 1, "api-keys is made one way"
    made = run_sh(makes[0].text, {}, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    tenant, key = (tmp_path / "api-keys").read_text().strip().split(":")
    assert tenant == "my-team" and re.fullmatch(r"[0-9a-f]{64}", key), key
    (tmp_path / "admin-keys").write_text(f"ops:{OPERATOR_KEY}\n")
    server = ServeProcess(
        tmp_path / "state",
        ollama.url,
        [
            "--api-keys-file",
            str(tmp_path / "api-keys"),
            "--admin-keys-file",
            str(tmp_path / "admin-keys"),
            "--verifier",
            "off",
        ],
    ).start()
    yield Keyed(server, key, tmp_path)
    if server.running():
        server.terminate()


def test_the_api_key_and_admin_commands_run_as_written(keyed: Keyed, ollama: FakeOllama) -> None:
    prompt = "What is the capital of France?"
    environment = {
        "KEY": keyed.key,
        "OPERATOR_KEY": OPERATOR_KEY,
        "SEMCACHE_TARGET": keyed.server.target,
    }

    def run(command: Command, entry_id: str = "") -> subprocess.CompletedProcess[str]:
        return run_sh(command.text.replace("ENTRY_ID", entry_id), environment, keyed.folder)

    (ask,) = commands_like(r'^semcache ask --api-key "\$KEY" ')
    assert ask.words[-1] == prompt, "the admin commands below act on the answer it stores"
    stats, listing, get, delete, by_prompt, by_model = commands_like(
        r"^semcache (stats|list|get|delete|invalidate) --api-key "
    )

    asked = run(ask)
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout == ollama.reply_for(prompt) + "\n"

    counted = run(stats)
    assert counted.returncode == 0, counted.stderr
    assert re.search(r"^entries\s+1$", counted.stdout, re.MULTILINE), counted.stdout

    listed = run(listing)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.startswith("ENTRY ID"), header
    entry_id = row.split()[0]
    assert re.fullmatch(r"[0-9a-f]{32}", entry_id) and row.endswith(prompt), row

    got = run(get, entry_id)
    assert got.returncode == 0, got.stderr
    assert got.stdout.rstrip("\n").endswith(ollama.reply_for(prompt)), got.stdout

    deleted, again = run(delete, entry_id), run(delete, entry_id)
    assert (deleted.returncode, deleted.stdout) == (0, f"deleted {entry_id}\n"), deleted.stderr
    assert again.returncode == 1, "exits 1 if it was not there"

    for invalidate in (by_prompt, by_model):
        assert run(ask).returncode == 0  # stored again, to be invalidated
        removed = run(invalidate)
        assert (removed.returncode, removed.stdout) == (0, "removed 1 entry\n"), removed.stderr


# ------------------------------------------------------------------------------ docker


def dockerfile_env(name: str) -> str:
    found = re.search(rf"\b{name}=(\S+)", (ROOT / "Dockerfile").read_text())
    assert found is not None, f"the Dockerfile sets no {name}"
    return found.group(1)


def serve_variables() -> set[str]:
    """The environment variables `semcache serve` reads."""
    return {
        str(param.envvar)
        for param in serve.params
        if isinstance(param, click.Option) and param.envvar
    }


def test_the_docker_commands_fit_the_dockerfile() -> None:
    (build,) = commands_like(r"^docker build ")
    (run,) = commands_like(r"^docker run ")
    build_words, run_words = build.words, run.words
    tag = build_words[build_words.index("-t") + 1]
    assert build_words[-1] == "." and (ROOT / "Dockerfile").is_file()

    published, mounts, variables = [], {}, {}
    words = iter(run_words[2:-1])
    for word in words:
        value = next(words)
        if word == "-p":
            published.append(value.split(":")[-1])
        elif word == "-v":
            source, target = value.split(":")[:2]
            mounts[target] = source
        elif word == "-e":
            name, _, setting = value.partition("=")
            variables[name] = setting
        else:
            pytest.fail(f"docker run option the test does not know: {word}")
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert run_words[-1] == tag, "docker run runs the image docker build tags"
    assert published == [dockerfile_env("SEMCACHE_PORT")]
    assert f"EXPOSE {published[0]}" in dockerfile
    state = dockerfile_env("SEMCACHE_STATE_DIR")
    assert state in mounts and f'VOLUME ["{state}"]' in dockerfile
    assert variables["SEMCACHE_API_KEYS_FILE"] in mounts, "the keys file is mounted where it says"
    assert mounts[variables["SEMCACHE_API_KEYS_FILE"]].endswith("/api-keys")
    assert set(variables) <= serve_variables(), set(variables) - serve_variables()


def test_the_compose_commands_fit_compose_yaml() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    for command in commands_like(r"^docker compose "):
        words = command.words
        if words[2] == "up":
            assert "--build" in words
            replicas = [s for s in services.values() if "build" in s]
            assert len(replicas) >= 2, "the replicas are built from the Dockerfile"
        elif words[2] == "exec":
            service, program = words[3], words[4]
            assert service in services, f"compose.yaml has no service {service}"
            assert services[service]["image"].split(":")[0].endswith(program)
        else:
            assert words[2:] == ["ps"], command.text


# ------------------------------------------------------------------------- parse only

PARSE_ONLY = """
import argparse, runpy, sys

parse = argparse.ArgumentParser.parse_args


def parse_only(self, args=None, namespace=None):
    parse(self, args, namespace)  # exits 2 on an unknown flag or a value of the wrong kind
    print("parsed")
    sys.exit(0)


argparse.ArgumentParser.parse_args = parse_only
kind, target, *argv = sys.argv[1:]
sys.argv = [target, *argv]
if kind == "module":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
elif kind == "script":
    runpy.run_path(target, run_name="__main__")
else:
    from semcache_server.cli import main

    main(args=argv, prog_name="semcache")
"""
"""Runs a command up to its argument parser (argparse, as every long command here uses) and
stops there: `--help` would exit before an unknown flag is noticed."""

LONG = (
    r"^\.venv/bin/(python -m (bench\.(?!shutdown\b)|semcache_server\.calibration\.)\w+"
    r"|semcache (calibrate|train-verifier)|pip )"
)


def parse_steps() -> list[tuple[int, list[str]]]:
    """The long commands, each split at `&&` into steps."""
    steps = []
    for command in commands_like(LONG):
        step: list[str] = []
        for word in [*command.words, "&&"]:
            if word != "&&":
                step.append(word)
            elif step:
                steps.append((command.line, step))
                step = []
    return steps


def step_name(words: list[str]) -> str:
    """The module, script or subcommand a step runs."""
    program, *arguments = words
    if arguments[0] == "-m":
        return arguments[1]
    return f"{Path(program).name}-{Path(arguments[0]).name}"


@pytest.mark.parametrize(
    ("line", "words"),
    parse_steps(),
    ids=[f"line{line}-{step_name(words)}" for line, words in parse_steps()],
)
def test_a_long_command_parses_with_the_readme_arguments(line: int, words: list[str]) -> None:
    program, *arguments = words
    if program == ".venv/bin/pip":
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "optional-dependencies"
        ]
        (requirement,) = [a for a in arguments if a.startswith(".[")]
        assert arguments[0] == "install"
        assert requirement[2:-1] in extras, f"README line {line}: no extra {requirement}"
        return
    if program == ".venv/bin/python" and arguments[0] == "-m":
        kind, target, argv = "module", arguments[1], arguments[2:]
    elif program == ".venv/bin/python":
        kind, target, argv = "script", arguments[0], arguments[1:]
    else:
        assert program == ".venv/bin/semcache", words
        kind, target, argv = "semcache", "semcache", arguments
    files = [a for a in argv if re.match(r"(tests|bench|scripts|server)/", a)]
    assert all((ROOT / f).exists() for f in files), f"README line {line}: missing {files}"
    done = subprocess.run(
        [sys.executable, "-c", PARSE_ONLY, kind, target, *argv],
        cwd=ROOT,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout.splitlines()[-1:]) == (0, ["parsed"]), (
        f"README line {line}: {shlex.join(words)}\n{done.stdout}{done.stderr}"
    )
