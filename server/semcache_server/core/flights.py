"""Single-flight: concurrent callers with the same question share one LLM call.

A flight owns the LLM call in a task of its own, so the caller that started it may leave without
cancelling it for the others. Every rider reads the answer from its first token, however late it
joined. The call is cancelled (and Ollama stops generating) only when the last rider has left.
A failure reaches every rider, and nothing is stored (the flight stores only a clean finish).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from semcache_server.core.ports import LLMFinish

FlightKey = tuple[str, bool]
"""(entry id, skip_store): callers share a call only if it will store (or not) for all of them."""


@dataclass(frozen=True)
class Landing:
    """How a flight ended well."""

    stored: bool
    finish: LLMFinish | None


class Flight:
    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.landing: Landing | None = None
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self.remote = False
        """The answer comes from another replica's LLM call, read from Redis once stored."""
        self.departed = asyncio.Event()
        """Set once the LLM request has left (or the flight ended): other work may start."""
        self._riders = 0
        self._abandoned = False
        self._task: asyncio.Task[None] | None = None

    def take_off(self, work: Callable[[Flight], Coroutine[Any, Any, Landing]]) -> None:
        """Run work(flight) in its own task; it appends deltas and returns the landing."""
        self._task = asyncio.create_task(self._run(work))

    async def _run(self, work: Callable[[Flight], Coroutine[Any, Any, Landing]]) -> None:
        try:
            self.landing = await work(self)
        except asyncio.CancelledError:
            self.error = asyncio.CancelledError()
        except Exception as error:
            self.error = error
        finally:
            self.departed.set()
            self._notify()

    def append(self, text: str) -> None:
        self.deltas.append(text)
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    @property
    def riders(self) -> int:
        return self._riders

    @property
    def abandoned(self) -> bool:
        """Every rider has left. Read by the flight's own work: the cancellation this sends may
        be swallowed by a library call under way (redis-py completes the command)."""
        return self._abandoned

    @property
    def boardable(self) -> bool:
        """False once the last rider left (its call is being cancelled) or the call ended in
        failure: a newcomer launches a flight of its own."""
        return not self._abandoned and self.error is None

    def board(self) -> None:
        self._riders += 1

    def leave(self) -> None:
        """The last rider to leave cancels a call still under way: nobody would read it."""
        self._riders -= 1
        if self._riders == 0 and self._task is not None and not self._task.done():
            self._abandoned = True
            self._task.cancel()

    async def ride(self) -> AsyncGenerator[str, None]:
        """The answer's text from the start; then returns, or raises the flight's error."""
        read = 0
        while True:
            changed = self._changed
            while read < len(self.deltas):
                yield self.deltas[read]
                read += 1
            if self.error is not None:
                raise self.error
            if self.landing is not None:
                return
            await changed.wait()

    async def wait_landed(self) -> None:
        """For tests and shutdown: until the call has ended, however it ended."""
        if self._task is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._task)
