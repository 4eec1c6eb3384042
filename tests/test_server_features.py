"""What generic gRPC tools rely on: the standard health service and server reflection."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import Running


@pytest.mark.asyncio
@pytest.mark.parametrize("service", ["", "semcache.v1.SemcacheService"])
async def test_health_reports_serving(semcache: Running, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(semcache.channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.asyncio
async def test_reflection_lists_and_describes_the_service(semcache: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(semcache.channel)

    async def reflect(
        request: reflection_pb2.ServerReflectionRequest,
    ) -> reflection_pb2.ServerReflectionResponse:
        call = stub.ServerReflectionInfo(iter([request]), timeout=5)
        async for response in call:
            return response
        raise AssertionError("no reflection response")

    listed = await reflect(reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {service.name for service in listed.list_services_response.service}
    described = await reflect(
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="semcache.v1.SemcacheService")
    )

    assert {"semcache.v1.SemcacheService", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


@pytest.mark.asyncio
async def test_an_unimplemented_method_is_unimplemented(semcache: Running) -> None:
    call = semcache.channel.unary_unary("/semcache.v1.SemcacheService/Nope")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"", timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
