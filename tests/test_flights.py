"""The flight alone: riders, the last one leaving, failures."""

from __future__ import annotations

import asyncio

import pytest
from semcache_server.core.flights import Flight, Landing

from tests.conftest import until


async def slow_answer(flight: Flight) -> Landing:
    for word in ("one ", "two ", "three"):
        flight.append(word)
        await asyncio.sleep(0.05)
    return Landing(stored=False, finish=None)


async def said(flight: Flight) -> int:
    return len(flight.deltas)


async def read_all(flight: Flight) -> str:
    return "".join([text async for text in flight.ride()])


@pytest.mark.asyncio
async def test_a_rider_that_boards_late_reads_from_the_first_token() -> None:
    flight = Flight()
    flight.board()
    flight.take_off(slow_answer)
    await until(lambda: said(flight), lambda words: words >= 2)  # boards after two words
    flight.board()
    texts = await asyncio.gather(read_all(flight), read_all(flight))
    assert list(texts) == ["one two three"] * 2


@pytest.mark.asyncio
async def test_the_last_rider_leaving_cancels_the_call_and_nobody_boards_it_after() -> None:
    flight = Flight()
    flight.board()
    flight.take_off(slow_answer)
    await until(lambda: said(flight), lambda words: words >= 1)  # under way
    flight.leave()
    assert not flight.boardable
    await flight.wait_landed()
    assert flight.landing is None and isinstance(flight.error, asyncio.CancelledError)


@pytest.mark.asyncio
async def test_a_failure_reaches_every_rider() -> None:
    async def failing(flight: Flight) -> Landing:
        flight.append("partial")
        await asyncio.sleep(0.02)
        raise ConnectionError("the LLM went away")

    flight = Flight()
    flight.board()
    flight.board()
    flight.take_off(failing)
    outcomes = await asyncio.gather(read_all(flight), read_all(flight), return_exceptions=True)
    assert [type(outcome) for outcome in outcomes] == [ConnectionError, ConnectionError]
    assert not flight.boardable
