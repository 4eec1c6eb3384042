"""Admission control on its own: a waiter that leaves the queue leaves with CancelledError."""

from __future__ import annotations

import asyncio

import pytest
from semcache_server.core.admission import Admission


@pytest.mark.asyncio
async def test_a_waiter_cancelled_just_before_a_slot_frees_leaves_cancelled() -> None:
    admission = Admission("things", 1, 2, "--max-things")
    await admission.acquire()
    waiter = asyncio.ensure_future(admission.acquire())
    await asyncio.sleep(0)  # queued
    waiter.cancel()
    admission.release()  # drops the cancelled ticket before the waiter sees its cancellation

    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(admission.acquire(), 1)  # the slot is free, once
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(admission.acquire(), 0.05)
