"""The keys file: what a line may say, and errors that name the line but never the key on it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from semcache_server import cli
from semcache_server.edge.auth import ApiKeys, KeysFileError, bearer_key, parse_keys

KEY = "k3y-of-sixteen-plus-chars"


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
