"""What `semcache serve` writes, read whole once the process has exited: the start-up line names
the transport, `--verifier local` without its weights says so once, gRPC core's own lines stay
out of the log or come out in its format, and each worker of `--workers` names itself."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.adapters.verifiers import pair
from semcache_server.core.policy import shipped_policy_json, verified_policy_file_name
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess
from semcache_server.testing.serve_process import ServeProcess

from tests.conftest import service_settings, start_service
from tests.test_workers import wait_until_serving

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: "
)
"""The start of every line of the text log (logs.TEXT_FORMAT)."""
GRPC_CORE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\]")
"""gRPC core's own format: `I1208 01:59:31.404788 8744 ssl_transport_security.cc:2563] ...`."""


def served_over_tls(
    folder: Path, ollama: FakeOllama, extra_args: Sequence[str] = (), **environment: str
) -> str:
    """Start `semcache serve` over TLS, call it once in plaintext (a failed handshake) and once
    over TLS, stop it, and return everything it wrote."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    cert.private_key_pem.write_to_path(str(folder / "server.key"))
    trusted = grpc.ssl_channel_credentials(ca.cert_pem.bytes())
    server = ServeProcess(
        folder / "state",
        ollama.url,
        [
            "--tls-cert-file",
            str(folder / "server.pem"),
            "--tls-key-file",
            str(folder / "server.key"),
            *extra_args,
        ],
        environment=environment,
        credentials=trusted,
    ).start()
    try:
        check = health_pb2.HealthCheckRequest()
        with grpc.insecure_channel(server.target) as plaintext, pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(plaintext).Check(check, timeout=10)
        with grpc.secure_channel(server.target, trusted) as channel:
            health_pb2_grpc.HealthStub(channel).Check(check, timeout=10)
    finally:
        code, output = server.terminate()
    assert code == 0, output
    return output


@pytest.fixture(scope="module")
def tls_log(tmp_path_factory: pytest.TempPathFactory, ollama_server: FakeOllama) -> str:
    """The text log of a TLS server with the default --verifier local."""
    return served_over_tls(tmp_path_factory.mktemp("tls-log"), ollama_server)


def test_the_startup_line_says_the_port_speaks_tls(tls_log: str) -> None:
    started = [line for line in tls_log.splitlines() if "semcache serving on" in line]
    assert len(started) == 1 and " over TLS (" in started[0]


@pytest.mark.asyncio
async def test_the_startup_line_says_a_port_without_certificates_speaks_plaintext(
    redis_process: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="semcache_server.app"):
        running = await start_service(
            service_settings(redis_process, ollama, verifier="off"), embedder
        )
    await running.stop()
    started = [r.getMessage() for r in caplog.records if "serving on" in r.getMessage()]
    assert len(started) == 1 and f"{running.target} over plaintext (" in started[0]


def test_verifier_local_without_its_weights_says_once_that_the_lexical_policy_decides(
    tls_log: str,
) -> None:
    from semcache_server.adapters.embedders.local import MODEL_ID

    if pair.shipped() and shipped_policy_json(verified_policy_file_name(MODEL_ID, pair.MODEL_ID)):
        pytest.skip("this install ships the pair verifier: --verifier local uses it")
    said = [line for line in tls_log.splitlines() if "--verifier local" in line]
    assert len(said) == 1, tls_log
    assert " WARNING " in said[0] and "so the lexical policy decides semantic hits" in said[0]


def test_grpc_cores_own_lines_stay_out_of_the_log(tls_log: str) -> None:
    assert [line for line in tls_log.splitlines() if GRPC_CORE_LINE.match(line)] == []
    assert [line for line in tls_log.splitlines() if not TEXT_LINE.match(line)] == []


def test_grpc_core_lines_asked_for_come_out_as_log_lines_in_the_logs_format(
    tmp_path: Path, ollama_server: FakeOllama
) -> None:
    output = served_over_tls(
        tmp_path, ollama_server, ["--log-format", "json"], GRPC_VERBOSITY="INFO"
    )

    lines = [json.loads(line) for line in output.splitlines()]  # each one a JSON object
    handshakes = [
        line
        for line in lines
        if line.get("logger") == "grpc.core" and "Handshake failed" in line.get("message", "")
    ]
    assert handshakes and handshakes[0]["level"] == "INFO"


def test_each_workers_lines_name_the_worker(tmp_path: Path, ollama_server: FakeOllama) -> None:
    server = ServeProcess(
        tmp_path / "state", ollama_server.url, ["--workers", "2", "--verifier", "off"]
    ).start()
    try:
        wait_until_serving(server, 2)
    finally:
        code, output = server.terminate()

    assert code == 0, output
    started = [line for line in output.splitlines() if "semcache serving on" in line]
    named = sorted(re.findall(r" (worker-\d+) semcache_server\.app: ", "\n".join(started)))
    assert named == ["worker-0", "worker-1"], started
    stopping = [line for line in output.splitlines() if "shutting down" in line]
    assert len(stopping) == 2 and all(" worker-" in line for line in stopping)
