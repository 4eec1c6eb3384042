"""The README's "Use it from an Ollama or OpenAI client" commands, run as written (only the
address changed) against a live semcache with its HTTP front: the curl calls with sh, the Python
examples in a Python of their own; each exits 0 and prints what the README says."""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import Running
from tests.http_fronts import base_url, http_semcache

__all__ = ["http_semcache"]  # the fixture, used by name

README = Path(__file__).resolve().parent.parent / "README.md"
README_URL = "http://127.0.0.1:11435"
SECTION = re.compile(
    r"^## Use it from an Ollama or OpenAI client\n(.*?)^## ", re.MULTILINE | re.DOTALL
)
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[str]:
    section = SECTION.search(README.read_text(encoding="utf-8"))
    assert section is not None, "the README has no such section"
    return [code for kind, code in BLOCK.findall(section.group(1)) if kind == language]


def curl_commands() -> list[str]:
    """The block's curl commands, continuation lines joined (the serve line is the fixture's)."""
    (block,) = blocks("sh")
    commands, pending = [], ""
    for line in block.splitlines():
        pending += line.removesuffix("\\") + ("\n" if not line.endswith("\\") else "")
        if line.endswith("\\") or pending.count("'") % 2 == 1:  # the command goes on
            continue
        if pending.startswith("curl "):
            commands.append(pending.strip())
        pending = ""
    return commands


async def run(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.asyncio
@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl on this machine")
async def test_the_curl_examples_answer_and_the_second_is_an_exact_hit(
    http_semcache: Running,
) -> None:
    commands = curl_commands()
    printed = [
        await run("sh", "-c", command.replace(README_URL, base_url(http_semcache)))
        for command in commands
    ]

    assert len(commands) == 3
    assert '"content":"Echo: What is the capital of France?"' in printed[0]
    assert "x-semcache-source: exact" in printed[1].lower()
    assert "x-semcache-similarity: 1" in printed[1].lower()
    assert "x-semcache-entry-id: " in printed[1].lower()
    assert '"content":"Echo: Name three uses of Redis."' in printed[2]
    assert '"object":"chat.completion"' in printed[2]


@pytest.mark.asyncio
async def test_the_python_examples_print_cached_answers(http_semcache: Running) -> None:
    ollama_example, openai_example = blocks("python")
    url = base_url(http_semcache)

    first = await run(sys.executable, "-c", ollama_example.replace(README_URL, url))
    second = await run(sys.executable, "-c", openai_example.replace(README_URL, url))

    assert first.splitlines() == [
        "Echo: What is the capital of France?",
        "Echo: Name three uses of Redis.",
    ]
    assert second.splitlines() == ["Echo: What is the capital of France? exact"]
