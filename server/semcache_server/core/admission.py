"""Admission control: a bounded number of calls in flight and a bounded queue in front of them.

Past both bounds a caller is refused at once (`Overloaded`, RESOURCE_EXHAUSTED at the edge) rather
than left to wait until its deadline: a shed call costs microseconds, a queued one holds memory
and a connection and usually times out anyway. Exact hits never pass through here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from semcache_server.core.domain import Overloaded
from semcache_server.core.observing import observer


class Admission:
    def __init__(self, what: str, limit: int, queue: int, settings: str) -> None:
        """what: named in the refusal; settings: the options that raise the bounds."""
        if limit < 1 or queue < 0:
            raise ValueError(f"{what}: need at least 1 in flight and a queue of 0 or more")
        self._what = what
        self._limit = limit
        self._queue = queue
        self._settings = settings
        self._active = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if need be; Overloaded when the queue is full."""
        if self._active < self._limit and not self._waiting:
            self._active += 1
            return
        if len(self._waiting) >= self._queue:
            observer().shed(self._what)
            raise Overloaded(
                f"too many {self._what}: {self._limit} in flight and {self._queue} waiting, "
                f"the most this server allows ({self._settings}); retry later"
            )
        ticket = asyncio.get_running_loop().create_future()
        self._waiting.append(ticket)
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():
                self.release()  # the slot was handed over just as the caller left
            else:
                # release() may have dropped the cancelled ticket already, between the
                # cancellation and this line.
                with contextlib.suppress(ValueError):
                    self._waiting.remove(ticket)
            raise

    def release(self) -> None:
        """Give the slot to the next in the queue, or free it."""
        while self._waiting:
            ticket = self._waiting.popleft()
            if not ticket.done():
                ticket.set_result(None)
                return
        self._active -= 1
