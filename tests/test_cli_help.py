"""`--help` says what every option of every `semcache` command does, in one style: the click
commands' and the two offline tools' (argparse) alike, a short description without markup."""

from __future__ import annotations

import argparse
import subprocess

import click
import pytest
from semcache_server import cli
from semcache_server.calibration import command as calibration
from semcache_server.calibration import train_verifier
from semcache_server.testing.serve_process import SEMCACHE, clean_environment

OFFLINE_TOOLS = {"calibrate": calibration._parser, "train-verifier": train_verifier._parser}
"""The commands that hand their arguments to an argparse parser of their own."""
MARKUP = ("`", "``", "**", "\\")


def test_every_option_of_every_command_has_help() -> None:
    commands = cli.main.commands
    assert {"serve", "ask", "health", "stats", "list", "get", "delete", "invalidate"} <= set(
        commands
    )
    missing = [
        f"semcache {name} {param.opts[0]}"
        for name, command in commands.items()
        for param in command.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert missing == []


@pytest.mark.parametrize("tool", sorted(OFFLINE_TOOLS))
def test_the_offline_tools_describe_themselves_briefly_and_every_option(tool: str) -> None:
    parser = OFFLINE_TOOLS[tool]()
    description = parser.description or ""
    undescribed = [
        action.option_strings[0]
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]
    shown = subprocess.run(
        [SEMCACHE, tool, "--help"],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert 0 < len(description) <= 200 and "\n\n" not in description
    assert not [mark for mark in MARKUP if mark in description]
    assert undescribed == []
    assert shown.returncode == 0 and shown.stdout.startswith(f"usage: semcache {tool}")
    assert " ".join(description.split()) in " ".join(shown.stdout.split())
