"""`semcache list`, `get`, `delete` and `invalidate` as a person runs them, against a real
`semcache serve` with tenants' and an operator's keys; and the messages that tell a CLI user
which key to pass."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import grpc
import pytest
from semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.serve_process import SEMCACHE, ServeProcess, clean_environment

from tests.test_ask import ask as ask_request

KEYS = {
    tenant: f"{tenant}-key-0123456789abcdef" for tenant in ("lister", "pager", "counter", "keyless")
}
OPERATOR_KEY = "operator-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, ollama_server: FakeOllama
) -> Iterator[ServeProcess]:
    """One server for the module: each test uses a tenant of its own, so none sees another's
    entries."""
    folder = tmp_path_factory.mktemp("keyed")
    (folder / "api-keys").write_text("".join(f"{t}:{k}\n" for t, k in KEYS.items()))
    (folder / "admin-keys").write_text(f"ops:{OPERATOR_KEY}\n")
    server = ServeProcess(
        folder / "state",
        ollama_server.url,
        [
            "--api-keys-file",
            str(folder / "api-keys"),
            "--admin-keys-file",
            str(folder / "admin-keys"),
            "--verifier",
            "off",
        ],
    ).start()
    yield server
    if server.running():
        server.terminate()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SEMCACHE, *args],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def store(server: ServeProcess, tenant: str, prompt: str) -> str:
    """Ask as tenant through `semcache ask`; the stored entry's id."""
    done = run_cli("ask", prompt, "--target", server.target, "--api-key", KEYS[tenant], "--json")
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)
    assert response["stored"] is True
    return str(response["entryId"])


def test_list_get_and_delete_take_an_entry_from_listed_to_gone(
    keyed: ServeProcess, ollama_server: FakeOllama
) -> None:
    prompt = "Which river flows through Vienna?"
    entry_id = store(keyed, "lister", prompt)
    key = ["--target", keyed.target, "--api-key", KEYS["lister"]]

    listed = run_cli("list", *key)
    shown = run_cli("get", entry_id, *key)
    deleted = run_cli("delete", entry_id, *key)
    gone = run_cli("get", entry_id, *key)
    again = run_cli("delete", entry_id, *key)

    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:3] == ["ENTRY", "ID", "MODEL"]
    assert row.startswith(entry_id) and row.endswith(prompt) and " lister " in row
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.rstrip("\n").endswith(ollama_server.reply_for(prompt))
    assert any(line.split(None, 1) == ["prompt", prompt] for line in shown.stdout.splitlines())
    assert (deleted.returncode, deleted.stdout) == (0, f"deleted {entry_id}\n")
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
    assert again.returncode == 1 and f"no entry {entry_id} in reach" in again.stderr


def test_list_follows_the_pages_to_the_end_and_stops_at_the_limit(keyed: ServeProcess) -> None:
    stored = {store(keyed, "pager", f"Pager question number {n}?") for n in range(5)}
    key = ["--target", keyed.target, "--api-key", KEYS["pager"]]

    every = run_cli("list", *key, "--page-size", "2", "--json")
    some = run_cli("list", *key, "--page-size", "2", "--limit", "3")

    assert every.returncode == 0, every.stderr
    assert {json.loads(line)["entryId"] for line in every.stdout.splitlines()} == stored
    assert some.returncode == 0, some.stderr
    assert len(some.stdout.splitlines()) == 1 + 3  # the header and three entries
    assert "--limit 0 lists every entry" in some.stderr


def test_invalidate_counts_what_it_removed_in_words(keyed: ServeProcess) -> None:
    for n in range(3):
        store(keyed, "counter", f"Counter question number {n}?")
    key = ["--target", keyed.target, "--api-key", KEYS["counter"]]

    one = run_cli("invalidate", *key, "--prompt", "Counter question number 0?")
    two = run_cli("invalidate", *key, "--all")
    none = run_cli("invalidate", *key, "--all")

    assert one.stdout == "removed 1 entry\n", one.stderr
    assert two.stdout == "removed 2 entries\n", two.stderr
    assert none.stdout == "removed 0 entries\n", none.stderr


def test_a_call_without_a_key_tells_a_cli_user_to_pass_api_key(keyed: ServeProcess) -> None:
    asked = run_cli("ask", "Is a key needed?", "--target", keyed.target)
    listed = run_cli("list", "--target", keyed.target)

    for done in (asked, listed):
        assert done.returncode == 1
        assert "UNAUTHENTICATED" in done.stderr
        assert "--api-key" in done.stderr and "SEMCACHE_API_KEY" in done.stderr
        assert "authorization" not in done.stderr
    # The server speaks to every client, grpcurl's users too: it names the metadata.
    with grpc.insecure_channel(keyed.target) as channel:
        stub = pb_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as raised:
            stub.Ask(ask_request("Is a key needed?"), timeout=10)
    assert "authorization: Bearer <key>" in str(raised.value.details())


def test_an_operators_key_on_ask_is_told_it_is_one_and_what_ask_needs(
    keyed: ServeProcess,
) -> None:
    operator = ["--target", keyed.target, "--api-key", OPERATOR_KEY]
    store(keyed, "keyless", "Who may list this entry?")

    asked = run_cli("ask", "May an operator ask?", *operator)
    listed = run_cli("list", *operator, "--tenant", "keyless")

    assert asked.returncode == 1
    assert "PERMISSION_DENIED" in asked.stderr
    assert "operator's key" in asked.stderr and "tenant's key" in asked.stderr
    assert "not one this server accepts" not in asked.stderr
    assert listed.returncode == 0 and "Who may list this entry?" in listed.stdout
    # A key nobody gave out is still unknown, and said to be.
    unknown = run_cli("ask", "Who am I?", "--target", keyed.target, "--api-key", "x" * 32)
    assert "UNAUTHENTICATED: the API key is not one this server accepts" in unknown.stderr
