"""Checks of a request before any work is done, each naming the field a caller must fix.

Every field has a limit: a request is small, finite and well-formed before the cache hashes,
embeds, stores or forwards any of it. The limits an operator may tune come from
`semcache_server.settings`; the rest are the constants below.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

from semcache_server.core.domain import CacheControl, InvalidRequest, Query

MAX_MODEL_CHARS = 200
"""Ollama's names (host/namespace/name:tag) are far shorter; a longer one is a mistake or an
attack, and it would be forwarded to Ollama and repeated in its errors."""
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 200
"""Stop sequences are short markers; each is part of the key and stored with the entry."""
MAX_HISTORY_TURNS = 256
CONTEXT_TIMES_PROMPT = 8
"""The system prompt and the history together may hold this many times --max-prompt-chars."""
MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
"""An entry that should outlive ten years should not expire at all: leave ttl unset."""
MAX_TOKENS = 131_072
"""The largest context windows of today's Ollama models; more is never generated."""


_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Mn", "Mc", "Me"})
"""Separators, controls, format characters (U+200B zero-width space, U+FEFF, U+2060, bidi
marks) and combining marks, which show nothing without a character to mark."""
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
"""Fillers filed as letters or symbols that render as nothing (Hangul fillers, the blank Braille
pattern)."""


def is_blank(text: str) -> bool:
    """Whether text shows nothing: an LLM gets no question from it, and one stored answer would
    be served for every such prompt. Unassigned code points count as visible: a newer Unicode
    than Python's may have given them a glyph."""
    return all(
        char in _INVISIBLE_LETTERS or unicodedata.category(char) in _INVISIBLE_CATEGORIES
        for char in text
    )


@dataclass(frozen=True)
class Limits:
    """What a request may carry: max_prompt_chars is a setting (`semcache_server.settings`), the
    rest are the constants above unless a test or benchmark hands in others."""

    max_prompt_chars: int
    max_model_chars: int = MAX_MODEL_CHARS
    max_stop_sequences: int = MAX_STOP_SEQUENCES
    max_stop_chars: int = MAX_STOP_CHARS
    max_history_turns: int = MAX_HISTORY_TURNS
    max_tokens: int = MAX_TOKENS

    @property
    def max_context_chars(self) -> int:
        """The system prompt and every turn of the history, together."""
        return CONTEXT_TIMES_PROMPT * self.max_prompt_chars


def check_counts(limits: Limits, history_turns: int, stop_sequences: int) -> None:
    """The repeated fields, counted before they are converted: a 4 MB request holds two million
    empty turns, which take seconds of the event loop to convert."""
    if history_turns > limits.max_history_turns:
        raise InvalidRequest(
            "history",
            f"has {history_turns} turns; this server accepts at most {limits.max_history_turns}",
        )
    if stop_sequences > limits.max_stop_sequences:
        raise InvalidRequest(
            "options.stop",
            f"has {stop_sequences} sequences; this server accepts at most "
            f"{limits.max_stop_sequences}",
        )


def _check_length(name: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidRequest(
            name, f"is {len(value)} characters; this server accepts at most {limit}"
        )


def _check_fraction(name: str, value: float | None, *, low_open: bool = False) -> None:
    if value is None:
        return
    # NaN fails every comparison, and infinity is no fraction: both are rejected here.
    if not math.isfinite(value) or value > 1 or value < 0 or (low_open and value == 0):
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise InvalidRequest(name, f"must be a number in {interval}, got {value}")


def validate(query: Query, control: CacheControl, limits: Limits) -> None:
    """The whole request, before any work: the first field out of bounds is named."""
    # Whitespace first (fast), the length, then every character (a few ms at the limit).
    if not query.prompt.strip():
        raise InvalidRequest("prompt", "must not be empty or blank")
    _check_length("prompt", query.prompt, limits.max_prompt_chars)
    if is_blank(query.prompt):
        raise InvalidRequest("prompt", "must not be empty or blank: it shows no character")
    if not query.model.strip():
        raise InvalidRequest("model", 'is required: name the Ollama model, such as "llama3.2"')
    _check_length("model", query.model, limits.max_model_chars)
    _check_length("system", query.system, limits.max_context_chars)
    check_counts(limits, len(query.history), len(query.options.stop))
    history_chars = sum(len(turn.content) for turn in query.history) + len(query.system)
    if history_chars > limits.max_context_chars:
        raise InvalidRequest(
            "history",
            f"the system prompt and history hold {history_chars} characters; this server "
            f"accepts at most {limits.max_context_chars} together",
        )
    for index, stop in enumerate(query.options.stop):
        if not stop:
            raise InvalidRequest(f"options.stop[{index}]", "must not be empty")
        _check_length(f"options.stop[{index}]", stop, limits.max_stop_chars)
    max_age = control.max_age_seconds
    if max_age is not None and (max_age < 0 or not math.isfinite(max_age)):
        raise InvalidRequest("cache.max_age", f"must be 0 or more, got {max_age}s")
    ttl = control.ttl_seconds
    if ttl is not None and not 0 < ttl <= MAX_TTL_SECONDS:
        raise InvalidRequest(
            "cache.ttl", f"must be in (0, {MAX_TTL_SECONDS}] seconds (ten years), got {ttl}s"
        )
    _check_fraction("cache.similarity_threshold", control.similarity_threshold)
    _check_fraction("options.top_p", query.options.top_p, low_open=True)
    temperature = query.options.temperature
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        raise InvalidRequest(
            "options.temperature", f"must be a finite number, 0 or more, got {temperature}"
        )
    max_tokens = query.options.max_tokens
    if max_tokens is not None and not 0 < max_tokens <= limits.max_tokens:
        raise InvalidRequest(
            "options.max_tokens", f"must be in [1, {limits.max_tokens}], got {max_tokens}"
        )
