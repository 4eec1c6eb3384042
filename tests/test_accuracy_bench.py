"""The accuracy bench and the calibration on a tiny generated data file: the scoring follows the
protocol, the chain behind it is the real one, and calibration writes a policy that loads.
Timing is not checked here; the bench prints it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from semcache_server.adapters.embedders.local import LocalEmbedder
from semcache_server.calibration.command import calibrate_async
from semcache_server.calibration.data import LabelledPair, Lookup, read_pairs, select, split_of
from semcache_server.calibration.fitting import choose_policy
from semcache_server.core.policy import CalibratedPolicy

from bench import accuracy

IDENTICAL = {"query": "How do I boil an egg?", "cached": "How do I boil an egg?", "duplicate": True}
PARAPHRASE = {
    "query": "How can I reverse a Python list?",
    "cached": "How do I reverse a list in Python?",
    "duplicate": True,
}
TRAP = {
    "query": "How do I convert Celsius to Fahrenheit?",
    "cached": "How do I convert Fahrenheit to Celsius?",
    "duplicate": False,
}
UNRELATED = {
    "query": "What is the tallest mountain in Africa?",
    "cached": "How do I bake sourdough bread at home?",
    "duplicate": False,
}
# Its nearest entry is PARAPHRASE's cached prompt, another pair's entry: a hit there is wrong.
OTHERS = {
    "query": "How do you reverse a list in Python?",
    "cached": "Which paint is best for a bathroom ceiling?",
    "duplicate": True,
}
ROWS = [IDENTICAL, PARAPHRASE, TRAP, UNRELATED, OTHERS]


def write_rows(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return write_rows(tmp_path / "tiny.jsonl", ROWS)


def by_name(result: accuracy.FileResult) -> dict[str, accuracy.PolicyResult]:
    return {row.name: row for row in result.results}


def test_the_bench_scores_by_the_protocol_through_the_real_chain(
    data_file: Path, embedder: LocalEmbedder
) -> None:
    (result,) = asyncio.run(
        accuracy.run([data_file], embedder, thresholds=(0.80, 0.99), guarded=(0.80,))
    )
    rows = by_name(result)
    assert result.cache_entries == len(ROWS)

    loose = rows["static 0.80"]
    # identical (exact layer) and paraphrase right; trap and the other entry's prompt wrong
    assert (loose.score.hits, loose.score.correct, loose.score.false_hits) == (4, 2, 2)
    assert loose.exact_hits == 1
    assert loose.score.duplicates == 3 and loose.score.queries == len(ROWS)
    assert loose.score.precision == pytest.approx(0.5)
    assert loose.score.recall == pytest.approx(2 / 3)
    assert loose.score.false_hit_rate == pytest.approx(2 / 5)

    guarded = rows["guarded 0.80"]
    assert guarded.rejected_by_guard == 1  # the swapped conversion
    assert guarded.score.false_hits == loose.score.false_hits - 1

    strict = rows["static 0.99"]
    assert strict.score.correct >= 1  # the exact hit never depends on the threshold

    default = result.results[-1]
    assert default.name.startswith("default: calibrated")
    assert default.score.hits == default.score.correct + default.score.false_hits
    for row in result.results:
        assert row.lookup_ms["n"] == len(ROWS)


def test_the_splits_partition_the_queries_and_the_cache_holds_every_cached_prompt(
    data_file: Path, embedder: LocalEmbedder
) -> None:
    pairs = read_pairs(data_file)
    halves = [select(pairs, "calibration"), select(pairs, "heldout")]
    assert sum(len(half) for half in halves) == len(pairs)
    assert {split_of(pair) for pair in halves[0]} <= {"calibration"}

    (result,) = asyncio.run(
        accuracy.run([data_file], embedder, split="heldout", thresholds=(0.80,))
    )
    assert result.cache_entries == len(ROWS)
    assert result.results[0].score.queries == len(halves[1])


def test_the_command_prints_json_for_machines(
    data_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = accuracy.main(["--data", str(data_file), "--json", "--no-ollama", "--thresholds", "0.9"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    (result,) = report["results"]
    assert result["data"] == data_file.name
    names = [row["policy"] for row in result["policies"]]
    assert names[0] == "static 0.90" and names[-1].startswith("default")
    for row in result["policies"]:
        assert row["hits"] == row["correct"] + row["false_hits"]
        assert row["lookup_p50_ms"] > 0
    assert report["embedding_ms"]["local/all-MiniLM-L6-v2"]["n"] > 0


def lookup(similarity: float, correct: bool, query: str = "q") -> Lookup:
    pair = LabelledPair(query, "cached " + query, duplicate=correct)
    return Lookup(pair, pair.cached, similarity, exact=False)


def test_calibration_reaches_its_target_on_what_it_saw() -> None:
    # Distinct prompts so the guards find nothing; correctness rises with the cosine.
    lookups = [
        lookup(0.80 + i * 0.0019, correct=(i % 10) < i // 10, query=f"topic{i} question")
        for i in range(100)
    ]
    policy, score = choose_policy(lookups, "test/embedder", target_precision=0.8)
    assert score.precision >= 0.8
    assert score.hits > 0
    assert 0.8 <= policy.gray_floor <= policy.accept_above <= 1
    assert CalibratedPolicy.from_json(policy.to_json()) == policy


def test_calibration_never_counts_what_a_guard_vetoes() -> None:
    trap = Lookup(
        LabelledPair("Is Python faster than Java?", "Is Java faster than Python?", False),
        "Is Java faster than Python?",
        0.99,
        exact=False,
    )
    lookups = [
        lookup(0.85 + i * 0.001, correct=i % 2 == 0, query=f"topic{i} question") for i in range(60)
    ]
    with_trap, score_with = choose_policy([*lookups, trap], "test/embedder", target_precision=0.5)
    _, score_without = choose_policy(lookups, "test/embedder", target_precision=0.5)
    assert score_with.hits == score_without.hits
    assert with_trap.provenance["vetoed_by_guards"] == 1


@pytest.mark.asyncio
async def test_calibrate_writes_a_policy_that_loads(
    tmp_path: Path, embedder: LocalEmbedder
) -> None:
    rows = [
        *ROWS,
        {
            "query": "What's the capital city of Austria?",
            "cached": "What is the capital of Austria?",
            "duplicate": True,
        },
        {
            "query": "How do I make bread with no yeast?",
            "cached": "How do I make bread with yeast?",
            "duplicate": False,
        },
        {
            "query": "Which time zone is Chicago in?",
            "cached": "What time zone is Chicago in?",
            "duplicate": True,
        },
        {
            "query": "What is the best laptop for students?",
            "cached": "What is the best laptop for gamers?",
            "duplicate": False,
        },
        {
            "query": "How do I learn to play guitar?",
            "cached": "How can I learn guitar?",
            "duplicate": True,
        },
        {
            "query": "What are good books about history?",
            "cached": "What are good books about physics?",
            "duplicate": False,
        },
    ]
    data = write_rows(tmp_path / "calibrate.jsonl", rows)
    policy = await calibrate_async(
        [data], embedder, split="all", target_precision=0.95, gray_floor=0.5
    )
    path = tmp_path / "policies" / "test.json"
    policy.save(path)
    loaded = CalibratedPolicy.load(path)
    assert loaded == policy
    assert loaded.embedder == embedder.model_id
    assert loaded.provenance["data"] == ["calibrate.jsonl"]
    assert loaded.provenance["score_on_calibration"]["precision"] >= 0.95
    assert loaded.provenance["gray_zone_pairs_fitted"] > 0  # the model was fitted, not skipped
