"""TLS and mutual TLS from certificate files the test makes (trustme), and the rule that a server
without API keys listens on loopback only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import trustme
from click.testing import CliRunner
from semcache.v1 import semcache_pb2_grpc
from semcache_server import app, cli
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.settings import Settings
from semcache_server.testing.ollama_protocol import FakeOllama
from semcache_server.testing.redis_process import RedisProcess

from tests.conftest import service_settings
from tests.test_ask import ask


@dataclass
class Pki:
    server_ca: trustme.CA
    client_ca: trustme.CA
    directory: Path

    def write(self, name: str, blob: trustme.Blob) -> Path:
        path = self.directory / name
        blob.write_to_path(str(path))
        return path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(trustme.CA(), trustme.CA(), tmp_path)


async def serve_tls(
    pki: Pki,
    redis: RedisProcess,
    ollama: FakeOllama,
    embedder: LocalEmbedder,
    *,
    mutual: bool,
) -> app.Service:
    server_cert = pki.server_ca.issue_cert("127.0.0.1", "localhost")
    settings = service_settings(
        redis,
        ollama,
        tls_cert_file=pki.write("server.pem", server_cert.cert_chain_pems[0]),
        tls_key_file=pki.write("server.key", server_cert.private_key_pem),
        tls_client_ca_file=pki.write("clients-ca.pem", pki.client_ca.cert_pem) if mutual else None,
        verifier="off",
    )
    return await app.start(settings, embedder=embedder)


@pytest_asyncio.fixture
async def tls_service(
    pki: Pki, redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> AsyncIterator[app.Service]:
    service = await serve_tls(pki, redis_process, ollama, embedder, mutual=False)
    yield service
    await service.stop(grace=None)


@pytest_asyncio.fixture
async def mtls_service(
    pki: Pki, redis_process: RedisProcess, ollama: FakeOllama, embedder: LocalEmbedder
) -> AsyncIterator[app.Service]:
    service = await serve_tls(pki, redis_process, ollama, embedder, mutual=True)
    yield service
    await service.stop(grace=None)


async def call(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = semcache_pb2_grpc.SemcacheServiceStub(channel)  # type: ignore[no-untyped-call]
    try:
        await stub.Ask(ask("Is this channel private?"), timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    finally:
        await channel.close()
    return grpc.StatusCode.OK


@pytest.mark.asyncio
async def test_a_tls_server_answers_tls_clients_that_trust_its_ca_and_nobody_else(
    tls_service: app.Service, pki: Pki
) -> None:
    target = f"127.0.0.1:{tls_service.port}"
    trusted = grpc.ssl_channel_credentials(pki.server_ca.cert_pem.bytes())
    stranger = grpc.ssl_channel_credentials(trustme.CA().cert_pem.bytes())

    assert await call(grpc.aio.secure_channel(target, trusted)) == grpc.StatusCode.OK
    assert await call(grpc.aio.insecure_channel(target)) == grpc.StatusCode.UNAVAILABLE
    assert await call(grpc.aio.secure_channel(target, stranger)) == grpc.StatusCode.UNAVAILABLE


@pytest.mark.asyncio
async def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(
    mtls_service: app.Service, pki: Pki
) -> None:
    target = f"127.0.0.1:{mtls_service.port}"
    ca = pki.server_ca.cert_pem.bytes()
    client = pki.client_ca.issue_cert("orders-service")
    impostor = trustme.CA().issue_cert("orders-service")

    def credentials(cert: trustme.LeafCert | None) -> grpc.ChannelCredentials:
        if cert is None:
            return grpc.ssl_channel_credentials(ca)
        return grpc.ssl_channel_credentials(
            ca, cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes()
        )

    assert await call(grpc.aio.secure_channel(target, credentials(client))) == grpc.StatusCode.OK
    for refused in (None, impostor):
        code = await call(grpc.aio.secure_channel(target, credentials(refused)))
        assert code == grpc.StatusCode.UNAVAILABLE


def test_settings_refuse_to_listen_beyond_loopback_without_api_keys(tmp_path: Path) -> None:
    for host in ("0.0.0.0", "::", "10.1.2.3", "semcache.internal"):
        with pytest.raises(ValueError, match="--api-keys-file"):
            Settings(host=host)
    for host in ("127.0.0.1", "::1", "[::1]", "localhost"):
        Settings(host=host)
    Settings(host="0.0.0.0", insecure_listen=True)
    Settings(host="0.0.0.0", api_keys_file=tmp_path / "keys")
    with pytest.raises(ValueError, match="--tls-key-file"):
        Settings(tls_cert_file=tmp_path / "cert.pem")


def test_serve_on_all_interfaces_without_keys_exits_with_the_reason(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli.main,
        ["serve", "--host", "0.0.0.0", "--port", "0", "--state-dir", str(tmp_path)],
        env={"SEMCACHE_API_KEYS_FILE": None, "SEMCACHE_INSECURE_LISTEN": None},
    )
    assert result.exit_code == 2
    assert "--api-keys-file" in result.output and "--insecure-listen" in result.output
