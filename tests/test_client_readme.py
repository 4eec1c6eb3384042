"""The README's Python client examples, run as written (only the address changed) in a Python of
their own, one after the other against one served semcache: each exits 0 and prints what it
promises."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import Running

README = Path(__file__).resolve().parent.parent / "README.md"
README_TARGET = "127.0.0.1:50051"
SECTION = re.compile(r"^### Python client\n(.*?)^##? ", re.MULTILINE | re.DOTALL)
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def client_examples() -> list[str]:
    section = SECTION.search(README.read_text(encoding="utf-8"))
    assert section is not None, "the README has no Python client section"
    return PYTHON_BLOCK.findall(section.group(1))


async def run_example(code: str, target: str) -> str:
    """Its output; awaited, so the server on this loop goes on answering."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code.replace(README_TARGET, target),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.asyncio
async def test_the_python_client_examples_run_and_print_what_they_promise(
    semcache: Running,
) -> None:
    sync_example, async_example = client_examples()

    printed = await run_example(sync_example, semcache.target)
    lines = printed.splitlines()
    assert lines[0] == "Echo: What is the capital of France? SOURCE_LLM 0.0 "
    assert lines[1:3] == ["Echo: Name three uses of Redis.", "2 0.0"]  # the stream, the stats
    listed = {line.split(" ", 1)[1] for line in lines if re.match(r"[0-9a-f]{32} ", line)}
    assert listed == {"What is the capital of France?", "Name three uses of Redis."}

    printed = await run_example(async_example, semcache.target)
    assert printed.splitlines() == [
        "Echo: What is the capital of France? SOURCE_EXACT",  # stored by the first example
        "Echo: Name three uses of Redis.",
        "removed: 1",
    ]
