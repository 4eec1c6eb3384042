import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_UNSPECIFIED: _ClassVar[Source]
    SOURCE_EXACT: _ClassVar[Source]
    SOURCE_SEMANTIC: _ClassVar[Source]
    SOURCE_LLM: _ClassVar[Source]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]

class SemanticStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEMANTIC_STATUS_UNSPECIFIED: _ClassVar[SemanticStatus]
    SEMANTIC_STATUS_SEARCHED: _ClassVar[SemanticStatus]
    SEMANTIC_STATUS_REJECTED_BY_GUARD: _ClassVar[SemanticStatus]
    SEMANTIC_STATUS_SKIPPED_EXACT_ONLY: _ClassVar[SemanticStatus]
    SEMANTIC_STATUS_SKIPPED_HISTORY: _ClassVar[SemanticStatus]
    SEMANTIC_STATUS_SKIPPED_TEMPERATURE: _ClassVar[SemanticStatus]
    SEMANTIC_STATUS_SKIPPED_LOOKUP: _ClassVar[SemanticStatus]
    SEMANTIC_STATUS_UNAVAILABLE: _ClassVar[SemanticStatus]
    SEMANTIC_STATUS_SEARCHED_PARTLY_READ: _ClassVar[SemanticStatus]

class SemanticCheck(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEMANTIC_CHECK_UNSPECIFIED: _ClassVar[SemanticCheck]
    SEMANTIC_CHECK_COSINE: _ClassVar[SemanticCheck]
    SEMANTIC_CHECK_GUARD: _ClassVar[SemanticCheck]
    SEMANTIC_CHECK_VERIFIER: _ClassVar[SemanticCheck]
    SEMANTIC_CHECK_JUDGE: _ClassVar[SemanticCheck]
SOURCE_UNSPECIFIED: Source
SOURCE_EXACT: Source
SOURCE_SEMANTIC: Source
SOURCE_LLM: Source
ROLE_UNSPECIFIED: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
SEMANTIC_STATUS_UNSPECIFIED: SemanticStatus
SEMANTIC_STATUS_SEARCHED: SemanticStatus
SEMANTIC_STATUS_REJECTED_BY_GUARD: SemanticStatus
SEMANTIC_STATUS_SKIPPED_EXACT_ONLY: SemanticStatus
SEMANTIC_STATUS_SKIPPED_HISTORY: SemanticStatus
SEMANTIC_STATUS_SKIPPED_TEMPERATURE: SemanticStatus
SEMANTIC_STATUS_SKIPPED_LOOKUP: SemanticStatus
SEMANTIC_STATUS_UNAVAILABLE: SemanticStatus
SEMANTIC_STATUS_SEARCHED_PARTLY_READ: SemanticStatus
SEMANTIC_CHECK_UNSPECIFIED: SemanticCheck
SEMANTIC_CHECK_COSINE: SemanticCheck
SEMANTIC_CHECK_GUARD: SemanticCheck
SEMANTIC_CHECK_VERIFIER: SemanticCheck
SEMANTIC_CHECK_JUDGE: SemanticCheck

class Turn(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: Role
    content: str
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., content: _Optional[str] = ...) -> None: ...

class GenerationOptions(_message.Message):
    __slots__ = ("temperature", "top_p", "max_tokens", "seed", "stop")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_tokens: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class CacheControl(_message.Message):
    __slots__ = ("skip_lookup", "skip_store", "similarity_threshold", "semantic_with_history", "max_age", "ttl")
    SKIP_LOOKUP_FIELD_NUMBER: _ClassVar[int]
    SKIP_STORE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_WITH_HISTORY_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    skip_lookup: bool
    skip_store: bool
    similarity_threshold: float
    semantic_with_history: bool
    max_age: _duration_pb2.Duration
    ttl: _duration_pb2.Duration
    def __init__(self, skip_lookup: _Optional[bool] = ..., skip_store: _Optional[bool] = ..., similarity_threshold: _Optional[float] = ..., semantic_with_history: _Optional[bool] = ..., max_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("prompt", "model", "system", "options", "history", "cache")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    model: str
    system: str
    options: GenerationOptions
    history: _containers.RepeatedCompositeFieldContainer[Turn]
    cache: CacheControl
    def __init__(self, prompt: _Optional[str] = ..., model: _Optional[str] = ..., system: _Optional[str] = ..., options: _Optional[_Union[GenerationOptions, _Mapping]] = ..., history: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ..., cache: _Optional[_Union[CacheControl, _Mapping]] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("text", "source", "similarity", "matched_prompt", "entry_id", "model", "cached_at", "lookup_duration", "stored", "finish_reason", "hits", "semantic_status", "decided_by", "verifier_score", "judge_duration", "shared_llm_call", "age", "nearest_similarity", "guard_findings")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    MATCHED_PROMPT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CACHED_AT_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_DURATION_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_STATUS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_SCORE_FIELD_NUMBER: _ClassVar[int]
    JUDGE_DURATION_FIELD_NUMBER: _ClassVar[int]
    SHARED_LLM_CALL_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    NEAREST_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    GUARD_FINDINGS_FIELD_NUMBER: _ClassVar[int]
    text: str
    source: Source
    similarity: float
    matched_prompt: str
    entry_id: str
    model: str
    cached_at: _timestamp_pb2.Timestamp
    lookup_duration: _duration_pb2.Duration
    stored: bool
    finish_reason: FinishReason
    hits: int
    semantic_status: SemanticStatus
    decided_by: SemanticCheck
    verifier_score: float
    judge_duration: _duration_pb2.Duration
    shared_llm_call: bool
    age: _duration_pb2.Duration
    nearest_similarity: float
    guard_findings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, text: _Optional[str] = ..., source: _Optional[_Union[Source, str]] = ..., similarity: _Optional[float] = ..., matched_prompt: _Optional[str] = ..., entry_id: _Optional[str] = ..., model: _Optional[str] = ..., cached_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lookup_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., stored: _Optional[bool] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., hits: _Optional[int] = ..., semantic_status: _Optional[_Union[SemanticStatus, str]] = ..., decided_by: _Optional[_Union[SemanticCheck, str]] = ..., verifier_score: _Optional[float] = ..., judge_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., shared_llm_call: _Optional[bool] = ..., age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., nearest_similarity: _Optional[float] = ..., guard_findings: _Optional[_Iterable[str]] = ...) -> None: ...

class AskStreamRequest(_message.Message):
    __slots__ = ("prompt", "model", "system", "options", "history", "cache")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    model: str
    system: str
    options: GenerationOptions
    history: _containers.RepeatedCompositeFieldContainer[Turn]
    cache: CacheControl
    def __init__(self, prompt: _Optional[str] = ..., model: _Optional[str] = ..., system: _Optional[str] = ..., options: _Optional[_Union[GenerationOptions, _Mapping]] = ..., history: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ..., cache: _Optional[_Union[CacheControl, _Mapping]] = ...) -> None: ...

class AskStreamStart(_message.Message):
    __slots__ = ("source", "similarity", "matched_prompt", "entry_id", "model", "cached_at", "lookup_duration", "hits", "semantic_status", "decided_by", "verifier_score", "judge_duration", "shared_llm_call", "age", "nearest_similarity", "guard_findings")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    MATCHED_PROMPT_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CACHED_AT_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_DURATION_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_STATUS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_SCORE_FIELD_NUMBER: _ClassVar[int]
    JUDGE_DURATION_FIELD_NUMBER: _ClassVar[int]
    SHARED_LLM_CALL_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    NEAREST_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    GUARD_FINDINGS_FIELD_NUMBER: _ClassVar[int]
    source: Source
    similarity: float
    matched_prompt: str
    entry_id: str
    model: str
    cached_at: _timestamp_pb2.Timestamp
    lookup_duration: _duration_pb2.Duration
    hits: int
    semantic_status: SemanticStatus
    decided_by: SemanticCheck
    verifier_score: float
    judge_duration: _duration_pb2.Duration
    shared_llm_call: bool
    age: _duration_pb2.Duration
    nearest_similarity: float
    guard_findings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, source: _Optional[_Union[Source, str]] = ..., similarity: _Optional[float] = ..., matched_prompt: _Optional[str] = ..., entry_id: _Optional[str] = ..., model: _Optional[str] = ..., cached_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lookup_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., hits: _Optional[int] = ..., semantic_status: _Optional[_Union[SemanticStatus, str]] = ..., decided_by: _Optional[_Union[SemanticCheck, str]] = ..., verifier_score: _Optional[float] = ..., judge_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., shared_llm_call: _Optional[bool] = ..., age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., nearest_similarity: _Optional[float] = ..., guard_findings: _Optional[_Iterable[str]] = ...) -> None: ...

class AskStreamDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class AskStreamEnd(_message.Message):
    __slots__ = ("stored", "entry_id", "finish_reason", "prompt_tokens", "completion_tokens", "total_duration")
    STORED_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    stored: bool
    entry_id: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    total_duration: _duration_pb2.Duration
    def __init__(self, stored: _Optional[bool] = ..., entry_id: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AskStreamResponse(_message.Message):
    __slots__ = ("start", "delta", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: AskStreamStart
    delta: AskStreamDelta
    end: AskStreamEnd
    def __init__(self, start: _Optional[_Union[AskStreamStart, _Mapping]] = ..., delta: _Optional[_Union[AskStreamDelta, _Mapping]] = ..., end: _Optional[_Union[AskStreamEnd, _Mapping]] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("entry_id", "prompt", "text", "model", "system", "namespace", "owner", "embedding_model", "created_at", "expires_at", "hits", "completion_tokens")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    prompt: str
    text: str
    model: str
    system: str
    namespace: str
    owner: str
    embedding_model: str
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    hits: int
    completion_tokens: int
    def __init__(self, entry_id: _Optional[str] = ..., prompt: _Optional[str] = ..., text: _Optional[str] = ..., model: _Optional[str] = ..., system: _Optional[str] = ..., namespace: _Optional[str] = ..., owner: _Optional[str] = ..., embedding_model: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., hits: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class DeleteEntryRequest(_message.Message):
    __slots__ = ("entry_id",)
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    def __init__(self, entry_id: _Optional[str] = ...) -> None: ...

class DeleteEntryResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class PromptSelector(_message.Message):
    __slots__ = ("prompt", "model")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    model: str
    def __init__(self, prompt: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class InvalidateRequest(_message.Message):
    __slots__ = ("prompt", "model", "embedding_model", "all", "tenant")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    prompt: PromptSelector
    model: str
    embedding_model: str
    all: bool
    tenant: str
    def __init__(self, prompt: _Optional[_Union[PromptSelector, _Mapping]] = ..., model: _Optional[str] = ..., embedding_model: _Optional[str] = ..., all: _Optional[bool] = ..., tenant: _Optional[str] = ...) -> None: ...

class InvalidateResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    def __init__(self, tenant: _Optional[str] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("entries", "exact_hits", "semantic_hits", "llm_calls", "hit_ratio", "llm_calls_saved", "tokens_saved", "index_entries", "redis_memory_bytes")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    EXACT_HITS_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_HITS_FIELD_NUMBER: _ClassVar[int]
    LLM_CALLS_FIELD_NUMBER: _ClassVar[int]
    HIT_RATIO_FIELD_NUMBER: _ClassVar[int]
    LLM_CALLS_SAVED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SAVED_FIELD_NUMBER: _ClassVar[int]
    INDEX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    REDIS_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    entries: int
    exact_hits: int
    semantic_hits: int
    llm_calls: int
    hit_ratio: float
    llm_calls_saved: int
    tokens_saved: int
    index_entries: int
    redis_memory_bytes: int
    def __init__(self, entries: _Optional[int] = ..., exact_hits: _Optional[int] = ..., semantic_hits: _Optional[int] = ..., llm_calls: _Optional[int] = ..., hit_ratio: _Optional[float] = ..., llm_calls_saved: _Optional[int] = ..., tokens_saved: _Optional[int] = ..., index_entries: _Optional[int] = ..., redis_memory_bytes: _Optional[int] = ...) -> None: ...

class ListEntriesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "tenant")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    tenant: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class ListEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetEntryRequest(_message.Message):
    __slots__ = ("entry_id",)
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    def __init__(self, entry_id: _Optional[str] = ...) -> None: ...

class GetEntryResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: Entry
    def __init__(self, entry: _Optional[_Union[Entry, _Mapping]] = ...) -> None: ...
