"""The flight alone: riders, the last one leaving, failures; and the flights of a replica with
their claims across replicas, over claims kept in memory (tests/test_claims.py has Redis's)."""

from __future__ import annotations

import asyncio

import pytest
from semcache_server.core.domain import CachedEntry, FinishReason, StoreUnavailable
from semcache_server.core.flights import ClaimSettings, Flight, FlightKey, Flights, Landing, Work
from semcache_server.core.outages import OutageLog
from semcache_server.core.ports import LLMFinish

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


# --- Flights: the registry and the claims across replicas, over claims kept in memory ------------

ENTRY = "0" * 32
KEY: FlightKey = (ENTRY, False)
OTHER_REPLICA = "another replica's token"


class MemoryClaims:
    """Claims as Redis keeps them (a holder a question; no leases), with what was asked."""

    def __init__(self) -> None:
        self.holders: dict[str, str] = {}
        self.asked: list[str] = []
        self.down = False

    async def claim(self, entry_id: str, token: str, seconds: float) -> bool:
        self.asked.append("claim")
        if self.down:
            raise StoreUnavailable("Redis: down")
        holder = self.holders.get(entry_id)
        if holder is not None and holder != token:
            return False
        self.holders[entry_id] = token
        return True

    async def release(self, entry_id: str, token: str) -> None:
        self.asked.append("release")
        if self.down:
            raise StoreUnavailable("Redis: down")
        if self.holders.get(entry_id) == token:
            del self.holders[entry_id]


def stored_entry(text: str) -> CachedEntry:
    return CachedEntry(
        entry_id=ENTRY,
        partition="p",
        prompt="Which replica answers?",
        text=text,
        model="llama3.2",
        system="",
        options={},
        history=(),
        namespace="",
        embedding_model="local/all-MiniLM-L6-v2",
        created_at=0.0,
    )


class Replica:
    """Flights over MemoryClaims, the answers other replicas stored, and what happened."""

    def __init__(self, wait_seconds: float = 10.0, lease_seconds: float = 5.0) -> None:
        self.claims = MemoryClaims()
        self.stored: dict[str, CachedEntry] = {}
        self.outages = OutageLog("claims under test")
        self.landed = 0
        self.worked = 0
        self.flights = Flights(
            self.claims,
            self.lookup,
            self.outages,
            ClaimSettings(
                max_generation_seconds=30.0,
                wait_seconds=wait_seconds,
                lease_seconds=lease_seconds,
                poll_seconds=0.01,
            ),
        )

    async def lookup(self, entry_id: str) -> CachedEntry | None:
        return self.stored.get(entry_id)

    def work(self, text: str, gate: asyncio.Event | None = None) -> Work:
        async def answer(flight: Flight) -> Landing:
            self.worked += 1
            flight.departed.set()
            flight.append(text)
            if gate is not None:
                await gate.wait()
            return Landing(stored=True, finish=LLMFinish(FinishReason.STOP))

        return answer

    def on_landed(self) -> None:
        self.landed += 1

    async def launch(self, work: Work, *, claim: bool = True) -> Flight:
        return await self.flights.launch(KEY, work, claim=claim, landed=self.on_landed)


@pytest.mark.asyncio
async def test_an_identical_question_boards_the_flight_which_leaves_the_registry_on_landing() -> (
    None
):
    replica = Replica()
    gate = asyncio.Event()
    flight = await replica.launch(replica.work("the answer", gate))
    assert replica.flights.board(KEY) is flight and flight.riders == 2
    assert replica.flights.board((ENTRY, True)) is None  # it stores; a skip_store call does not
    gate.set()
    texts = await asyncio.gather(read_all(flight), read_all(flight))
    await flight.wait_landed()
    assert list(texts) == ["the answer"] * 2 and replica.worked == 1
    assert replica.flights.board(KEY) is None and len(replica.flights) == 0
    assert replica.landed == 1


@pytest.mark.asyncio
async def test_the_claim_is_held_while_the_call_runs_renewed_and_released_when_it_lands() -> None:
    replica = Replica(lease_seconds=0.15)  # renewed every 50 ms
    gate = asyncio.Event()
    flight = await replica.launch(replica.work("the answer", gate))
    assert replica.claims.holders == {ENTRY: replica.flights.token}
    asked = await until(lambda: said_claim(replica), lambda claims: claims >= 3)
    gate.set()
    await flight.wait_landed()
    assert asked >= 3  # taken, then renewed
    assert replica.claims.holders == {} and replica.claims.asked[-1] == "release"
    assert not flight.remote


async def said_claim(replica: Replica) -> int:
    return replica.claims.asked.count("claim")


@pytest.mark.asyncio
async def test_a_question_another_replica_claimed_is_answered_by_its_stored_entry() -> None:
    replica = Replica()
    replica.claims.holders[ENTRY] = OTHER_REPLICA
    flight = await replica.launch(replica.work("asked again"))
    assert flight.remote  # waiting, with no request of its own to let leave first
    replica.stored[ENTRY] = stored_entry("the other replica's answer")
    assert await read_all(flight) == "the other replica's answer"
    assert flight.landing == Landing(stored=False, finish=LLMFinish(FinishReason.STOP))
    assert replica.worked == 0 and replica.claims.holders == {ENTRY: OTHER_REPLICA}


@pytest.mark.asyncio
async def test_a_claim_its_holder_gave_up_is_taken_and_answered_here() -> None:
    replica = Replica()
    replica.claims.holders[ENTRY] = OTHER_REPLICA
    flight = await replica.launch(replica.work("answered here"))
    del replica.claims.holders[ENTRY]  # its call failed, or its lease ran out
    assert await read_all(flight) == "answered here"
    await flight.wait_landed()
    assert replica.worked == 1 and replica.claims.holders == {}


@pytest.mark.asyncio
async def test_when_the_wait_runs_out_this_replica_asks_the_llm_without_the_claim() -> None:
    replica = Replica(wait_seconds=0.05)
    replica.claims.holders[ENTRY] = OTHER_REPLICA
    flight = await replica.launch(replica.work("answered here"))
    assert await read_all(flight) == "answered here"
    await flight.wait_landed()
    assert replica.worked == 1
    assert replica.claims.holders == {ENTRY: OTHER_REPLICA}  # not ours to drop
    assert "release" not in replica.claims.asked


@pytest.mark.asyncio
async def test_a_claim_store_that_is_down_costs_the_claim_not_the_answer() -> None:
    replica = Replica()
    replica.claims.down = True
    flight = await replica.launch(replica.work("answered anyway"))
    assert await read_all(flight) == "answered anyway"
    await flight.wait_landed()
    assert not flight.remote and replica.worked == 1
    assert replica.outages.failures == 2  # the claim, and its release


@pytest.mark.asyncio
async def test_a_refresh_neither_claims_nor_waits() -> None:
    replica = Replica()
    replica.claims.holders[ENTRY] = OTHER_REPLICA
    flight = await replica.launch(replica.work("refreshed"), claim=False)
    assert await read_all(flight) == "refreshed"
    await flight.wait_landed()
    assert replica.claims.asked == [] and not flight.remote


@pytest.mark.asyncio
async def test_the_last_rider_leaving_a_wait_ends_the_flight_without_asking_the_llm() -> None:
    replica = Replica()
    replica.claims.holders[ENTRY] = OTHER_REPLICA
    flight = await replica.launch(replica.work("never asked"))
    flight.leave()
    await flight.wait_landed()
    assert isinstance(flight.error, asyncio.CancelledError) and replica.worked == 0
    assert replica.claims.holders == {ENTRY: OTHER_REPLICA} and replica.landed == 1
    assert replica.flights.board(KEY) is None


@pytest.mark.asyncio
async def test_a_failed_call_releases_its_claim_and_lands_once() -> None:
    replica = Replica()

    async def failing(flight: Flight) -> Landing:
        flight.departed.set()
        raise ConnectionError("the LLM went away")

    flight = await replica.launch(failing)
    with pytest.raises(ConnectionError):
        await read_all(flight)
    await flight.wait_landed()
    assert replica.claims.holders == {} and replica.landed == 1
