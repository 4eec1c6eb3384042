"""The gRPC server: the semcache service, the standard health service and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from semcache.v1 import semcache_pb2, semcache_pb2_grpc

from semcache_server.core.chain import CacheChain
from semcache_server.edge.servicer import SemcacheServicer

SERVICE_NAME = semcache_pb2.DESCRIPTOR.services_by_name["SemcacheService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""gRPC's own default, set on purpose: a prompt, its system prompt and history fit many times."""
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""A cached answer is replayed whole in a unary response."""
MAX_STREAMS_PER_CONNECTION = 1024
"""HTTP/2 streams one client connection may open at once; a pool of clients is not limited."""
PENDING_CALLS = 100_000
"""Calls gRPC core may hold before the server picks them up (see the options below)."""


class GrpcServer:
    """A grpc.aio server carrying the semcache service, health and reflection, not yet started.

    max_calls bounds the calls in progress over all connections: past it gRPC refuses a call with
    RESOURCE_EXHAUSTED before any handler runs, the last line of defence behind the cache's own
    admission control (which sheds misses long before and keeps serving exact hits).
    """

    def __init__(self, chain: CacheChain, host: str, port: int, max_calls: int) -> None:
        self.server = grpc.aio.server(
            maximum_concurrent_rpcs=max_calls,
            options=[
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
                ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
                # gRPC core queues calls the Python server has not picked up yet and, past its
                # own limits (~1,000 soft, 3,000 hard), drops them as CANCELLED before any
                # handler runs. Raised far past max_calls, a burst reaches the limit above and
                # the cache's admission control, which refuse with RESOURCE_EXHAUSTED.
                ("grpc.server.max_pending_requests", PENDING_CALLS),
                ("grpc.server.max_pending_requests_hard_limit", PENDING_CALLS),
            ],
        )
        semcache_pb2_grpc.add_SemcacheServiceServicer_to_server(  # type: ignore[no-untyped-call]
            SemcacheServicer(chain), self.server
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port: int = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}")

    async def start(self) -> None:
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        """Health says NOT_SERVING first, so balancers drain this replica, then calls finish."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
