"""A Redis flushed or restored from an older file under running replicas: no replica may serve an
entry Redis no longer holds, from its hot copies or its index, even when nothing is written after
it (a write would show the gap in the change feed). Real `semcache serve` processes on one real
redis-server."""

from __future__ import annotations

from functools import partial

import redis
from semcache.v1 import semcache_pb2 as pb
from semcache_server.testing.redis_process import RedisProcess
from semcache_server.testing.serve_process import ServeProcess

from tests.conftest import PATIENCE
from tests.test_redis_faults import within
from tests.test_replicas import PAIRS, Replicas, ask, replicas, semantic_hit_within

__all__ = ["replicas"]  # the fixture, used by name

NOTICED_WITHIN = 10.0
"""Seconds a replica may take to notice (it checks twice a second while nothing is written)."""


def served_hot(replica: ServeProcess, pairs: list[tuple[str, str]]) -> None:
    """Each question an exact hit and each paraphrase a semantic hit, asked twice: the second
    time from the copies kept in memory."""
    for question, paraphrase in pairs:
        assert semantic_hit_within(replica.target, paraphrase, PATIENCE) is not None
        for _ in range(2):
            assert ask(replica.target, question).source == pb.SOURCE_EXACT
            assert ask(replica.target, paraphrase, skip_store=True).source == pb.SOURCE_SEMANTIC


def from_the_llm(replica: ServeProcess, prompt: str) -> bool:
    """skip_store: an answer stored meanwhile would be a write, which shows a gap by itself."""
    return ask(replica.target, prompt, skip_store=True).source == pb.SOURCE_LLM


def exact_hit(replica: ServeProcess, prompt: str) -> bool:
    return ask(replica.target, prompt, skip_store=True).source == pb.SOURCE_EXACT


def test_a_flushed_redis_is_noticed_without_a_write(
    replicas: Replicas, redis_process: RedisProcess
) -> None:
    first, second = replicas.start("a"), replicas.start("b")
    for question, _ in PAIRS:
        assert ask(first.target, question).stored
    for replica in (first, second):
        served_hot(replica, PAIRS)

    with redis.Redis.from_url(redis_process.url) as client:
        client.flushall()

    for replica in (first, second):
        noticed = within(NOTICED_WITHIN, partial(from_the_llm, replica, PAIRS[0][0]))
        assert noticed, f"{replica.target} still serves a flushed entry after {NOTICED_WITHIN} s"
    after = {
        (replica.target, prompt): ask(replica.target, prompt, skip_store=True).source
        for replica in (first, second)
        for pair in PAIRS
        for prompt in pair
    }
    assert set(after.values()) == {pb.SOURCE_LLM}, after


def test_a_redis_restarted_from_an_older_file_is_noticed_without_a_write(
    replicas: Replicas, redis_process: RedisProcess
) -> None:
    first, second = replicas.start("a"), replicas.start("b")
    kept, lost = PAIRS[:2], PAIRS[2:]
    for question, _ in kept:
        assert ask(first.target, question).stored
    with redis.Redis.from_url(redis_process.url) as client:
        client.save()  # the older file: the first answers only
        for question, _ in lost:
            assert ask(first.target, question).stored
        for replica in (first, second):
            served_hot(replica, PAIRS)

    # Restarted from that file: stopped without saving (no save points), started on its port.
    redis_process.stop()
    redis_process.start()

    for replica in (first, second):  # Redis answers this replica again: kept answers are back
        back = within(NOTICED_WITHIN, partial(exact_hit, replica, kept[0][0]))
        assert back, f"{replica.target} does not use the restarted Redis after {NOTICED_WITHIN} s"
    for replica in (first, second):
        noticed = within(NOTICED_WITHIN, partial(from_the_llm, replica, lost[0][0]))
        assert noticed, f"{replica.target} still serves a lost entry after {NOTICED_WITHIN} s"
    after = {
        (replica.target, prompt): ask(replica.target, prompt, skip_store=True).source
        for replica in (first, second)
        for pair in lost
        for prompt in pair
    }
    still = [ask(r.target, question).source for r in (first, second) for question, _ in kept]
    assert set(after.values()) == {pb.SOURCE_LLM}, after
    assert set(still) == {pb.SOURCE_EXACT}
    for replica in (first, second):  # the index was rebuilt from what Redis holds
        for _, paraphrase in kept:
            assert semantic_hit_within(replica.target, paraphrase, PATIENCE) is not None
