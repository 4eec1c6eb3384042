"""The cache's own vocabulary: what a question is, what an answer is, and what can go wrong.

Nothing here knows about gRPC, Redis, numpy or Ollama; every layer speaks these types.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Source(enum.Enum):
    """Which layer produced an answer."""

    EXACT = "exact"
    SEMANTIC = "semantic"
    LLM = "llm"


class SemanticStatus(enum.Enum):
    """What the semantic layer did for a request; None on an Origin means it was not reached."""

    SEARCHED = "searched"
    SEARCHED_PARTLY_READ = "searched_partly_read"
    """Searched, but the embedding model could not read all of the prompt (past its window, or
    unknown tokens): only cached prompts identical in those parts were compared."""
    REJECTED_BY_GUARD = "rejected_by_guard"
    SKIPPED_EXACT_ONLY = "skipped_exact_only"
    SKIPPED_HISTORY = "skipped_history"
    SKIPPED_TEMPERATURE = "skipped_temperature"
    SKIPPED_LOOKUP = "skipped_lookup"
    UNAVAILABLE = "unavailable"


class Speculation(enum.Enum):
    """When the LLM call starts before the semantic layer has decided (a hit cancels it).

    Speculating hides the embedding behind the LLM's own time to first token, which only a
    stream's reader sees; a unary caller waits for the whole answer anyway.
    """

    OFF = "off"
    STREAMS = "streams"
    ALL = "all"


class Verdict(enum.Enum):
    """A hit policy's decision about one semantic neighbour."""

    HIT = "hit"
    TOO_FAR = "too_far"
    """Below the threshold, or scored too low by a gray-zone model."""
    REJECTED_BY_GUARD = "rejected_by_guard"
    """Close enough by cosine, but a guard found the prompts ask different things."""


class Check(enum.Enum):
    """Which check decided a semantic verdict."""

    COSINE = "cosine"
    """The similarity alone: too far, or a plain threshold."""
    GUARD = "guard"
    """A lexical guard found the prompts ask different things."""
    VERIFIER = "verifier"
    """The pair verifier, read together with the cosine."""
    JUDGE = "judge"
    """The LLM judge, asked where the verifier was unsure."""


@dataclass(frozen=True)
class Candidate:
    """A cached prompt near the query, as a hit policy sees it."""

    prompt: str
    similarity: float


@dataclass(frozen=True)
class Judgement:
    """A hit policy's decision over the candidates it was shown."""

    verdict: Verdict
    decided_by: Check
    chosen: int | None = None
    """Index of the candidate that hits (only with Verdict.HIT)."""
    score: float | None = None
    """The verifier's estimate that the best candidate's answer answers the query, if it ran."""
    judge_seconds: float | None = None
    """How long the LLM judge took, when it was asked."""
    guard_findings: tuple[str, ...] = ()
    """What the guards found, when they refused (`guards.Mismatch` values)."""


class Role(enum.Enum):
    USER = "user"
    ASSISTANT = "assistant"


class FinishReason(enum.Enum):
    """Why the LLM stopped; only STOP answers are complete enough to store."""

    STOP = "stop"
    LENGTH = "length"
    OTHER = "other"


@dataclass(frozen=True)
class Turn:
    role: Role
    content: str


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling options; None means "the model's default", which is not the same as 0."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """Only the options that were set, so an unset option and a default one key alike."""
        values: dict[str, object] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": list(self.stop) if self.stop else None,
        }
        return {name: value for name, value in values.items() if value is not None}


DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class Caller:
    """Who asks, as authentication established it. The tenant owns the entries it stores; the
    namespace holds the entries it may reuse: its own, or a shared one its operator opted it into.
    """

    tenant: str
    namespace: str


OPEN_ACCESS = Caller(DEFAULT_NAMESPACE, DEFAULT_NAMESPACE)
"""The one caller of a server that runs without API keys."""


@dataclass(frozen=True)
class Query:
    """Everything that defines an answer: two equal queries may share one."""

    prompt: str
    model: str
    system: str = ""
    options: GenerationOptions = field(default_factory=GenerationOptions)
    history: tuple[Turn, ...] = ()
    namespace: str = DEFAULT_NAMESPACE
    tenant: str = DEFAULT_NAMESPACE
    """Who asks: the owner of an entry this query stores. Part of no key; the namespace is."""


@dataclass(frozen=True)
class CacheControl:
    """How one request uses the cache."""

    skip_lookup: bool = False
    skip_store: bool = False
    similarity_threshold: float | None = None
    semantic_with_history: bool = False
    max_age_seconds: float | None = None
    """Reuse only answers stored at most this long ago; None: any age."""
    ttl_seconds: float | None = None
    """How long the answer this request stores lives; None: the server's --ttl."""

    def too_old(self, entry: CachedEntry, now: float) -> bool:
        return self.max_age_seconds is not None and now - entry.created_at > self.max_age_seconds


@dataclass(frozen=True)
class CachedEntry:
    """A stored answer with the metadata needed to explain and rebuild it."""

    entry_id: str
    partition: str
    prompt: str
    text: str
    model: str
    system: str
    options: dict[str, object]
    history: tuple[Turn, ...]
    namespace: str
    embedding_model: str
    created_at: float
    hits: int = 0
    owner: str = ""
    """The tenant that stored it; empty for an entry stored before owners were recorded."""
    completion_tokens: int = 0
    """What the LLM generated for it: each hit saves as many."""

    def owned_by(self, tenant: str) -> bool:
        """Whether tenant may see what an entry reveals about its asker (the prompt, when, how
        often). In a namespace of its own a tenant owns every entry; in a shared one, only its own.
        """
        return self.owner == tenant or (not self.owner and self.namespace == tenant)


@dataclass(frozen=True)
class Origin:
    """Where an answer comes from; sent before any text in a stream."""

    source: Source
    model: str
    lookup_seconds: float
    similarity: float = 0.0
    matched_prompt: str = ""
    entry_id: str = ""
    cached_at: float | None = None
    hits: int = 0
    semantic_status: SemanticStatus | None = None
    decided_by: Check | None = None
    """For a searched semantic layer: which check accepted or refused the nearest candidate."""
    verifier_score: float | None = None
    judge_seconds: float | None = None
    shared_llm_call: bool = False
    """The caller joined an LLM call already under way for the same question (single-flight)."""
    age_seconds: float | None = None
    """How long ago the reused answer was stored; None for an LLM answer."""
    nearest_similarity: float | None = None
    """Of the nearest cached prompt the semantic search found, served or not."""
    guard_findings: tuple[str, ...] = ()
    """What the guards found when they refused the nearest candidate."""


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Completion:
    """The end of a completed answer, with what happened to it."""

    stored: bool
    entry_id: str
    finish_reason: FinishReason | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_seconds: float = 0.0


AnswerEvent = Origin | TextDelta | Completion
"""An answer is a stream of events: one Origin, any number of TextDeltas, one Completion."""


@dataclass(frozen=True)
class Answer:
    """A whole answer, as the unary call returns it."""

    text: str
    origin: Origin
    completion: Completion


ECHO_CHARS = 40
"""The most of a caller's value an error message repeats."""


def excerpt(value: str, limit: int = ECHO_CHARS) -> str:
    """A value as an error message may repeat it: clipped, because gRPC sends the message in a
    header (a 5,000-character model name made NOT_FOUND fail as RESOURCE_EXHAUSTED)."""
    return value if len(value) <= limit else f"{value[: limit - 1]}…"


class SemcacheError(Exception):
    """Base of the errors a caller can act on; each maps to one gRPC status."""


class InvalidRequest(SemcacheError):
    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field_name = field_name


class Unauthenticated(SemcacheError):
    """The call carried no API key, or one this server does not know."""


class Forbidden(SemcacheError):
    """The key is known but does not reach what the call asks for (another tenant's entries)."""


class LLMUnavailable(SemcacheError):
    """The LLM could not be reached or failed on its side; a retry may succeed."""


class ModelNotFound(SemcacheError):
    """The LLM does not know the requested model."""


class LLMRejected(SemcacheError):
    """The LLM refused the request as malformed (bad options, for instance)."""


class LLMStreamBroken(LLMUnavailable):
    """The LLM's stream ended before its final message; the partial answer is discarded."""


class GenerationTimeout(SemcacheError):
    """The LLM call outlasted the server's bound on generation, whatever the callers' deadlines;
    every caller riding it is told, and nothing is stored."""


class Overloaded(SemcacheError):
    """Too many calls wait for the same resource (LLM calls, embeddings); the call is shed."""


class StoreUnavailable(SemcacheError):
    """Redis could not be reached; callers treat it as a miss, never as a failed request."""


class VerifierUnavailable(SemcacheError):
    """The pair verifier failed; the verified policy treats it as a miss."""


class EmbedderUnavailable(SemcacheError):
    """The embedder failed; the semantic layer treats it as a miss."""
