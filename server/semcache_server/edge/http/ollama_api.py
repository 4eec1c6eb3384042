"""Ollama's `/api/chat` and `/api/generate` bodies to the cache's `Query` and back, field for field.

A request the cache can answer safely becomes a Query: the model, the last user message (or
generate's `prompt`) as the prompt, leading system messages (or `system`) as the system prompt,
the turns between as history, and the options the cache models (`temperature`, `top_p`,
`num_predict`, `seed`, `stop`). Whatever else changes the answer (`tools`, `images`, `format`,
`think`, `raw`, `context`, `template`, `suffix`, other options, tool turns, a field this module
does not know) makes it a `PassThrough`: Ollama answers it, uncached. `stream` and `keep_alive`
change how the answer arrives or how long Ollama keeps a model loaded, not the answer.

Generate is answered through the chat template, as the cache's LLM calls are: `prompt` with
`system` is the same conversation as a chat of those two messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from semcache_server.core.domain import (
    Answer,
    Caller,
    Completion,
    FinishReason,
    GenerationOptions,
    InvalidRequest,
    Origin,
    Query,
    Role,
    Source,
    Turn,
)
from semcache_server.core.validation import Limits, check_counts

CHAT = "/api/chat"
GENERATE = "/api/generate"

PROVENANCE_KEY = "semcache"
"""The key of the final object that says where the answer came from: Ollama uses none such."""

_HOW_IT_ARRIVES = {"stream", "keep_alive"}
CHAT_FIELDS = {"model", "messages", "options"} | _HOW_IT_ARRIVES
GENERATE_FIELDS = {"model", "prompt", "system", "options"} | _HOW_IT_ARRIVES
MESSAGE_FIELDS = {"role", "content"}
OPTIONS = {"temperature", "top_p", "num_predict", "seed", "stop"}


@dataclass(frozen=True)
class PassThrough:
    """The cache does not model this request; reason names what (a field, as Ollama names it)."""

    reason: str


def _present(value: object) -> bool:
    """null, an empty list or an empty object count as absent (clients send them for "none")."""
    return value is not None and value != [] and value != {}


def _unmodelled(body: dict[str, Any], known: set[str], prefix: str = "") -> str | None:
    for name, value in body.items():
        if name not in known and _present(value):
            return f"{prefix}{name}"
    return None


def streams(body: dict[str, Any]) -> bool:
    """Ollama streams unless the request says "stream": false."""
    value = body.get("stream")
    if value is None:
        return True
    if not isinstance(value, bool):
        raise InvalidRequest("stream", "must be true or false")
    return value


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(name, "must be a number")
    return float(value)


def _options(raw: object) -> GenerationOptions | PassThrough:
    if raw is None:
        return GenerationOptions()
    if not isinstance(raw, dict):
        raise InvalidRequest("options", "must be an object")
    other = _unmodelled(raw, OPTIONS, "options.")
    if other is not None:
        return PassThrough(other)
    max_tokens: int | None = None
    predict = raw.get("num_predict")
    if predict is not None:
        if isinstance(predict, bool) or not isinstance(predict, int | float):
            raise InvalidRequest("options.num_predict", "must be an integer")
        if predict != -1:  # -1: no limit, Ollama's default
            if predict < 1 or predict != int(predict):
                return PassThrough("options.num_predict")
            max_tokens = int(predict)
    seed = raw.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidRequest("options.seed", "must be an integer")
    stop = raw.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(item, str) for item in stop)
    ):
        raise InvalidRequest("options.stop", "must be a list of strings")
    temperature, top_p = raw.get("temperature"), raw.get("top_p")
    return GenerationOptions(
        temperature=None if temperature is None else _number("options.temperature", temperature),
        top_p=None if top_p is None else _number("options.top_p", top_p),
        max_tokens=max_tokens,
        seed=seed,
        stop=tuple(stop or ()),
    )


@dataclass(frozen=True)
class Conversation:
    prompt: str
    system: str
    history: tuple[Turn, ...]


def conversation(
    messages: object, *, system_roles: frozenset[str] = frozenset({"system"})
) -> Conversation | PassThrough:
    """Messages as (prompt, system, history): at most one leading system message, then user and
    assistant turns ending with a user's; anything else passes through. Each message a dict with
    a string content (the caller turns OpenAI's text parts into one first)."""
    if not isinstance(messages, list):
        raise InvalidRequest("messages", "must be a list of messages")
    if not messages:
        return PassThrough("messages")  # an empty chat loads the model: Ollama's to answer
    turns: list[Turn] = []
    system = ""
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(where, "must be an object with a role and a content")
        other = _unmodelled(message, MESSAGE_FIELDS, f"{where}.")
        if other is not None:
            return PassThrough(other)
        role, content = message.get("role"), message.get("content", "")
        if not isinstance(role, str):
            raise InvalidRequest(f"{where}.role", "is required")
        if content is None:
            content = ""
        if not isinstance(content, str):
            return PassThrough(f"{where}.content")
        if role in system_roles:
            if index != 0:
                return PassThrough(f"{where}.role")  # a system message later in the chat
            system = content
        elif role in ("user", "assistant"):
            turns.append(Turn(Role(role), content))
        else:
            return PassThrough(f"{where}.role")  # tool results, and roles of the future
    if not turns or turns[-1].role is not Role.USER:
        return PassThrough("messages")  # nothing to answer, or an answer to continue
    if not turns[-1].content.strip():
        return PassThrough("messages")
    return Conversation(turns[-1].content, system, tuple(turns[:-1]))


def _model(body: dict[str, Any]) -> str:
    model = body.get("model", "")
    if not isinstance(model, str):
        raise InvalidRequest("model", "must be a string")
    return model


def chat_query(body: dict[str, Any], caller: Caller, limits: Limits) -> Query | PassThrough:
    other = _unmodelled(body, CHAT_FIELDS)
    if other is not None:
        return PassThrough(other)
    model = _model(body)
    options = _options(body.get("options"))
    if isinstance(options, PassThrough):
        return options
    talk = conversation(body.get("messages"))
    if isinstance(talk, PassThrough):
        return talk
    return conversation_query(talk, model, options, caller, limits)


def conversation_query(
    talk: Conversation, model: str, options: GenerationOptions, caller: Caller, limits: Limits
) -> Query:
    """The cache's question for a chat, on either HTTP API."""
    check_counts(limits, len(talk.history), len(options.stop))
    return Query(
        prompt=talk.prompt,
        model=model,
        system=talk.system,
        options=options,
        history=talk.history,
        namespace=caller.namespace,
        tenant=caller.tenant,
    )


def generate_query(body: dict[str, Any], caller: Caller, limits: Limits) -> Query | PassThrough:
    other = _unmodelled(body, GENERATE_FIELDS)
    if other is not None:
        return PassThrough(other)
    model = _model(body)
    prompt, system = body.get("prompt"), body.get("system")
    if prompt is not None and not isinstance(prompt, str):
        raise InvalidRequest("prompt", "must be a string")
    if system is not None and not isinstance(system, str):
        raise InvalidRequest("system", "must be a string")
    if not prompt or not prompt.strip():
        return PassThrough("prompt")  # an empty generate loads (or unloads) the model
    options = _options(body.get("options"))
    if isinstance(options, PassThrough):
        return options
    check_counts(limits, 0, len(options.stop))
    return Query(
        prompt=prompt,
        model=model,
        system=system or "",
        options=options,
        namespace=caller.namespace,
        tenant=caller.tenant,
    )


def created_at() -> str:
    """Now, as Ollama writes `created_at` (RFC 3339, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _nanoseconds(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def done_reason(completion: Completion) -> str:
    """A replayed answer was stored because its LLM stopped by itself."""
    return "length" if completion.finish_reason is FinishReason.LENGTH else "stop"


def provenance(origin: Origin, completion: Completion | None) -> dict[str, Any]:
    """Where the answer came from, for the final object under PROVENANCE_KEY."""
    found: dict[str, Any] = {"source": origin.source.value}
    if origin.source in (Source.EXACT, Source.SEMANTIC):
        found["similarity"] = round(origin.similarity, 6)
    entry_id = origin.entry_id or (completion.entry_id if completion else "")
    if entry_id:
        found["entry_id"] = entry_id
    if completion is not None:
        found["stored"] = completion.stored
    return found


class Replies:
    """The objects of one answer, shaped as Ollama's for the path asked."""

    def __init__(self, path: str, model: str) -> None:
        self._path = path
        self._model = model
        self._first_text: float | None = None

    def chunk(self, text: str) -> dict[str, Any]:
        if self._first_text is None:
            self._first_text = time.monotonic()
        out: dict[str, Any] = {"model": self._model, "created_at": created_at()}
        if self._path == CHAT:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        out["done"] = False
        return out

    def final(self, origin: Origin, completion: Completion, text: str = "") -> dict[str, Any]:
        """The last object of a stream (text "") or the whole answer."""
        out = self.chunk(text)
        assert self._first_text is not None
        eval_seconds = time.monotonic() - self._first_text
        total = completion.total_seconds
        out.update(
            {
                "done": True,
                "done_reason": done_reason(completion),
                "total_duration": _nanoseconds(total),
                "load_duration": 0,
                "prompt_eval_count": completion.prompt_tokens,
                "prompt_eval_duration": _nanoseconds(max(0.0, total - eval_seconds)),
                "eval_count": completion.completion_tokens,
                "eval_duration": _nanoseconds(eval_seconds),
                PROVENANCE_KEY: provenance(origin, completion),
            }
        )
        return out

    def whole(self, answer: Answer) -> dict[str, Any]:
        return self.final(answer.origin, answer.completion, answer.text)
