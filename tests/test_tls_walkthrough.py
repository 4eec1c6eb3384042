"""The README's mutual-TLS walk-through, run as written: its openssl commands make a CA and the
server's and a client's certificates, its `semcache serve` line serves with them on loopback, and
its `semcache ask` line gets an answer through them. Only what the commands leave to the
environment is set here: the port, the state dir and Ollama's address for the server (their
SEMCACHE_* and OLLAMA_HOST variables) and the target for the client (SEMCACHE_TARGET)."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import free_port
from semcache_server.testing.serve_process import clean_environment

from tests.test_readme_commands import FENCE, README, logical_lines

TOOLS_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
STARTED = "semcache serving on"
START_PATIENCE = 120.0
"""Seconds the server may take to say it serves before the test gives up (a failsafe: the test
waits for the line, not for a time)."""


@dataclass(frozen=True)
class Walkthrough:
    certificates: str
    """The commands before `semcache serve`, as the README shows them."""
    serve: str
    ask: str
    prompt: str


def walkthrough() -> Walkthrough:
    """The ```sh block that makes a CA with openssl, split at its semcache commands."""
    lines = README.read_text().splitlines()
    blocks: list[tuple[int, list[str]]] = []
    opened: int | None = None
    for number, line in enumerate(lines):
        if FENCE.match(line):
            if opened is None:
                opened = number
            else:
                blocks.append((opened, lines[opened + 1 : number]))
                opened = None
    found = [
        (opened, body)
        for opened, body in blocks
        if lines[opened].strip() == "```sh" and any("openssl req -x509" in line for line in body)
    ]
    assert len(found) == 1, "the README has no (or more than one) openssl walk-through"
    first, body = found[0]
    commands = list(logical_lines(first + 2, body))
    serve = next(i for i, (_, line) in enumerate(commands) if line.startswith("semcache serve"))
    ask = next(i for i, (_, line) in enumerate(commands) if line.startswith("semcache ask"))
    serve_line = commands[serve][0] - first - 2  # its index in body
    prompt = re.search(r'"([^"]+)"\s*$', commands[ask][1])
    assert prompt is not None, "the ask command ends with its prompt in double quotes"
    return Walkthrough(
        "\n".join(body[:serve_line]), commands[serve][1], commands[ask][1], prompt.group(1)
    )


def drain(stream: IO[str], lines: queue.Queue[str]) -> None:
    """Every line as it comes, then "" when the stream ends (the process exited)."""
    for line in stream:
        lines.put(line)
    stream.close()
    lines.put("")


def test_the_readme_mtls_walkthrough_serves_and_answers_as_written(
    tmp_path: Path, ollama_server: FakeOllama
) -> None:
    steps = walkthrough()
    environment = clean_environment() | {"PATH": TOOLS_PATH}

    made = subprocess.run(
        ["sh", "-ec", steps.certificates],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert {"ca.pem", "server.pem", "server.key", "client.pem", "client.key"} <= {
        path.name for path in tmp_path.iterdir()
    }

    port = free_port()
    server = subprocess.Popen(
        ["sh", "-c", f"exec {steps.serve}"],
        cwd=tmp_path,
        env=environment
        | {
            "SEMCACHE_PORT": str(port),
            "SEMCACHE_STATE_DIR": str(tmp_path / "state"),
            "OLLAMA_HOST": ollama_server.url,
        },
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
                pytest.fail(f"semcache serve said nothing for a while:\n{''.join(said)}")
            assert said[-1], f"semcache serve exited:\n{''.join(said)}"
        asked = subprocess.run(
            ["sh", "-c", steps.ask],
            cwd=tmp_path,
            env=environment | {"SEMCACHE_TARGET": f"127.0.0.1:{port}"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    assert f"127.0.0.1:{port} over mutual TLS (" in said[-1]
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout == ollama_server.reply_for(steps.prompt) + "\n"
    assert asked.stderr.strip() == "[LLM]"
