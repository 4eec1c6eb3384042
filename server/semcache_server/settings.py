"""The one source of a running service's settings.

Each setting is written once here: its default, its flag, its environment variable and its help.
`semcache serve` derives its options from these fields (`semcache_server.cli`), and the
composition root (`semcache_server.app`) hands each part the settings it needs.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semcache_server.core.domain import Speculation
from semcache_server.core.validation import CONTEXT_TIMES_PROMPT


@dataclass(frozen=True)
class Option:
    """How a setting appears on the command line."""

    flag: str
    env: str
    help: str
    shown_default: str | None = None
    """What --help shows as the default, when the value itself would mislead."""
    choices: tuple[str, ...] | None = None


def setting(default: Any, *, flag: str, env: str, help: str, **more: Any) -> Any:
    """A field of Settings with its command-line option; a callable default is a factory."""
    metadata = {"option": Option(flag, env, help, **more)}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "semcache"


@dataclass(frozen=True)
class Settings:
    host: str = setting(
        "127.0.0.1", flag="--host", env="SEMCACHE_HOST", help="Address to listen on."
    )
    port: int = setting(
        50051, flag="--port", env="SEMCACHE_PORT", help="Port to listen on; 0 picks a free one."
    )
    api_keys_file: Path | None = setting(
        None,
        flag="--api-keys-file",
        env="SEMCACHE_API_KEYS_FILE",
        help="API keys, one 'tenant:key' or 'tenant:sha256:<hex>' a line; calls then need "
        "'authorization: Bearer <key>' and each tenant sees only its own entries. Unset: no "
        "authentication, one shared tenant, loopback only.",
    )
    admin_keys_file: Path | None = setting(
        None,
        flag="--admin-keys-file",
        env="SEMCACHE_ADMIN_KEYS_FILE",
        help="Operators' keys ('name:key' or 'name:sha256:<hex>' a line) for CacheAdminService: "
        "every tenant's entries. Tenants' own keys reach only their own entries there.",
    )
    shared_tenants: str = setting(
        "",
        flag="--shared-tenants",
        env="SEMCACHE_SHARED_TENANTS",
        help="Comma-separated tenants that opt into one shared namespace: they reuse each other's "
        "answers, but see who asked what only for their own entries.",
    )
    insecure_listen: bool = setting(
        False,
        flag="--insecure-listen",
        env="SEMCACHE_INSECURE_LISTEN",
        help="Allow listening beyond loopback without --api-keys-file: anyone who can reach the "
        "port reads every cached answer.",
    )
    tls_cert_file: Path | None = setting(
        None,
        flag="--tls-cert-file",
        env="SEMCACHE_TLS_CERT_FILE",
        help="PEM certificate chain of the server; with --tls-key-file the port speaks TLS only.",
    )
    tls_key_file: Path | None = setting(
        None,
        flag="--tls-key-file",
        env="SEMCACHE_TLS_KEY_FILE",
        help="PEM private key of --tls-cert-file.",
    )
    tls_client_ca_file: Path | None = setting(
        None,
        flag="--tls-client-ca-file",
        env="SEMCACHE_TLS_CLIENT_CA_FILE",
        help="PEM CA certificates: clients must present a certificate they signed (mutual TLS).",
    )
    redis_url: str | None = setting(
        None,
        flag="--redis-url",
        env="REDIS_URL",
        help="Redis to store the cache in, e.g. redis://localhost:6379/0. "
        "Unset: an embedded Redis with its data in the state dir.",
    )
    state_dir: Path = setting(
        default_state_dir,
        flag="--state-dir",
        env="SEMCACHE_STATE_DIR",
        help="Where the embedded Redis keeps its data and index snapshots are written; give "
        "each replica its own.",
        shown_default="$XDG_STATE_HOME/semcache",
    )
    ollama_host: str | None = setting(
        None,
        flag="--ollama-host",
        env="OLLAMA_HOST",
        help="Ollama's address. Unset: http://127.0.0.1:11434.",
    )
    embedder: str = setting(
        "local",
        flag="--embedder",
        env="SEMCACHE_EMBEDDER",
        help="local: all-MiniLM-L6-v2 in-process; ollama: an Ollama embedding model.",
        choices=("local", "ollama"),
    )
    ollama_embed_model: str = setting(
        "nomic-embed-text",
        flag="--ollama-embed-model",
        env="SEMCACHE_OLLAMA_EMBED_MODEL",
        help="The model of the ollama embedder.",
    )
    verifier: str = setting(
        "local",
        flag="--verifier",
        env="SEMCACHE_VERIFIER",
        help="local: the pair verifier (a MiniLM cross-encoder in-process) decides semantic hits "
        "in the embedder's gray zone; off: the lexical calibrated policy instead.",
        choices=("local", "off"),
    )
    judge_model: str | None = setting(
        None,
        flag="--judge-model",
        env="SEMCACHE_JUDGE_MODEL",
        help="An Ollama model asked, where the verifier is unsure, whether a cached answer fits. "
        "Unset: no judge.",
    )
    judge_timeout: float = setting(
        2.0,
        flag="--judge-timeout",
        env="SEMCACHE_JUDGE_TIMEOUT",
        help="Seconds the judge may take; a late or failed judge means a miss.",
    )
    similarity_threshold: float | None = setting(
        None,
        flag="--similarity-threshold",
        env="SEMCACHE_SIMILARITY_THRESHOLD",
        help="Minimum cosine similarity for a semantic hit, in [0, 1]; 0 means exact matches "
        "only. Unset: the embedder's calibrated default.",
    )
    max_semantic_temperature: float = setting(
        1.0,
        flag="--max-semantic-temperature",
        env="SEMCACHE_MAX_SEMANTIC_TEMPERATURE",
        help="Requests with a higher temperature skip the semantic layer (they ask for variety).",
    )
    speculative_llm: Speculation = setting(
        Speculation.STREAMS,
        flag="--speculative-llm",
        env="SEMCACHE_SPECULATIVE_LLM",
        help="Start the LLM call while the semantic layer decides, for streams, for all calls or "
        "off: a miss's first token comes sooner, and a semantic hit cancels an LLM call that has "
        "barely started.",
        choices=tuple(mode.value for mode in Speculation),
    )
    ttl_seconds: float = setting(
        0.0, flag="--ttl", env="SEMCACHE_TTL_SECONDS", help="Seconds an entry lives; 0 keeps it."
    )
    index_graph_rows: int = setting(
        10_000,
        flag="--index-graph-rows",
        env="SEMCACHE_INDEX_GRAPH_ROWS",
        help="A partition with this many entries is searched by an HNSW graph (usearch); "
        "smaller ones exactly.",
    )
    snapshot_interval: float = setting(
        300.0,
        flag="--snapshot-interval",
        env="SEMCACHE_SNAPSHOT_INTERVAL",
        help="Seconds between index snapshots (written only when the index changed, and at "
        "shutdown); 0: at shutdown only.",
    )
    feed_max_len: int = setting(
        1_000_000,
        flag="--feed-max-len",
        env="SEMCACHE_FEED_MAX_LEN",
        help="Changes the Redis change feed keeps; a replica that falls further behind rebuilds "
        "its index.",
    )
    workers: int = setting(
        1,
        flag="--workers",
        env="SEMCACHE_WORKERS",
        help="Server processes on the one port, each a replica with its own index and model "
        "(memory times N; state in <state-dir>/worker-<i>): one process serves from one core.",
    )
    share_port: bool = setting(
        False,
        flag="--share-port",
        env="SEMCACHE_SHARE_PORT",
        help="Listen beside other processes of this user on the port (SO_REUSEPORT; the kernel "
        "splits connections between them). --workers sets it for its workers; without it a port "
        "in use is refused.",
    )
    max_calls: int = setting(
        4096,
        flag="--max-calls",
        env="SEMCACHE_MAX_CALLS",
        help="Calls in progress at once, of every kind; past it gRPC refuses a call with "
        "RESOURCE_EXHAUSTED before it starts.",
    )
    max_llm_calls: int = setting(
        256,
        flag="--max-llm-calls",
        env="SEMCACHE_MAX_LLM_CALLS",
        help="LLM calls in flight at once (identical questions share one call); Ollama queues "
        "past its own OLLAMA_NUM_PARALLEL.",
    )
    max_llm_queue: int = setting(
        1024,
        flag="--max-llm-queue",
        env="SEMCACHE_MAX_LLM_QUEUE",
        help="Calls that may wait for an LLM slot; past that a miss gets RESOURCE_EXHAUSTED "
        "at once.",
    )
    max_embedding_queue: int = setting(
        256,
        flag="--max-embedding-queue",
        env="SEMCACHE_MAX_EMBEDDING_QUEUE",
        help="Prompts that may wait to be embedded; past that a semantic lookup gets "
        "RESOURCE_EXHAUSTED at once. Exact hits never wait.",
    )
    max_prompt_chars: int = setting(
        32_000,
        flag="--max-prompt-chars",
        env="SEMCACHE_MAX_PROMPT_CHARS",
        help="Longer prompts are rejected; the system prompt and the history together may hold "
        f"{CONTEXT_TIMES_PROMPT} times as many characters.",
    )
    replay_chunk_chars: int = setting(
        64,
        flag="--replay-chunk-chars",
        env="SEMCACHE_REPLAY_CHUNK_CHARS",
        help="Characters a message when a hit is streamed.",
    )
    hot_entries: int = setting(
        10_000,
        flag="--hot-entries",
        env="SEMCACHE_HOT_ENTRIES",
        help="Entries just served that are kept in memory and served again without Redis; "
        "changes on any replica reach them through the change feed. 0: always ask Redis.",
    )
    redis_timeout: float = setting(
        0.5,
        flag="--redis-timeout",
        env="SEMCACHE_REDIS_TIMEOUT",
        help="Seconds a Redis call may take before the cache layers count it as a miss.",
    )
    ollama_connect_timeout: float = setting(
        2.0,
        flag="--ollama-connect-timeout",
        env="SEMCACHE_OLLAMA_CONNECT_TIMEOUT",
        help="Seconds to connect to Ollama before a miss is UNAVAILABLE.",
    )
    grace_seconds: float = setting(
        5.0,
        flag="--grace",
        env="SEMCACHE_GRACE_SECONDS",
        help="Seconds in-flight calls get to finish on SIGTERM.",
    )
    max_generation_seconds: float = setting(
        300.0,
        flag="--max-generation-seconds",
        env="SEMCACHE_MAX_GENERATION_SECONDS",
        help="Seconds an LLM call may take, whatever the caller's deadline (even none); past it "
        "every caller of that call gets DEADLINE_EXCEEDED and nothing is stored.",
    )
    http_port: int = setting(
        0,
        flag="--http-port",
        env="SEMCACHE_HTTP_PORT",
        help="Also serve Ollama's HTTP API and OpenAI's on this port (on --host, with the same "
        "keys and TLS), so Ollama and OpenAI clients use the cache by changing their base URL; "
        "11435 is the documented choice. 0: gRPC only.",
    )
    metrics_port: int = setting(
        0,
        flag="--metrics-port",
        env="SEMCACHE_METRICS_PORT",
        help="Serve Prometheus metrics over HTTP on this port (GET /metrics); 0: no metrics "
        "endpoint.",
    )
    metrics_host: str | None = setting(
        None,
        flag="--metrics-host",
        env="SEMCACHE_METRICS_HOST",
        help="Address of the metrics endpoint. Unset: --host.",
    )
    log_format: str = setting(
        "text",
        flag="--log-format",
        env="SEMCACHE_LOG_FORMAT",
        help="text: lines for people; json: one JSON object a line, for log collectors.",
        choices=("text", "json"),
    )
    log_prompts: bool = setting(
        False,
        flag="--log-prompts",
        env="SEMCACHE_LOG_PROMPTS",
        help="Write prompts (and matched prompts) into the request log lines; off, no prompt is "
        "ever logged.",
    )
    log_level: str = setting(
        "INFO",
        flag="--log-level",
        env="SEMCACHE_LOG_LEVEL",
        help="How much the server logs.",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    )

    def __post_init__(self) -> None:
        threshold = self.similarity_threshold
        if threshold is not None and not 0 <= threshold <= 1:  # NaN fails both comparisons
            raise ValueError(f"--similarity-threshold must be in [0, 1], got {threshold}")
        if not 0 <= self.http_port <= 65535:
            raise ValueError(f"--http-port must be in [0, 65535], got {self.http_port}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"--metrics-port must be in [0, 65535], got {self.metrics_port}")
        if not 0 < self.max_generation_seconds < float("inf"):  # NaN fails too
            raise ValueError(
                f"--max-generation-seconds must be a positive number, got "
                f"{self.max_generation_seconds}"
            )
        if self.api_keys_file is None and not self.insecure_listen and not is_loopback(self.host):
            raise ValueError(
                f"--host {self.host} without --api-keys-file would let anyone who reaches the "
                "port read every cached answer: give --api-keys-file, or --insecure-listen to "
                "accept that"
            )
        if self.workers < 1:
            raise ValueError(f"--workers must be 1 or more, got {self.workers}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both --tls-cert-file and --tls-key-file")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("--tls-client-ca-file (mutual TLS) needs --tls-cert-file")

    @property
    def shared_tenant_names(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.shared_tenants.split(",") if name.strip())


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach host; "0.0.0.0", "::" and names are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def option_of(name: str) -> Option:
    """The command-line option of a setting, by field name."""
    option: Option = Settings.__dataclass_fields__[name].metadata["option"]
    return option
