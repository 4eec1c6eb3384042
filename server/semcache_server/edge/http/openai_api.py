"""OpenAI's `/v1/chat/completions` and `/v1/completions` bodies to the cache's `Query` and back,
the way Ollama's own OpenAI-compatible endpoints write them (ids `chatcmpl-...`/`cmpl-...`,
`system_fingerprint` "fp_ollama", server-sent events ending with `data: [DONE]`).

Modelled: `model`, `messages` (text content, or text parts), `prompt` (one string),
`temperature`, `top_p`, `max_tokens` / `max_completion_tokens`, `seed`, `stop`, `n` of 1,
`stream`, `stream_options`, `user`. Anything else (tools, response_format, penalties, logprobs,
images, ...) passes through to Ollama's own endpoint, uncached.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
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
)
from semcache_server.core.validation import Limits, check_counts
from semcache_server.edge.http.ollama_api import (
    PROVENANCE_KEY,
    PassThrough,
    conversation,
    conversation_query,
    provenance,
)

EVENT_STREAM = "text/event-stream"
SYSTEM_FINGERPRINT = "fp_ollama"

_COMMON = {
    "model",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop",
    "n",
    "user",
}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens"}
COMPLETION_FIELDS = _COMMON | {"prompt"}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _ERROR_TYPES.get(status, "api_error"),
            "param": None,
            "code": None,
        }
    }


def event(value: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    data = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _unmodelled(body: dict[str, Any], known: set[str]) -> str | None:
    for name, value in body.items():
        if name not in known and value is not None:
            return name
    return None


def streams(body: dict[str, Any]) -> bool:
    value = body.get("stream")
    if value is None:
        return False  # OpenAI's default, unlike Ollama's
    if not isinstance(value, bool):
        raise InvalidRequest("stream", "must be true or false")
    return value


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(name, "must be a number")
    return float(value)


def _integer(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(name, "must be an integer")
    return value


def _options(body: dict[str, Any]) -> GenerationOptions | PassThrough:
    n = _integer(body, "n")
    if n is not None and n != 1:
        return PassThrough("n")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(item, str) for item in stop)
    ):
        raise InvalidRequest("stop", "must be a string or a list of strings")
    max_tokens = _integer(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens")
    return GenerationOptions(
        temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"),
        max_tokens=max_tokens,
        seed=_integer(body, "seed"),
        stop=tuple(stop or ()),
    )


def _model(body: dict[str, Any]) -> str:
    model = body.get("model", "")
    if not isinstance(model, str):
        raise InvalidRequest("model", "must be a string")
    return model


def _text_messages(messages: object) -> list[object] | PassThrough:
    """OpenAI's messages with text parts joined into one string; other parts pass through."""
    if not isinstance(messages, list):
        raise InvalidRequest("messages", "must be a list of messages")
    plain: list[object] = []
    for index, message in enumerate(messages):
        if isinstance(message, dict) and isinstance(message.get("content"), list):
            texts = []
            for part in message["content"]:
                if not isinstance(part, dict) or part.get("type") != "text":
                    return PassThrough(f"messages[{index}].content")
                text = part.get("text")
                if not isinstance(text, str):
                    raise InvalidRequest(f"messages[{index}].content", "a text part needs text")
                texts.append(text)
            message = {**message, "content": "".join(texts)}
        plain.append(message)
    return plain


def chat_query(body: dict[str, Any], caller: Caller, limits: Limits) -> Query | PassThrough:
    other = _unmodelled(body, CHAT_FIELDS)
    if other is not None:
        return PassThrough(other)
    model = _model(body)
    options = _options(body)
    if isinstance(options, PassThrough):
        return options
    messages = _text_messages(body.get("messages"))
    if isinstance(messages, PassThrough):
        return messages
    talk = conversation(messages, system_roles=frozenset({"system", "developer"}))
    if isinstance(talk, PassThrough):
        return talk
    return conversation_query(talk, model, options, caller, limits)


def completion_query(body: dict[str, Any], caller: Caller, limits: Limits) -> Query | PassThrough:
    other = _unmodelled(body, COMPLETION_FIELDS)
    if other is not None:
        return PassThrough(other)
    model = _model(body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return PassThrough("prompt")  # a list of prompts, tokens, or nothing to answer
    options = _options(body)
    if isinstance(options, PassThrough):
        return options
    check_counts(limits, 0, len(options.stop))
    return Query(
        prompt=prompt,
        model=model,
        options=options,
        namespace=caller.namespace,
        tenant=caller.tenant,
    )


def _finish_reason(completion: Completion) -> str:
    return "length" if completion.finish_reason is FinishReason.LENGTH else "stop"


def _usage(completion: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


class Replies:
    """The objects of one answer, shaped as Ollama's OpenAI endpoints write them."""

    def __init__(self, chat: bool, model: str, usage_in_stream: bool) -> None:
        self._chat = chat
        self._model = model
        self._usage_in_stream = usage_in_stream
        self._id = f"{'chatcmpl' if chat else 'cmpl'}-{secrets.randbelow(1000)}"
        self._created = int(time.time())

    def _head(self, streamed: bool) -> dict[str, Any]:
        if self._chat:
            kind = "chat.completion.chunk" if streamed else "chat.completion"
        else:
            kind = "text_completion"
        return {
            "id": self._id,
            "object": kind,
            "created": self._created,
            "model": self._model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def _choice(self, text: str, finish_reason: str | None, streamed: bool) -> dict[str, Any]:
        if not self._chat:
            return {"text": text, "index": 0, "finish_reason": finish_reason}
        key = "delta" if streamed else "message"
        return {
            "index": 0,
            key: {"role": "assistant", "content": text},
            "finish_reason": finish_reason,
        }

    def chunk(self, text: str) -> dict[str, Any]:
        return {**self._head(True), "choices": [self._choice(text, None, True)]}

    def final(self, origin: Origin, completion: Completion) -> Iterator[dict[str, Any] | str]:
        """The last events of a stream: the finish, usage when asked for, and [DONE]."""
        last = self._head(True)
        last["choices"] = [self._choice("", _finish_reason(completion), True)]
        last[PROVENANCE_KEY] = provenance(origin, completion)
        yield last
        if self._usage_in_stream:
            yield {**self._head(True), "choices": [], "usage": _usage(completion)}
        yield "[DONE]"

    def whole(self, answer: Answer) -> dict[str, Any]:
        completion = answer.completion
        out = self._head(False)
        out["choices"] = [self._choice(answer.text, _finish_reason(completion), False)]
        out["usage"] = _usage(completion)
        out[PROVENANCE_KEY] = provenance(answer.origin, completion)
        return out
