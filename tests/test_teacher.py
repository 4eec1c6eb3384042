"""The verifier's teacher, at training time: its reading (a logistic over yes-minus-no), the
training pairs it makes, and the candidate pairs it labels. The model itself runs only where
llama-cpp-python (the teacher extra) and the assembled model file are present; CI has neither,
so that part skips there, saying why."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from semcache_server.calibration import teacher
from semcache_server.calibration.data import LabelledPair
from semcache_server.calibration.teacher_pairs import groups_of, interleaved
from semcache_server.calibration.verifier_data import TrainingPair


def test_the_reading_orders_probabilities_by_score_and_crosses_half_between_the_classes() -> None:
    scores = [-3.0, -2.0, -1.5, -0.5, 0.5, 1.0, 2.5, 3.0]
    labels = [False, False, False, True, False, True, True, True]
    reading = teacher.fit_reading(scores, labels)
    probabilities = [reading.probability(s) for s in scores]
    assert probabilities == sorted(probabilities)
    assert probabilities[0] < 0.2 and probabilities[-1] > 0.8
    assert 0.2 < reading.probability(0.0) < 0.8


def scored_row(query: str, cached: str, score: float, origin: str, **more: object) -> str:
    return json.dumps(
        {"query": query, "cached": cached, "origin": origin, "teacher_score": score, **more}
    )


def test_taught_pairs_carry_its_probability_neighbours_go_both_ways_trusted_labels_stay(
    tmp_path: Path,
) -> None:
    scored = tmp_path / "labels.jsonl"
    scored.write_text(
        scored_row("How tall is Everest?", "What is the height of Everest?", 4.0, "mined")
        + "\n"
        + scored_row("What melts at 0 C?", "What melts at 100 C?", -4.0, "wordnet:sibling")
        + "\n"
        + scored_row("Is 7 prime?", "Is 9 prime?", 2.0, "generated:number", constructed=0.0)
        + "\n",
        encoding="utf-8",
    )
    reading = teacher.Reading(weight=1.0, bias=0.0)
    pairs = teacher.training_pairs([scored], reading, copies=1)
    assert len(pairs) == 3
    mined = [p for p in pairs if p.origin == "teacher:mined"]
    assert {(p.query, p.cached) for p in mined} == {
        ("How tall is Everest?", "What is the height of Everest?"),
        ("What is the height of Everest?", "How tall is Everest?"),
    }
    assert all(p.label > 0.95 for p in mined)
    (sibling,) = [p for p in pairs if p.origin == "teacher:wordnet"]
    assert sibling.label < 0.05


def test_the_reading_is_fitted_on_the_calibration_half_only(tmp_path: Path) -> None:
    """A held-out pair whose label contradicts its score changes nothing."""
    from semcache_server.calibration.data import split_of

    rows = []
    for i in range(40):
        same = i % 2 == 0
        rows.append((f"question {i}", f"other {i}", 3.0 if same else -3.0, same))
    heldout = next(
        (q, c)
        for q, c in ((f"q{i}", f"c{i}") for i in range(100))
        if split_of(LabelledPair(q, c, True)) == "heldout"
    )
    lines = [scored_row(q, c, s, "own", constructed=float(same)) for q, c, s, same in rows]
    base = tmp_path / "base.jsonl"
    base.write_text("\n".join(lines) + "\n", encoding="utf-8")
    poisoned = tmp_path / "poisoned.jsonl"
    poisoned.write_text(
        "\n".join([*lines, scored_row(*heldout, 9.0, "own", constructed=0.0)]) + "\n",
        encoding="utf-8",
    )
    assert teacher.reading_from(base) == teacher.reading_from(poisoned)


def test_groups_join_every_text_quora_linked_duplicate_or_not() -> None:
    pairs = [
        LabelledPair("a", "b", True),
        LabelledPair("b", "c", False),
        LabelledPair("d", "e", True),
    ]
    group = groups_of(pairs)
    assert group["a"] == group["b"] == group["c"]
    assert group["d"] == group["e"] != group["a"]


def test_every_prefix_of_the_interleaved_candidates_keeps_the_mix() -> None:
    streams = {
        "mined": [TrainingPair(f"m{i}", "x", -1.0, "mined") for i in range(100)],
        "frames": [TrainingPair(f"f{i}", "x", 1.0, "frames") for i in range(100)],
    }
    mixed = list(interleaved(streams, {"mined": 0.75, "frames": 0.25}))
    assert len(mixed) == 200
    first = mixed[:40]
    assert sum(p.origin == "mined" for p in first) == 30
    assert [p.query for p in mixed if p.origin == "frames"] == [f"f{i}" for i in range(100)]


def test_the_prompt_puts_the_instruction_first_and_keeps_each_question_on_one_line() -> None:
    a = teacher.prompt("How do I\nundo a commit?", "How can I revert a commit?")
    b = teacher.prompt("Who painted the Mona Lisa?", "Which artist made the Mona Lisa?")
    shared = a[: a.index("Question 1")]
    assert b.startswith(shared) and teacher.INSTRUCTION in shared
    assert "Question 1: How do I undo a commit?\n" in a


MODEL_PRESENT = (teacher.default_dir() / teacher.MODEL_FILE).exists()


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or not MODEL_PRESENT,
    reason="the teacher needs llama-cpp-python (the teacher extra) and its model file "
    "(python -m semcache_server.calibration.teacher fetch)",
)
def test_the_teacher_scores_a_paraphrase_above_its_look_alike() -> None:
    model = teacher.Teacher(teacher.default_dir() / teacher.MODEL_FILE, threads=2)
    paraphrase = model.score("Who painted the Mona Lisa?", "Which artist created the Mona Lisa?")
    look_alike = model.score("What is the fastest land animal?", "What is the slowest land animal?")
    assert paraphrase > look_alike
