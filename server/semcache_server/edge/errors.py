"""The one table from domain errors to what each front answers: a gRPC status and an HTTP status.

Both fronts (`edge/grpc/`, `edge/http/`) look errors up here, so a caller of either learns the
same thing about the same failure, and the call record names it the same way (by the gRPC status
name, which the metrics and the request log have always used).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from semcache_server.core.domain import (
    Forbidden,
    GenerationTimeout,
    InvalidRequest,
    LLMRejected,
    LLMUnavailable,
    ModelNotFound,
    Overloaded,
    StoreUnavailable,
    Unauthenticated,
    excerpt,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 300
"""gRPC sends the message in a header (8 KB by default, percent-encoded): past it the call
fails as RESOURCE_EXHAUSTED instead. Messages echo callers' values only clipped (`excerpt`);
this is the last guard."""


@dataclass(frozen=True)
class Status:
    """What a front answers for one kind of failure."""

    name: str
    """The gRPC status code's name (grpc.StatusCode[name]); also the call record's status."""
    http: int


UNAUTHENTICATED = Status("UNAUTHENTICATED", 401)
PERMISSION_DENIED = Status("PERMISSION_DENIED", 403)
INVALID_ARGUMENT = Status("INVALID_ARGUMENT", 400)
NOT_FOUND = Status("NOT_FOUND", 404)
UNAVAILABLE = Status("UNAVAILABLE", 503)
RESOURCE_EXHAUSTED = Status("RESOURCE_EXHAUSTED", 429)
DEADLINE_EXCEEDED = Status("DEADLINE_EXCEEDED", 504)
INTERNAL = Status("INTERNAL", 500)
OK = Status("OK", 200)

STATUS_OF: tuple[tuple[type[BaseException], Status], ...] = (
    (Unauthenticated, UNAUTHENTICATED),
    (Forbidden, PERMISSION_DENIED),
    (InvalidRequest, INVALID_ARGUMENT),
    (LLMRejected, INVALID_ARGUMENT),
    (ModelNotFound, NOT_FOUND),
    (LLMUnavailable, UNAVAILABLE),  # LLMStreamBroken too
    (Overloaded, RESOURCE_EXHAUSTED),
    (GenerationTimeout, DEADLINE_EXCEEDED),
    (TimeoutError, DEADLINE_EXCEEDED),
    (StoreUnavailable, UNAVAILABLE),
)
"""The one table. An error of none of these types is INTERNAL: logged with its traceback, and
told to the caller only as "internal error"."""

INTERNAL_MESSAGE = "internal error; the server log has the details"


@dataclass(frozen=True)
class Refusal:
    """A domain error as a caller is told it: the status and a short message."""

    status: Status
    message: str


def refusal(error: BaseException) -> Refusal:
    """The status and message of an error (logging the unexpected ones, with their traceback)."""
    for error_type, status in STATUS_OF:
        if isinstance(error, error_type):
            return Refusal(status, excerpt(_message(error), MAX_MESSAGE_CHARS))
    log.exception("unexpected error", exc_info=error)
    return Refusal(INTERNAL, INTERNAL_MESSAGE)


def _message(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "the deadline passed before the answer was complete; nothing was stored"
    if isinstance(error, StoreUnavailable):
        # Only calls that need Redis itself (the admin service's) fail on it; Ask fails open.
        # Redis's words name its address, so they go to the log only.
        log.warning("a call failed on Redis: %s", error)
        return (
            "the cache's Redis is unreachable or refused the call (it may be down, or full "
            "at its maxmemory); retry later, and see the server log for what Redis said"
        )
    return str(error)
