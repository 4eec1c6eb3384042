"""Protobuf messages to domain objects and back; the only module that knows both."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from semcache.v1 import semcache_pb2 as pb

from semcache_server.core.admin import (
    AllSelector,
    EmbeddingModelSelector,
    Listed,
    ModelSelector,
    PromptSelector,
    Selector,
)
from semcache_server.core.domain import (
    Answer,
    CacheControl,
    Caller,
    Check,
    Completion,
    FinishReason,
    GenerationOptions,
    InvalidRequest,
    Origin,
    Query,
    Role,
    SemanticStatus,
    Source,
    Turn,
    excerpt,
)
from semcache_server.core.validation import Limits, check_counts

log = logging.getLogger(__name__)

RequestT = TypeVar("RequestT", bound=Message)


@dataclass(frozen=True)
class MalformedRequest:
    """Request bytes that do not parse. gRPC answers a deserializer that raises with UNKNOWN, the
    exception's class and a logged traceback; the parser hands this to the servicer instead,
    which answers INVALID_ARGUMENT like any other bad request."""

    message_type: str
    size: int
    problem: str
    """What the parser said, for the server log only."""


def request_parser(message_type: type[RequestT]) -> Callable[[bytes], RequestT | MalformedRequest]:
    """The request deserializer of one method: the message, or MalformedRequest."""
    name = message_type.DESCRIPTOR.full_name

    def parse(data: bytes) -> RequestT | MalformedRequest:
        try:
            return message_type.FromString(data)
        except Exception as error:  # DecodeError, or whatever hostile bytes make the parser raise
            return MalformedRequest(name, len(data), f"{type(error).__name__}: {error}")

    return parse


_SOURCES = {
    Source.EXACT: pb.SOURCE_EXACT,
    Source.SEMANTIC: pb.SOURCE_SEMANTIC,
    Source.LLM: pb.SOURCE_LLM,
}
_SEMANTIC_STATUSES = {
    SemanticStatus.SEARCHED: pb.SEMANTIC_STATUS_SEARCHED,
    SemanticStatus.SEARCHED_PARTLY_READ: pb.SEMANTIC_STATUS_SEARCHED_PARTLY_READ,
    SemanticStatus.REJECTED_BY_GUARD: pb.SEMANTIC_STATUS_REJECTED_BY_GUARD,
    SemanticStatus.SKIPPED_EXACT_ONLY: pb.SEMANTIC_STATUS_SKIPPED_EXACT_ONLY,
    SemanticStatus.SKIPPED_HISTORY: pb.SEMANTIC_STATUS_SKIPPED_HISTORY,
    SemanticStatus.SKIPPED_TEMPERATURE: pb.SEMANTIC_STATUS_SKIPPED_TEMPERATURE,
    SemanticStatus.SKIPPED_LOOKUP: pb.SEMANTIC_STATUS_SKIPPED_LOOKUP,
    SemanticStatus.UNAVAILABLE: pb.SEMANTIC_STATUS_UNAVAILABLE,
}
_CHECKS = {
    Check.COSINE: pb.SEMANTIC_CHECK_COSINE,
    Check.GUARD: pb.SEMANTIC_CHECK_GUARD,
    Check.VERIFIER: pb.SEMANTIC_CHECK_VERIFIER,
    Check.JUDGE: pb.SEMANTIC_CHECK_JUDGE,
}
_ROLES = {pb.ROLE_USER: Role.USER, pb.ROLE_ASSISTANT: Role.ASSISTANT}
_FINISH_REASONS = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
}


def _options(message: pb.GenerationOptions) -> GenerationOptions:
    return GenerationOptions(
        temperature=message.temperature if message.HasField("temperature") else None,
        top_p=message.top_p if message.HasField("top_p") else None,
        max_tokens=message.max_tokens if message.HasField("max_tokens") else None,
        seed=message.seed if message.HasField("seed") else None,
        stop=tuple(message.stop),
    )


def _turn(index: int, message: pb.Turn) -> Turn:
    role = _ROLES.get(message.role)
    if role is None:
        raise InvalidRequest(f"history[{index}].role", "must be ROLE_USER or ROLE_ASSISTANT")
    return Turn(role, message.content)


def request_to_domain(
    request: pb.AskRequest | pb.AskStreamRequest | MalformedRequest, caller: Caller, limits: Limits
) -> tuple[Query, CacheControl]:
    """The request as the core sees it; bytes that did not parse, and repeated fields past their
    limits, are refused before anything is converted (the core checks the rest)."""
    if isinstance(request, MalformedRequest):
        raise refusal(request)
    check_counts(limits, len(request.history), len(request.options.stop))
    query = Query(
        prompt=request.prompt,
        model=request.model,
        system=request.system,
        options=_options(request.options),
        history=tuple(_turn(i, turn) for i, turn in enumerate(request.history)),
        namespace=caller.namespace,
        tenant=caller.tenant,
    )
    cache = request.cache
    control = CacheControl(
        skip_lookup=cache.skip_lookup,
        skip_store=cache.skip_store,
        similarity_threshold=(
            cache.similarity_threshold if cache.HasField("similarity_threshold") else None
        ),
        semantic_with_history=cache.semantic_with_history,
        max_age_seconds=(
            _seconds("cache.max_age", cache.max_age) if cache.HasField("max_age") else None
        ),
        ttl_seconds=_seconds("cache.ttl", cache.ttl) if cache.HasField("ttl") else None,
    )
    return query, control


def refusal(request: MalformedRequest) -> InvalidRequest:
    """The error for bytes that did not parse, logged here, once the caller is known
    (authentication comes first), not in the parser."""
    log.warning(
        "refused a malformed %s of %d bytes: %s",
        request.message_type,
        request.size,
        excerpt(request.problem, 200),
    )
    return InvalidRequest(
        "request", f"is not a valid {request.message_type} message; build it from semcache.proto"
    )


MAX_DURATION_SECONDS = 315_576_000_000
"""The range google/protobuf/duration.proto gives a Duration: about 10,000 years either way."""
MAX_DURATION_NANOS = 999_999_999


def _seconds(field_name: str, duration: Duration) -> float:
    """A Duration as duration.proto defines it, else InvalidRequest naming the field: protobuf
    parses any seconds and nanos, and 1 s with -0.5e9 nanos or 1e9 nanos would mean one thing
    here and another, or an error, to other readers of the same request."""
    seconds, nanos = duration.seconds, duration.nanos
    if (
        abs(seconds) > MAX_DURATION_SECONDS
        or abs(nanos) > MAX_DURATION_NANOS
        or (seconds > 0 > nanos)
        or (seconds < 0 < nanos)
    ):
        raise InvalidRequest(
            field_name,
            f"is not a valid Duration (seconds {seconds}, nanos {nanos}): nanos must be within "
            f"±{MAX_DURATION_NANOS:,} and of the sign of seconds, seconds within "
            f"±{MAX_DURATION_SECONDS:,}",
        )
    return seconds + nanos / 1e9


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def _optional_duration(seconds: float | None) -> Duration | None:
    return None if seconds is None else _duration(seconds)


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    timestamp = Timestamp()
    timestamp.FromNanoseconds(round(seconds * 1e9))
    return timestamp


def _finish_reason(reason: FinishReason | None) -> pb.FinishReason:
    if reason is None:
        return pb.FINISH_REASON_UNSPECIFIED
    return _FINISH_REASONS.get(reason, pb.FINISH_REASON_UNSPECIFIED)


def _semantic_status(status: SemanticStatus | None) -> pb.SemanticStatus:
    return pb.SEMANTIC_STATUS_UNSPECIFIED if status is None else _SEMANTIC_STATUSES[status]


def _check(check: Check | None) -> pb.SemanticCheck:
    return pb.SEMANTIC_CHECK_UNSPECIFIED if check is None else _CHECKS[check]


def answer_to_response(answer: Answer) -> pb.AskResponse:
    origin, completion = answer.origin, answer.completion
    return pb.AskResponse(
        text=answer.text,
        source=_SOURCES[origin.source],
        similarity=origin.similarity,
        matched_prompt=origin.matched_prompt,
        entry_id=origin.entry_id or completion.entry_id,
        model=origin.model,
        cached_at=_timestamp(origin.cached_at),
        lookup_duration=_duration(origin.lookup_seconds),
        stored=completion.stored,
        finish_reason=_finish_reason(completion.finish_reason),
        hits=origin.hits,
        semantic_status=_semantic_status(origin.semantic_status),
        decided_by=_check(origin.decided_by),
        verifier_score=origin.verifier_score,
        judge_duration=_optional_duration(origin.judge_seconds),
        shared_llm_call=origin.shared_llm_call,
        age=_optional_duration(origin.age_seconds),
        nearest_similarity=origin.nearest_similarity,
        guard_findings=origin.guard_findings,
    )


def origin_to_stream(origin: Origin) -> pb.AskStreamResponse:
    return pb.AskStreamResponse(
        start=pb.AskStreamStart(
            source=_SOURCES[origin.source],
            similarity=origin.similarity,
            matched_prompt=origin.matched_prompt,
            entry_id=origin.entry_id,
            model=origin.model,
            cached_at=_timestamp(origin.cached_at),
            lookup_duration=_duration(origin.lookup_seconds),
            hits=origin.hits,
            semantic_status=_semantic_status(origin.semantic_status),
            decided_by=_check(origin.decided_by),
            verifier_score=origin.verifier_score,
            judge_duration=_optional_duration(origin.judge_seconds),
            shared_llm_call=origin.shared_llm_call,
            age=_optional_duration(origin.age_seconds),
            nearest_similarity=origin.nearest_similarity,
            guard_findings=origin.guard_findings,
        )
    )


def delta_to_stream(text: str) -> pb.AskStreamResponse:
    return pb.AskStreamResponse(delta=pb.AskStreamDelta(text=text))


def completion_to_stream(completion: Completion) -> pb.AskStreamResponse:
    return pb.AskStreamResponse(
        end=pb.AskStreamEnd(
            stored=completion.stored,
            entry_id=completion.entry_id,
            finish_reason=_finish_reason(completion.finish_reason),
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            total_duration=_duration(completion.total_seconds),
        )
    )


# --- CacheAdminService ---------------------------------------------------------------


def entry_message(listed: Listed) -> pb.Entry:
    entry = listed.entry
    return pb.Entry(
        entry_id=entry.entry_id,
        prompt=entry.prompt,
        text=entry.text,
        model=entry.model,
        system=entry.system,
        namespace=entry.namespace,
        owner=entry.owner,
        embedding_model=entry.embedding_model,
        created_at=_timestamp(entry.created_at),
        expires_at=_timestamp(listed.expires_at),
        hits=entry.hits,
        completion_tokens=entry.completion_tokens,
    )


def selector_of(request: pb.InvalidateRequest) -> Selector:
    which = request.WhichOneof("selector")
    if which == "prompt":
        return PromptSelector(request.prompt.prompt, request.prompt.model)
    if which == "model" and request.model:
        return ModelSelector(request.model)
    if which == "embedding_model" and request.embedding_model:
        return EmbeddingModelSelector(request.embedding_model)
    if which == "all" and request.all:
        return AllSelector()
    raise InvalidRequest(
        "selector", "set one of prompt, model, embedding_model, or all: true (and not empty)"
    )
