"""The HTTP hop against the gRPC hop: exact hits through `semcache serve --http-port` (Ollama's
`/api/chat`, `"stream": false`) and through `Ask`, at 1 and 32 callers, in one run; and the
floor of each candidate HTTP library (aiohttp, Starlette on uvicorn) answering the same body
without a cache behind it, which is how the front's library was chosen.

    .venv/bin/python -m bench.http_hop [--requests 2000] [--libraries]

Each server runs in its own process; the load comes from this one (aiohttp's client for HTTP,
grpc.aio for gRPC), closed loop: each caller sends its next request when the last returned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import grpc
from semcache.v1 import semcache_pb2 as pb
from semcache.v1 import semcache_pb2_grpc as pb_grpc
from semcache_server.testing.redis_process import free_port

from bench.harness import (
    ROOT,
    fake_ollama,
    format_percentiles,
    percentiles,
    semcache_server,
    terminate,
)

MODEL = "llama3.2"
PROMPT = "What is the capital of France?"
CALLERS = (1, 32)
HTTP_CONNECTIONS = 32
GRPC_CHANNELS = 4

Call = Callable[[], Awaitable[None]]


async def closed_loop(call: Call, callers: int, requests: int) -> dict[str, float]:
    """requests calls spread over callers; latency percentiles and calls per second."""
    latencies: list[float] = []
    per_caller = max(1, requests // callers)

    async def caller() -> None:
        for _ in range(per_caller):
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    for _ in range(20):  # warm the connections
        await call()
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    elapsed = time.perf_counter() - started
    stats = percentiles(latencies)
    stats["per_second"] = len(latencies) / elapsed
    return stats


def http_call(session: aiohttp.ClientSession, url: str, expect_source: str | None) -> Call:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": False}

    async def call() -> None:
        async with session.post(url, json=body) as response:
            answer = await response.json()
            if response.status != 200 or not answer["done"]:
                raise RuntimeError(f"HTTP {response.status}: {answer}")
            if expect_source is not None and response.headers["X-Semcache-Source"] != "exact":
                raise RuntimeError(f"not an exact hit: {response.headers}")

    return call


def grpc_call(stubs: list[Any]) -> Call:
    request = pb.AskRequest(prompt=PROMPT, model=MODEL)
    turn = iter(range(1 << 62))

    async def call() -> None:
        stub = stubs[next(turn) % len(stubs)]
        response = await stub.Ask(request, timeout=30)
        if response.source != pb.SOURCE_EXACT:
            raise RuntimeError(f"not an exact hit: {pb.Source.Name(response.source)}")

    return call


async def measure(name: str, call: Call, requests: int, results: dict[str, Any]) -> None:
    for callers in CALLERS:
        stats = await closed_loop(call, callers, requests)
        label = f"{name}, {callers} caller{'s' if callers > 1 else ''}"
        results[label] = stats
        print(f"{format_percentiles(label, stats)}   {stats['per_second']:8.0f} /s", flush=True)


async def http_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=HTTP_CONNECTIONS))


async def hops(http_url: str, grpc_target: str, requests: int, results: dict[str, Any]) -> None:
    async with await http_session() as session:
        fill = http_call(session, f"{http_url}/api/chat", None)
        await fill()  # the miss that stores the answer both fronts then hit
        await measure("HTTP /api/chat exact hit", http_call(
            session, f"{http_url}/api/chat", "exact"
        ), requests, results)  # fmt: skip
    channels = [grpc.aio.insecure_channel(grpc_target) for _ in range(GRPC_CHANNELS)]
    try:
        stubs = [pb_grpc.SemcacheServiceStub(channel) for channel in channels]  # type: ignore[no-untyped-call]
        await measure("gRPC Ask exact hit", grpc_call(stubs), requests, results)
    finally:
        for channel in channels:
            await channel.close()


# --- the libraries' floors ------------------------------------------------------------------

ANSWER = {
    "model": MODEL,
    "created_at": "2026-01-01T00:00:00.000000Z",
    "message": {"role": "assistant", "content": "Echo: " + PROMPT},
    "done": True,
    "done_reason": "stop",
    "total_duration": 1,
    "load_duration": 0,
    "prompt_eval_count": 0,
    "prompt_eval_duration": 0,
    "eval_count": 0,
    "eval_duration": 0,
    "semcache": {"source": "exact", "similarity": 1.0},
}
HEADERS = {"X-Semcache-Source": "exact"}


def serve_aiohttp(port: int) -> None:
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        assert body["model"] == MODEL
        return web.json_response(ANSWER, headers=HEADERS)

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_starlette(port: int) -> None:
    """Needs `pip install starlette uvicorn` (not in any extra: only this comparison uses them)."""
    uvicorn: Any = importlib.import_module("uvicorn")
    applications: Any = importlib.import_module("starlette.applications")
    responses: Any = importlib.import_module("starlette.responses")
    routing: Any = importlib.import_module("starlette.routing")

    async def chat(request: Any) -> Any:
        body = await request.json()
        assert body["model"] == MODEL
        return responses.JSONResponse(ANSWER, headers=HEADERS)

    app = applications.Starlette(routes=[routing.Route("/api/chat", chat, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextlib.contextmanager
def floor_server(library: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.http_hop", "--serve", library, "--port", str(port)],
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            request = urllib.request.Request(
                f"{url}/api/chat", data=json.dumps({"model": MODEL}).encode(), method="POST"
            )
            with urllib.request.urlopen(request, timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"the {library} server did not start") from None
            time.sleep(0.1)
    try:
        yield url
    finally:
        terminate(process, within=10)


async def floors(requests: int, results: dict[str, Any]) -> None:
    for library in ("aiohttp", "starlette"):
        with floor_server(library) as url:
            async with await http_session() as session:
                call = http_call(session, f"{url}/api/chat", None)
                await measure(f"floor: {library}", call, requests, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="calls per round")
    parser.add_argument(
        "--libraries", action="store_true", help="also the floors of aiohttp and Starlette"
    )
    parser.add_argument("--serve", choices=("aiohttp", "starlette"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        (serve_aiohttp if args.serve == "aiohttp" else serve_starlette)(args.port)
        return
    results: dict[str, Any] = {}
    with fake_ollama() as ollama:
        http_port = free_port()
        with semcache_server(ollama.url, "--http-port", str(http_port)) as semcache:
            asyncio.run(
                hops(f"http://127.0.0.1:{http_port}", semcache.target, args.requests, results)
            )
    if args.libraries:
        asyncio.run(floors(args.requests, results))


if __name__ == "__main__":
    main()
