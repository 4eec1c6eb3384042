"""Settings of a running service, filled from flags and environment variables by the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from semcache_server.domain import Speculation


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "semcache"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 50051
    redis_url: str | None = None
    """None: the embedded Redis in state_dir."""
    state_dir: Path = field(default_factory=default_state_dir)
    ollama_host: str | None = None
    """None: Ollama's usual local address."""
    embedder: str = "local"
    ollama_embed_model: str = "nomic-embed-text"
    similarity_threshold: float | None = None
    """None: the embedder's default policy."""
    max_semantic_temperature: float = 1.0
    """Requests sampling hotter than this skip the semantic layer."""
    speculative_llm: Speculation = Speculation.STREAMS
    """Start the LLM call alongside the semantic lookup: lower time to first token on a miss,
    at the price of a cancelled LLM call on every semantic hit."""
    ttl_seconds: float = 0.0
    """0: entries never expire."""
    max_prompt_chars: int = 32_000
    replay_chunk_chars: int = 64
    redis_timeout: float = 0.5
    ollama_connect_timeout: float = 2.0
    grace_seconds: float = 5.0
