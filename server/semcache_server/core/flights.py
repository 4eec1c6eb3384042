"""Single-flight: concurrent callers with the same question share one LLM call, on this replica
and across replicas.

A flight owns the LLM call in a task of its own, so the caller that started it may leave without
cancelling it for the others. Every rider reads the answer from its first token, however late it
joined. The call is cancelled (and Ollama stops generating) only when the last rider has left.
A failure reaches every rider, and nothing is stored (the flight stores only a clean finish).

`Flights` keeps this replica's flights by question, and a claim (the `Claims` port: a key in
Redis in the server) says that one replica is generating the answer: the others wait, a bounded
time, for the stored entry instead of asking the LLM again. The chain hands a flight the work
that generates and stores the answer; what happens around it (the claim, its renewals, the wait)
is decided here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from semcache_server.core.domain import CachedEntry, FinishReason, StoreUnavailable
from semcache_server.core.outages import OutageLog
from semcache_server.core.ports import Claims, LLMFinish

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

    def take_off(self, work: Work) -> None:
        """Run work(flight) in its own task; it appends deltas and returns the landing."""
        self._task = asyncio.create_task(self._run(work))

    async def _run(self, work: Work) -> None:
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


Work = Callable[[Flight], Coroutine[Any, Any, Landing]]
"""What a flight does: generate the answer (appending its text to the flight) and store it."""

StoredLookup = Callable[[str], Awaitable[CachedEntry | None]]
"""The exact layer's lookup: how a replica waiting on another's claim sees the answer stored."""


@dataclass(frozen=True)
class ClaimSettings:
    """How replicas share one LLM call through claims."""

    max_generation_seconds: float
    """The longest an LLM call may take (the chain's bound); renewals stop past it in any case."""
    wait_seconds: float = 30.0
    """How long callers on other replicas wait for the answer of a replica that claimed it."""
    lease_seconds: float = 5.0
    """A claim's life in Redis, renewed every third of it while its LLM call runs: a claim whose
    release was lost (Redis killed or paused at the wrong moment) blocks nobody for longer."""
    poll_seconds: float = 0.05
    """How often a waiting replica looks for the stored answer (and for the claim's end)."""


class Flights:
    """This replica's flights by question, and the claims that make one call answer every
    replica. A failing claim store is a miss of the claim (this replica asks the LLM itself,
    nobody can wait for a stored answer then), counted in the store's outage log."""

    def __init__(
        self,
        claims: Claims,
        stored: StoredLookup,
        outages: OutageLog,
        settings: ClaimSettings,
    ) -> None:
        self._claims = claims
        self._stored = stored
        self._outages = outages
        self._settings = settings
        self._flights: dict[FlightKey, Flight] = {}
        self.token = uuid.uuid4().hex
        """Names this replica's claims."""

    def __len__(self) -> int:
        return len(self._flights)

    def board(self, key: FlightKey) -> Flight | None:
        """Join the flight already under way for this question, if there is one."""
        flight = self._flights.get(key)
        if flight is None or not flight.boardable:
            return None
        flight.board()
        return flight

    async def launch(
        self, key: FlightKey, work: Work, *, claim: bool, landed: Callable[[], None]
    ) -> Flight:
        """Start work as a flight others may board, with its caller aboard; returns once its
        request has left (the flight's `departed`).

        claim: take the question's claim first, or wait for the replica that holds it; False
        (a refresh, which always asks the LLM) neither claims nor waits. landed is called once
        the flight has ended, however it ended, after it left the registry.
        """
        flight = Flight()
        flight.board()
        self._flights[key] = flight
        entry_id = key[0]

        async def fly(flight: Flight) -> Landing:
            try:
                return await self._fly(flight, entry_id, work, claim)
            finally:
                if self._flights.get(key) is flight:
                    del self._flights[key]
                landed()

        flight.take_off(fly)
        await flight.departed.wait()
        return flight

    async def _fly(self, flight: Flight, entry_id: str, work: Work, claim: bool) -> Landing:
        try:
            claimed, stored_elsewhere = (
                await self._claim_or_wait(flight, entry_id) if claim else (True, None)
            )
        except asyncio.CancelledError:
            # The claim may have been taken in Redis as the reply was lost to the cancellation.
            await self._release(entry_id)
            raise
        if flight.abandoned:  # its cancellation was swallowed on the way
            if claimed and claim:
                await self._release(entry_id)
            raise asyncio.CancelledError
        if stored_elsewhere is not None:
            flight.append(stored_elsewhere)
            return Landing(stored=False, finish=LLMFinish(FinishReason.STOP))
        held = claimed and claim
        landed = asyncio.Event()
        renewal = (
            asyncio.create_task(self._renew(entry_id, landed), name="semcache-claim")
            if held
            else None
        )
        try:
            return await work(flight)
        finally:
            landed.set()
            if renewal is not None:
                # Its renewal under way, if any, ends first: one that reached Redis after the
                # release would take the claim again.
                await asyncio.wait({renewal})
            if held:
                await self._release(entry_id)

    async def _renew(self, entry_id: str, landed: asyncio.Event) -> None:
        """Renew the claim every third of a lease until the flight has landed. Stopped by the
        event, never by cancelling it: redis-py often completes a command and swallows the
        cancellation, and a renewal loop that survived its flight held the claim for good. Bound
        by the longest a flight may generate, in case the event is never set."""
        lease = self._settings.lease_seconds
        loop = asyncio.get_running_loop()
        until = loop.time() + self._settings.max_generation_seconds + lease
        while loop.time() < until:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(lease / 3):
                    await landed.wait()
            if landed.is_set():
                return
            await self._take(entry_id)

    async def _claim_or_wait(self, flight: Flight, entry_id: str) -> tuple[bool, str | None]:
        """(True, None) once this replica holds the claim; (False, text) when another replica
        stored the answer meanwhile; (False, None) when the wait ran out. A claim this replica
        holds already (one whose release was lost) is its own to take again."""
        if await self._take(entry_id):
            return True, None
        flight.remote = True
        flight.departed.set()  # no request of ours to let leave first
        deadline = time.monotonic() + self._settings.wait_seconds
        while time.monotonic() < deadline and not flight.abandoned:
            await asyncio.sleep(self._settings.poll_seconds)
            entry = await self._stored(entry_id)
            if entry is not None:
                return False, entry.text
            if await self._take(entry_id):
                return True, None  # the other replica gave up, or its lease ran out: ours now
        return False, None

    async def _take(self, entry_id: str) -> bool:
        """True when this replica should generate the answer: it took (or renewed) the claim, or
        the claim store is down (nobody can wait for a stored answer then)."""
        try:
            return await self._claims.claim(entry_id, self.token, self._settings.lease_seconds)
        except StoreUnavailable as error:
            self._outages.failed(error)
            return True

    async def _release(self, entry_id: str) -> None:
        try:
            await self._claims.release(entry_id, self.token)
        except StoreUnavailable as error:
            self._outages.failed(error)
