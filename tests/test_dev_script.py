"""scripts/dev, the one entry point a new user runs: a command it does not know is an error."""

from __future__ import annotations

import subprocess
from pathlib import Path

DEV = Path(__file__).resolve().parent.parent / "scripts" / "dev"


def dev(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEV), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_an_unknown_command_prints_the_usage_to_stderr_and_exits_2() -> None:
    done = dev("bogus")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "unknown command: bogus" in done.stderr
    assert "scripts/dev test" in done.stderr and "scripts/dev release" in done.stderr


def test_help_prints_the_usage_to_stdout_and_exits_0() -> None:
    done = dev("help")
    assert done.returncode == 0, done.stderr
    assert "scripts/dev serve" in done.stdout and "scripts/dev release" in done.stdout
