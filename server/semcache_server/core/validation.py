"""Checks of a request before any work is done, each naming the field a caller must fix."""

from __future__ import annotations

import math
from dataclasses import dataclass

from semcache_server.core.domain import CacheControl, InvalidRequest, Query


@dataclass(frozen=True)
class Limits:
    """What a request may carry; the defaults live in `semcache_server.settings`."""

    max_prompt_chars: int


def _check_fraction(name: str, value: float | None, *, low_open: bool = False) -> None:
    if value is None:
        return
    if math.isnan(value) or value > 1 or value < 0 or (low_open and value == 0):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise InvalidRequest(name, f"must be in {interval}, got {value}")


def validate(query: Query, control: CacheControl, limits: Limits) -> None:
    if not query.prompt.strip():
        raise InvalidRequest("prompt", "must not be empty or blank")
    if len(query.prompt) > limits.max_prompt_chars:
        raise InvalidRequest(
            "prompt",
            f"is {len(query.prompt)} characters; this server accepts at most "
            f"{limits.max_prompt_chars}",
        )
    if not query.model.strip():
        raise InvalidRequest("model", 'is required: name the Ollama model, such as "llama3.2"')
    history_chars = sum(len(turn.content) for turn in query.history) + len(query.system)
    if history_chars > 8 * limits.max_prompt_chars:
        raise InvalidRequest(
            "history", f"system prompt and history exceed {8 * limits.max_prompt_chars} characters"
        )
    _check_fraction("cache.similarity_threshold", control.similarity_threshold)
    _check_fraction("options.top_p", query.options.top_p, low_open=True)
    temperature = query.options.temperature
    if temperature is not None and (math.isnan(temperature) or temperature < 0):
        raise InvalidRequest("options.temperature", f"must be 0 or more, got {temperature}")
    if query.options.max_tokens is not None and query.options.max_tokens <= 0:
        raise InvalidRequest(
            "options.max_tokens", f"must be positive, got {query.options.max_tokens}"
        )
