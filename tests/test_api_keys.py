"""The keys file: what a line may say, errors that name the line but never the key on it, and a
file without a key, which never locks every caller out."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_server import cli
from semcache_server.edge.auth import ApiKeys, KeysFileError, bearer_key, parse_keys
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess
from semcache_server.testing.serve_process import ServeProcess

from tests.test_ask import ask
from tests.test_port_sharing import serve_until_it_exits

KEY = "k3y-of-sixteen-plus-chars"
NO_KEY = "no key in the file"


def test_plain_and_digest_lines_name_their_tenants_and_comments_are_skipped() -> None:
    digest = hashlib.sha256(b"another-long-enough-key").hexdigest().upper()
    keys = ApiKeys(parse_keys(f"# keys\n\nteam-a:{KEY}\n  team.b:sha256:{digest}  \n", "keys"))
    assert keys.tenants == {"team-a", "team.b"}
    assert keys.tenant_of(KEY) == "team-a"
    assert keys.tenant_of("another-long-enough-key") == "team.b"
    assert keys.tenant_of(KEY + "x") is None and keys.tenant_of("") is None


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (f"{KEY}", "expected 'tenant:key'"),
        (f"bad name:{KEY}", "tenant name"),
        ("team:short", "at least 16"),
        ("team:sha256:abc", "64 hexadecimal"),
        (f"team:{KEY}\nother:{KEY}", "already given"),
    ],
)
def test_a_bad_line_is_named_by_number_without_its_key(line: str, problem: str) -> None:
    with pytest.raises(KeysFileError) as raised:
        parse_keys(f"# first line\n{line}\n", "/etc/semcache/keys")
    message = str(raised.value)
    assert problem in message and "/etc/semcache/keys, line " in message
    assert KEY not in message and "short" not in message


def test_the_bearer_key_is_read_from_authorization_metadata() -> None:
    assert bearer_key([("authorization", f"Bearer {KEY}")]) == KEY
    assert bearer_key([("x-other", "1"), ("Authorization", f"bearer  {KEY} ")]) == KEY
    assert bearer_key([("authorization", f"Basic {KEY}")]) is None
    assert bearer_key([("authorization", b"Bearer " + KEY.encode())]) == KEY
    assert bearer_key([]) is None


def test_serve_with_an_unreadable_or_bad_keys_file_exits_saying_which(tmp_path: Path) -> None:
    bad = tmp_path / "bad-keys"
    bad.write_text(f"team:{KEY}\nnot a key line\n")
    for path, reason in ((tmp_path / "missing", "No such file"), (bad, "line 2")):
        result = CliRunner().invoke(
            cli.main,
            ["serve", "--port", "0", "--state-dir", str(tmp_path), "--api-keys-file", str(path)],
        )
        assert result.exit_code == 1
        assert str(path) in result.output and reason in result.output


@pytest.fixture
def keyed_server(
    tmp_path: Path, redis_process: RedisProcess, ollama_server: FakeOllama
) -> Iterator[tuple[ServeProcess, Path]]:
    keys = tmp_path / "api-keys"
    keys.write_text(f"team:{KEY}\n")
    server = ServeProcess(
        tmp_path / "state",
        ollama_server.url,
        ["--redis-url", redis_process.url, "--api-keys-file", str(keys)],
    ).start()
    yield server, keys
    if server.running():
        server.terminate()


def test_a_keys_file_emptied_or_left_with_comments_keeps_the_keys_in_use_and_logs_an_error(
    keyed_server: tuple[ServeProcess, Path],
) -> None:
    server, keys = keyed_server
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]

        def answered_with_the_key() -> bool:
            """Raises UNAUTHENTICATED if the key no longer works."""
            metadata = (("authorization", f"Bearer {KEY}"),)
            return bool(stub.Ask(ask("Is the key still good?"), metadata=metadata, timeout=20).text)

        assert answered_with_the_key()
        for reported, text in enumerate(["", "# keys are being rotated\n\n"], start=1):
            keys.write_text(text)
            # The file is read again on a call, at most once a second: call until it was.
            for _ in range(200):
                assert answered_with_the_key()
                if server.output.count(NO_KEY) == reported:
                    break
                time.sleep(0.05)
            errors = [line for line in server.output.splitlines() if NO_KEY in line]
            assert len(errors) == reported
            assert " ERROR " in errors[-1] and str(keys) in errors[-1]
            assert answered_with_the_key()


@pytest.mark.parametrize(
    ("flag", "text"),
    [("--api-keys-file", ""), ("--api-keys-file", "# none yet\n"), ("--admin-keys-file", "\n")],
    ids=["empty", "comments-only", "admin-empty"],
)
def test_serve_with_a_keys_file_without_a_key_refuses_to_start_in_one_line(
    flag: str, text: str, tmp_path: Path, redis_process: RedisProcess, ollama: FakeOllama
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(text)
    code, stderr = serve_until_it_exits(
        [
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "state"),
            "--redis-url",
            redis_process.url,
            "--ollama-host",
            ollama.url,
            flag,
            str(keys),
        ]
    )
    assert code != 0 and "Traceback" not in stderr
    # (Without --api-keys-file, a warning that calls are not authenticated comes first.)
    assert stderr.splitlines()[-1] == (
        f"Error: {flag} {keys}: {NO_KEY} (it is empty or holds only comments)"
    )
