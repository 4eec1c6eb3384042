"""How the core tells whoever observes a request what it did: stage timings, the nearest cached
prompt, tokens saved, shed work and LLM calls (`RequestObserver` in `core/ports.py`).

The edge sets an observer for each call with `observe`; the core reports to `observer()` at its
stage boundaries. The observer lives in a context variable, so the tasks a request starts (its
LLM flight, its embedding) report to it too. Without one, reports go to a no-op.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Iterator
from contextvars import ContextVar, Token

from semcache_server.core.domain import (
    LLMRejected,
    LLMStreamBroken,
    LLMUnavailable,
    ModelNotFound,
    Query,
    TextDelta,
)
from semcache_server.core.ports import (
    LLMBackend,
    LLMEvent,
    LLMFinish,
    LLMOutcome,
    RequestObserver,
    RequestSent,
    Stage,
)


class Unobserved:
    """Hears nothing: the observer of work no call started (benchmarks, tests of the core)."""

    def stage(self, stage: Stage, seconds: float) -> None:
        pass

    def nearest(self, similarity: float) -> None:
        pass

    def tokens_saved(self, tokens: int) -> None:
        pass

    def shed(self, resource: str) -> None:
        pass

    def llm_call(self, outcome: LLMOutcome, completion_tokens: int) -> None:
        pass


UNOBSERVED: RequestObserver = Unobserved()

_current: ContextVar[RequestObserver] = ContextVar("semcache_request_observer")


def observer() -> RequestObserver:
    """The observer of the request being served here (a no-op when there is none)."""
    return _current.get(UNOBSERVED)


def observe(watcher: RequestObserver) -> Token[RequestObserver]:
    """Report what happens in this context, and in the tasks it starts, to watcher."""
    return _current.set(watcher)


@contextlib.contextmanager
def timed(stage: Stage) -> Iterator[None]:
    """Report how long the block took as stage (a failed block too)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        observer().stage(stage, time.perf_counter() - started)


_OUTCOMES: tuple[tuple[type[Exception], LLMOutcome], ...] = (
    (LLMStreamBroken, LLMOutcome.STREAM_BROKEN),  # before its base class, LLMUnavailable
    (LLMUnavailable, LLMOutcome.UNAVAILABLE),
    (ModelNotFound, LLMOutcome.MODEL_NOT_FOUND),
    (LLMRejected, LLMOutcome.REJECTED),
)


def _failure(error: Exception) -> LLMOutcome:
    for error_type, outcome in _OUTCOMES:
        if isinstance(error, error_type):
            return outcome
    return LLMOutcome.FAILED


class ObservedLLM:
    """An LLM backend that tells the observer of the request that started a call how long the
    call took to its first token and to its end, how it ended, and what it generated."""

    def __init__(self, llm: LLMBackend) -> None:
        self._llm = llm

    async def stream(
        self, query: Query, on_sent: RequestSent | None = None
    ) -> AsyncGenerator[LLMEvent, None]:
        watcher = observer()
        started = time.perf_counter()
        first_token = True
        outcome = LLMOutcome.CANCELLED
        tokens = 0
        try:
            async with contextlib.aclosing(self._llm.stream(query, on_sent)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        if first_token:
                            watcher.stage(Stage.LLM_FIRST_TOKEN, time.perf_counter() - started)
                            first_token = False
                    elif isinstance(event, LLMFinish):
                        watcher.stage(Stage.LLM_TOTAL, time.perf_counter() - started)
                        outcome, tokens = LLMOutcome.COMPLETED, event.completion_tokens
                    yield event
        except Exception as error:
            outcome = _failure(error)
            raise
        finally:
            watcher.llm_call(outcome, tokens)

    async def aclose(self) -> None:
        await self._llm.aclose()
