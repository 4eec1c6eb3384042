"""The gRPC server: the semcache service, the standard health service and reflection."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from semcache.v1 import semcache_pb2

from semcache_server.edge.auth import Authenticator
from semcache_server.edge.calls import Calls
from semcache_server.edge.grpc.admin import AdminServicer, add_admin_service
from semcache_server.edge.grpc.observing import CallObserving
from semcache_server.edge.grpc.servicer import SemcacheServicer, add_semcache_service

SERVICE_NAME = semcache_pb2.DESCRIPTOR.services_by_name["SemcacheService"].full_name
ADMIN_SERVICE_NAME = semcache_pb2.DESCRIPTOR.services_by_name["CacheAdminService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
STORAGE_HEALTH_NAME = f"{SERVICE_NAME}.storage"
"""A health name of its own for Redis: NOT_SERVING while the cache cannot reach it. "" and the
service stay SERVING meanwhile (misses are still answered by the LLM), so balancers keep sending
calls; monitoring watches this one."""


MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""gRPC's own default, set on purpose: a prompt, its system prompt and history fit many times."""
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""A cached answer is replayed whole in a unary response."""
STREAMS_PER_CONNECTION_OVER_MAX_CALLS = 2
"""HTTP/2 streams one connection may open, as a multiple of --max-calls. Past its stream limit
a connection's new calls are refused by the transport (REFUSED_STREAM: the caller sees
UNAVAILABLE, and the server never hears of them); kept above --max-calls, a burst on one
connection meets max_calls and admission control instead, whose refusals are RESOURCE_EXHAUSTED
and counted."""
PENDING_CALLS = 100_000
"""Calls gRPC core may hold before the server picks them up (see the options below)."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of the server's TLS; with client_ca_file, clients must present a certificate
    that one of its CAs signed (mutual TLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        client_ca = self.client_ca_file.read_bytes() if self.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


class PortInUse(Exception):
    """Something already listens on the address the server was told to listen on."""


def refuse_a_taken_port(host: str, port: int) -> None:
    """Raise PortInUse when a socket already listens on host:port (port 0 is never taken).

    gRPC would either listen beside it (SO_REUSEPORT: the kernel then splits connections between
    two servers, one perhaps without keys) or fail with a traceback and a log line of its own. A
    probe bound as gRPC binds (SO_REUSEADDR: a closed connection in TIME_WAIT does not count) but
    without SO_REUSEPORT is refused by Linux exactly when a socket listens there.
    """
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return  # gRPC's own bind says what is wrong with the host
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise PortInUse(f"{host}:{port} is already in use by another process") from None


class GrpcServer:
    """A grpc.aio server carrying the semcache service, health and reflection, not yet started.

    max_calls bounds the calls in progress over all connections: past it gRPC refuses a call with
    RESOURCE_EXHAUSTED before any handler runs, the last line of defence behind the cache's own
    admission control (which sheds misses long before and keeps serving exact hits).
    """

    def __init__(
        self,
        calls: Calls,
        host: str,
        port: int,
        max_calls: int,
        authenticator: Authenticator,
        tls: grpc.ServerCredentials | None = None,
        admin: AdminServicer | None = None,
        share_port: bool = False,
    ) -> None:
        """calls: the pipeline; each call of the semcache.v1 services opens a record in it, for
        the metrics and the request log (calls refused by max_calls never reach it).
        authenticator: the caller of Ask and AskStream. share_port: let other processes of this
        user listen on the port too (--workers); otherwise a port in use is refused."""
        self.server = grpc.aio.server(
            interceptors=[CallObserving(calls)],
            maximum_concurrent_rpcs=max_calls,
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
                (
                    "grpc.max_concurrent_streams",
                    STREAMS_PER_CONNECTION_OVER_MAX_CALLS * max_calls,
                ),
                # On by default in gRPC on Linux: a second server would silently take half
                # of this one's connections.
                ("grpc.so_reuseport", 1 if share_port else 0),
                # gRPC core queues calls the Python server has not picked up yet and, past its
                # own limits (~1,000 soft, 3,000 hard), drops them as CANCELLED before any
                # handler runs. Raised far past max_calls, a burst reaches the limit above and
                # the cache's admission control, which refuse with RESOURCE_EXHAUSTED.
                ("grpc.server.max_pending_requests", PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS),
            ],
        )
        add_semcache_service(SemcacheServicer(calls, calls.naming(authenticator)), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        services = [SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME]
        if admin is not None:
            add_admin_service(admin, self.server)
            services.append(ADMIN_SERVICE_NAME)
        reflection.enable_server_reflection(services, self.server)
        address = f"{host}:{port}"
        try:
            self.port: int = (
                self.server.add_insecure_port(address)
                if tls is None
                else self.server.add_secure_port(address, tls)
            )
        except RuntimeError:  # "Failed to bind"; gRPC has logged why
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}")

    async def start(self) -> None:
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def set_storage_health(self, reachable: bool) -> None:
        """Report whether the cache can reach Redis under STORAGE_HEALTH_NAME."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if reachable
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(STORAGE_HEALTH_NAME, status)

    async def stop(self, grace: float | None) -> None:
        """Health says NOT_SERVING first, so balancers drain this replica, then calls finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
