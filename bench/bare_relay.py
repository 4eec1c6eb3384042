"""The least a Python gRPC front can add: AskStream passed straight to Ollama, with no cache at all.

    python -m bench.bare_relay --port 50099 --ollama http://127.0.0.1:11434

No Redis, no embedding, no validation: one grpc.aio handler that calls the real
`ollama.AsyncClient` and forwards its tokens. bench.streaming puts it beside semcache, so the time
to first token that semcache adds can be split into what any Python gRPC hop costs on the machine
and what the cache itself costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import cast

import grpc
import ollama
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc


class BareRelay(pb_grpc.SemcacheServiceServicer):
    def __init__(self, client: ollama.AsyncClient) -> None:
        self._client = client

    async def AskStream(
        self, request: pb.AskStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncGenerator[pb.AskStreamResponse, None]:
        chunks = await self._client.chat(
            model=request.model,
            messages=[{"role": "user", "content": request.prompt}],
            stream=True,
        )
        chunks = cast(AsyncGenerator[ollama.ChatResponse, None], chunks)
        started = False
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if not started:  # the start must come before any text; no sooner is needed
                    started = True
                    yield pb.AskStreamResponse(start=pb.AskStreamStart(source=pb.SOURCE_LLM))
                if chunk.message.content:
                    yield pb.AskStreamResponse(delta=pb.AskStreamDelta(text=chunk.message.content))
        yield pb.AskStreamResponse(end=pb.AskStreamEnd())


async def serve(port: int, ollama_url: str) -> None:
    server = grpc.aio.server()
    pb_grpc.add_SemcacheServiceServicer_to_server(  # type: ignore[no-untyped-call]
        BareRelay(ollama.AsyncClient(host=ollama_url)), server
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ollama", required=True, help="the Ollama-protocol server's URL")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.ollama))


if __name__ == "__main__":
    main()
