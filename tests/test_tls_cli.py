"""The CLI against a mutual-TLS `semcache serve`: every command that calls a server reaches it with
the client's TLS options (or their variables, as the Docker and Compose health checks read
them), and a call that cannot connect is told which options to pass or leave out."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
import yaml
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.serve_process import SEMCACHE, ServeProcess, clean_environment

from tests.conftest import Running
from tests.test_server_log_lines import GRPC_CORE_LINE

ROOT = Path(__file__).resolve().parent.parent
IMAGE_TARGET = "127.0.0.1:50051"
"""The address the image's and Compose's health checks name, replaced by the test server's."""


@dataclass(frozen=True)
class Files:
    """PEM files: the server's CA, the server's certificate, the clients' CA and a client's."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path

    @property
    def client_options(self) -> list[str]:
        return [
            "--tls-ca-file",
            str(self.ca),
            "--tls-client-cert-file",
            str(self.client_cert),
            "--tls-client-key-file",
            str(self.client_key),
        ]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    folder = tmp_path_factory.mktemp("pki")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("127.0.0.1", "localhost")
    client = client_ca.issue_cert("orders-service")
    written = {
        "ca": server_ca.cert_pem,
        "server_cert": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "client_ca": client_ca.cert_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
    }
    for name, blob in written.items():
        blob.write_to_path(str(folder / f"{name}.pem"))
    return Files(**{name: folder / f"{name}.pem" for name in written})


@pytest.fixture(scope="module")
def mtls(
    files: Files, tmp_path_factory: pytest.TempPathFactory, ollama_server: FakeOllama
) -> Iterator[ServeProcess]:
    credentials = grpc.ssl_channel_credentials(
        files.ca.read_bytes(), files.client_key.read_bytes(), files.client_cert.read_bytes()
    )
    server = ServeProcess(
        tmp_path_factory.mktemp("mtls") / "state",
        ollama_server.url,
        [
            "--tls-cert-file",
            str(files.server_cert),
            "--tls-key-file",
            str(files.server_key),
            "--tls-client-ca-file",
            str(files.client_ca),
            "--verifier",
            "off",
        ],
        credentials=credentials,
    ).start()
    yield server
    if server.running():
        server.terminate()


def run_cli(
    args: list[str], environment: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SEMCACHE, *args],
        env=clean_environment() | dict(environment or {}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_command_that_calls_a_server_reaches_mutual_tls_with_the_client_options(
    mtls: ServeProcess, files: Files
) -> None:
    reach = ["--target", mtls.target, *files.client_options]
    asked = run_cli(["ask", "Which command speaks mutual TLS?", "--json", *reach])
    assert asked.returncode == 0, asked.stderr
    entry_id = json.loads(asked.stdout)["entryId"]

    calls = {
        "health": ["health", *reach],
        "stats": ["stats", *reach],
        "list": ["list", *reach],
        "get": ["get", entry_id, *reach],
        "delete": ["delete", entry_id, *reach],
        "invalidate": ["invalidate", "--all", *reach],
    }
    failed = {
        name: done.stderr for name, args in calls.items() if (done := run_cli(args)).returncode != 0
    }
    assert failed == {}


def test_a_plaintext_call_to_a_tls_server_is_told_to_pass_the_tls_options(
    mtls: ServeProcess,
) -> None:
    done = run_cli(["ask", "Is this call encrypted?", "--target", mtls.target])

    assert done.returncode == 1
    assert "Socket closed" in done.stderr  # what gRPC says, kept
    advice = done.stderr.splitlines()[-1]
    assert "speaks TLS and this call was plaintext" in advice
    assert "--tls-ca-file" in advice and "--tls-client-cert-file" in advice


def test_a_call_without_a_client_certificate_is_told_to_give_one(
    mtls: ServeProcess, files: Files
) -> None:
    done = run_cli(["health", "--target", mtls.target, "--tls-ca-file", str(files.ca)])

    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"{mtls.target} wants a client certificate (mutual TLS): pass --tls-client-cert-file "
        "and --tls-client-key-file"
    )


def test_a_server_certificate_from_another_ca_or_for_another_name_is_named_as_such(
    mtls: ServeProcess, files: Files
) -> None:
    wrong_ca = [*files.client_options]
    wrong_ca[1] = str(files.client_ca)
    stranger = run_cli(["health", "--target", mtls.target, *wrong_ca])
    right = run_cli(["health", "--target", mtls.target, *files.client_options])
    misnamed = run_cli(
        [
            "health",
            "--target",
            mtls.target,
            *files.client_options,
            "--tls-server-name",
            "semcache.internal",
        ]
    )
    by_name = run_cli(
        ["health", "--target", mtls.target, *files.client_options, "--tls-server-name", "localhost"]
    )

    assert stranger.returncode == 1
    assert "is not signed by a CA in --tls-ca-file" in stranger.stderr
    # gRPC core's own line about the failed handshake stays out of what a person reads.
    assert [line for line in stranger.stderr.splitlines() if GRPC_CORE_LINE.match(line)] == []
    assert right.returncode == 0
    assert misnamed.returncode == 1 and "--tls-server-name" in misnamed.stderr.splitlines()[-1]
    assert by_name.returncode == 0


@pytest.mark.asyncio
async def test_a_tls_call_to_a_plaintext_server_is_told_to_leave_the_tls_options_out(
    semcache: Running, files: Files
) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [SEMCACHE, "health", "--target", semcache.target, "--tls-ca-file", str(files.ca)],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 1
    advice = done.stderr.splitlines()[-1]
    assert advice.startswith(f"{semcache.target} does not speak TLS")
    assert "leave out --tls and --tls-ca-file" in advice


def image_health_check() -> list[str]:
    """The Dockerfile's HEALTHCHECK command (a shell form), as words."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = re.search(r"^HEALTHCHECK\s.*?\bCMD\s+(.+)$", text, re.MULTILINE)
    assert found is not None, "no HEALTHCHECK ... CMD line in the Dockerfile"
    return shlex.split(found.group(1))


def compose_health_checks() -> dict[str, list[str]]:
    """Each semcache replica's health check in compose.yaml, without its CMD."""
    compose: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    checks = {}
    for name, service in compose["services"].items():
        test = (service.get("healthcheck") or {}).get("test") or []
        if "semcache" in test:
            assert test[0] == "CMD", name
            checks[name] = list(test[1:])
    assert checks, "no semcache health check in compose.yaml"
    return checks


def test_the_image_and_compose_health_checks_pass_over_mutual_tls_with_the_documented_variables(
    mtls: ServeProcess, files: Files
) -> None:
    # As in the container: the server's own variables are set beside the health check's.
    server_side = {
        "SEMCACHE_TLS_CERT_FILE": str(files.server_cert),
        "SEMCACHE_TLS_KEY_FILE": str(files.server_key),
        "SEMCACHE_TLS_CLIENT_CA_FILE": str(files.client_ca),
    }
    client_side = {
        "SEMCACHE_TLS_CA_FILE": str(files.ca),
        "SEMCACHE_TLS_CLIENT_CERT_FILE": str(files.client_cert),
        "SEMCACHE_TLS_CLIENT_KEY_FILE": str(files.client_key),
        "SEMCACHE_TLS_SERVER_NAME": "localhost",
    }
    readme = (ROOT / "README.md").read_text()
    assert not [name for name in client_side if f"`{name}`" not in readme]

    checks = {"Dockerfile": image_health_check(), **compose_health_checks()}
    for name, words in checks.items():
        assert words[0] == "semcache" and IMAGE_TARGET in words, (name, words)
        args = [mtls.target if word == IMAGE_TARGET else word for word in words[1:]]
        without = run_cli(args, server_side)
        with_them = run_cli(args, server_side | client_side)

        assert without.returncode == 1, name
        assert "speaks TLS" in without.stderr, (name, without.stderr)
        assert with_them.returncode == 0, (name, with_them.stderr)
        assert with_them.stdout == f"{mtls.target}: SERVING\n", name
