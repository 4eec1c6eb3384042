"""Frame rewrites, aliases and sibling swaps: training pairs whose label is known by construction.

Pure Python over the shipped word lists: no network, no model. Each test states one property of
`semcache_server.calibration.frames` on questions written for these tests.
"""

from __future__ import annotations

import difflib
import random
import re

import pytest
from semcache_server.calibration import frames
from semcache_server.calibration.frames import (
    alias_swaps,
    frame_pairs,
    fronted,
    parse,
    rewrites,
    sibling_swaps,
)


def _rewritten(question: str) -> list[str]:
    parsed = parse(question)
    assert parsed is not None, question
    return rewrites(parsed, random.Random(0))


@pytest.mark.parametrize(
    ("question", "family", "slots"),
    [
        ("How can I rotate a PDF page?", "how_to", {"X": "rotate a PDF page"}),
        ("how to peel a mango", "how_to", {"X": "peel a mango"}),
        (
            "Which command shows hidden files in Ubuntu?",
            "how_to",
            {"X": "show hidden files in Ubuntu"},
        ),
        ("How deep is Lake Baikal?", "measure", {"Y": "Lake Baikal"}),
        ("What is the height of the Burj Khalifa?", "measure", {"Y": "the Burj Khalifa"}),
        ("Who composed the Goldberg Variations?", "agent", {"Y": "the Goldberg Variations"}),
        ("What is the anthem of Peru?", "attribute", {"A": "anthem", "Y": "Peru"}),
        ("What causes tides?", "cause", {"Y": "tides"}),
        ("Why do leaves change colour?", None, {}),
        (
            "What's the difference between a lake and a pond?",
            "difference",
            {"A": "a lake", "B": "a pond"},
        ),
        ("How many legs does a spider have?", "count", {"N": "legs", "Y": "a spider"}),
        ("What is a sonnet?", "define", {"Y": "a sonnet"}),
        (
            "What is the longest river in Asia?",
            "superlative",
            {"S": "longest", "C": "river", "T": "in Asia"},
        ),
        (
            "What instrument did Jimi Hendrix play?",
            "which_what",
            {"C": "instrument", "R": "did Jimi Hendrix play"},
        ),
        ("Is it possible to freeze cooked rice?", "possible", {"X": "freeze cooked rice"}),
        ("How long does it take to learn Morse code?", "duration", {"X": "learn Morse code"}),
    ],
)
def test_a_question_parses_into_its_family_and_slots(
    question: str, family: str | None, slots: dict[str, str]
) -> None:
    parsed = parse(question)
    if family is None:
        assert parsed is None
        return
    assert parsed is not None
    assert parsed.family.name == family
    assert dict(parsed.slots) == slots


def test_a_question_that_matches_no_frame_is_not_parsed() -> None:
    for question in ("Why?", "What is the best?", "Hello there", "Is it?", ""):
        assert parse(question) is None


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("How deep is Lake Baikal?", "What is the depth of Lake Baikal?"),
        ("What is the depth of Lake Baikal?", "How deep is Lake Baikal?"),
        (
            "How old are the cave paintings of Lascaux?",
            "What is the age of the cave paintings of Lascaux?",
        ),
        ("What is the age of the redwoods?", "How old are the redwoods?"),
        (
            "Who composed the Goldberg Variations?",
            "Who is the composer of the Goldberg Variations?",
        ),
        ("Who is the inventor of the telephone?", "Who invented the telephone?"),
        ("Who painted The Night Watch?", "Which artist painted The Night Watch?"),
        ("What causes tides?", "Why do tides happen?"),
        ("Why does inflation happen?", "What causes inflation?"),
        ("How can I rotate a PDF page?", "What's the way to rotate a PDF page?"),
        (
            "How do I squash the last three commits in git?",
            "Which command squashes the last three commits in git?",
        ),
        (
            "Which command squashes the last three commits in git?",
            "How do I squash the last three commits in git?",
        ),
        ("What is the anthem of Peru?", "What is Peru's anthem?"),
        ("How many legs does a spider have?", "How many legs are there in a spider?"),
        ("How many millimeters are in a yard?", "A yard is how many millimeters?"),
        ("What is a sonnet?", "Can you explain what a sonnet is?"),
        ("What does ubiquitous mean?", "What is the meaning of ubiquitous?"),
        ("What is the longest river in Asia?", "Which river is the longest in Asia?"),
        ("What instrument did Jimi Hendrix play?", "Which instrument did Jimi Hendrix play?"),
        ("How does a jet engine work?", "Can you explain how a jet engine works?"),
        ("How do solar panels work?", "Can you explain how solar panels work?"),
        ("Why is saffron so expensive?", "What makes saffron so expensive?"),
        (
            "What is the difference between a crocodile and an alligator?",
            "How does an alligator differ from a crocodile?",
        ),
        ("How far is Lisbon from Madrid?", "What is the distance between Madrid and Lisbon?"),
        (
            "What is the default shell for Alpine Linux?",
            "Which shell does Alpine Linux use by default?",
        ),
        ("When was the telescope invented?", "In what year was the telescope invented?"),
        ("What is it like to live on a boat?", "How does it feel to live on a boat?"),
    ],
)
def test_a_frame_is_reworded_into_another_pattern_of_its_family(
    question: str, expected: str
) -> None:
    assert expected in _rewritten(question)


def test_rewording_keeps_every_slot_verbatim() -> None:
    for question in (
        "How can I rotate a PDF page in Acrobat?",
        "What is the flash point of olive oil?",
        "Who designed the Sydney Opera House?",
        "What's the difference between a fern and a moss?",
        "How many moons does Jupiter have?",
    ):
        parsed = parse(question)
        assert parsed is not None
        for text in rewrites(parsed, random.Random(1)):
            for value in parsed.slots.values():
                at_start = value[:1].upper() + value[1:]  # only a sentence's first letter moves
                assert value in text or text.startswith(at_start), (question, text, value)


def _slot_values(parsed: frames.Parsed) -> dict[str, str]:
    """Slots with a sentence's first capital undone ("The Nile is how long?")."""
    return {k: v[:1].lower() + v[1:] for k, v in parsed.slots.items()}


def test_every_rewrite_parses_back_to_the_same_family_and_slots() -> None:
    for question in (
        "How tall is the Statue of Liberty?",
        "Who wrote Don Quixote?",
        "What causes earthquakes?",
        "How do I compress a folder on macOS?",
        "What is the population of Lagos?",
        "How much does a Tesla Model 3 cost?",
        "Which is better, chess or checkers?",
    ):
        parsed = parse(question)
        assert parsed is not None
        for text in rewrites(parsed, random.Random(2)):
            again = parse(text)
            assert again is not None, text
            assert again.family is parsed.family, text
            found, wanted = _slot_values(again), _slot_values(parsed)
            if parsed.family.symmetric is None:
                assert found == wanted, text
            else:
                assert sorted(found.values()) == sorted(wanted.values()), text


def test_a_round_trip_comes_back_to_the_question() -> None:
    for question in (
        "How deep is Lake Baikal?",
        "Who wrote Don Quixote?",
        "What causes earthquakes?",
    ):
        for text in _rewritten(question):
            assert question in _rewritten(text), text


def test_a_symmetric_family_lets_its_two_slots_trade_places() -> None:
    reworded = _rewritten("What is the difference between a hurricane and a typhoon?")
    assert "What is the difference between a typhoon and a hurricane?" in reworded


def test_a_slot_with_a_tail_is_not_swapped() -> None:
    reworded = _rewritten("What is the difference between a mutex and a semaphore in Java?")
    assert not any(
        text.startswith("What is the difference between a semaphore") for text in reworded
    )


def test_a_causal_get_is_not_taken_for_a_goal() -> None:
    assert _rewritten("How do you get hiccups?") == []


def test_a_context_at_the_end_moves_to_the_front_and_back() -> None:
    assert fronted("How do I pad a string with zeros in Ruby?") == [
        "In Ruby, how do I pad a string with zeros?"
    ]
    assert fronted("In Ruby, how do I pad a string with zeros?") == [
        "How do I pad a string with zeros in Ruby?"
    ]
    assert fronted("How do I believe in myself?") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("How do I back up a Postgres database?", "How do I back up a PostgreSQL database?"),
        ("How do I back up a PostgreSQL database?", "How do I back up a Postgres database?"),
        ("What is a pod in k8s?", "What is a pod in Kubernetes?"),
        ("What is a pod in Kubernetes?", "What is a pod in k8s?"),
        ("How do I set an env var on Windows?", "How do I set an environment variable on Windows?"),
        ("How do I set an environment variable on Windows?", "How do I set an env var on Windows?"),
        (
            "What is the tallest building in the USA?",
            "What is the tallest building in the United States?",
        ),
    ],
)
def test_an_alias_is_swapped_both_ways(text: str, expected: str) -> None:
    assert expected in alias_swaps(text)


def test_an_alias_is_left_alone_inside_words_code_and_name_questions() -> None:
    assert alias_swaps("Is Node.js single-threaded?") == []
    assert alias_swaps("Set the `repo` field in the manifest") == []
    assert alias_swaps("Why did Bombay become Mumbai?") == []
    assert alias_swaps("Can you help us?") == []


def test_an_article_follows_the_new_name() -> None:
    assert "Should I buy an SSD or an HDD?" in alias_swaps(
        "Should I buy a solid state drive or an HDD?"
    )


def _changed_span(a: str, b: str) -> tuple[list[str], list[str]]:
    left, right = a.split(), b.split()
    matcher = difflib.SequenceMatcher(a=left, b=right, autojunk=False)
    changes = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    assert len(changes) == 1, (a, b, changes)
    _, i1, i2, j1, j2 = changes[0]
    return left[i1:i2], right[j1:j2]


def test_a_sibling_negative_changes_exactly_one_slot_word_to_a_member_of_its_class() -> None:
    groups = frames.siblings()
    for question in (
        "What is the freezing point of zinc?",
        "How do I configure Flask on Debian?",
        "Which planet is closest to Venus?",
        "How many teaspoons are in a tablespoon?",
        "What is the national animal of Kenya?",
        "Why is the Pacific Ocean so deep?",
    ):
        parsed = parse(question)
        assert parsed is not None
        swapped = sibling_swaps(parsed, random.Random(0))
        assert swapped, question
        for text in swapped:
            old, new = _changed_span(question, text)
            assert 1 <= len(old) <= 3 and 1 <= len(new) <= 3, (question, text)
            old_word = " ".join(old).strip("?")
            start = question.index(old_word)
            assert any(a <= start < b for a, b in parsed.spans.values()), (question, text)
            before = {f.group for f in groups.find(question) if f.start <= start < f.end}
            after = {f.group for f in groups.find(text) if f.start <= start < f.end}
            assert before & after, (question, text)


def test_a_sibling_already_named_in_the_question_is_not_used() -> None:
    parsed = parse("What is the difference between Elixir and Erlang?")
    assert parsed is not None
    for text in sibling_swaps(parsed, random.Random(0)):
        # one of the two is replaced, and never by the other: no "between Erlang and Erlang"
        assert len(re.findall(r"\bElixir\b|\bErlang\b", text)) == 1, text


def test_words_outside_slots_are_never_swapped() -> None:
    parsed = parse("How tall is a giraffe?")
    assert parsed is not None
    assert all("tall" in text for text in sibling_swaps(parsed, random.Random(0)))


_QUESTIONS = [
    "How deep is Lake Baikal?",
    "What is the freezing point of zinc?",
    "How do I configure Flask on Debian?",
    "What is a pod in k8s?",
    "Who composed the Goldberg Variations?",
    "What's the difference between a fern and a moss?",
    "Is it raining?",
]


def test_frame_pairs_label_each_origin_by_construction() -> None:
    pairs = frame_pairs(_QUESTIONS, seed=5, per_question=3)
    origins = {p.origin for p in pairs}
    assert {"frames:measure", "frames:sibling", "aliases", "frames:sibling_reworded"} <= origins
    for pair in pairs:
        negative = pair.origin in ("frames:sibling", "frames:sibling_reworded")
        assert pair.label == (0.0 if negative else 1.0), pair
        assert pair.query != pair.cached


def test_frame_pairs_are_deterministic_for_a_seed() -> None:
    first = frame_pairs(_QUESTIONS, seed=5, per_question=2)
    assert frame_pairs(_QUESTIONS, seed=5, per_question=2) == first
    alone = frame_pairs(_QUESTIONS[:1], seed=5, per_question=2)
    assert alone == [p for p in first if _QUESTIONS[0] in (p.query, p.cached)]


def test_frame_pairs_keep_to_per_question() -> None:
    pairs = frame_pairs(_QUESTIONS, seed=1, per_question=1)
    for question in _QUESTIONS:
        mine = [p.origin for p in pairs if question in (p.query, p.cached)]
        assert len(mine) == len(set(mine))


def test_no_alias_group_is_split_across_sibling_members() -> None:
    """Two names of one thing are never two siblings: that would label a paraphrase a look-alike."""
    aliases, siblings = frames.aliases(), frames.siblings()
    for group in aliases.members:
        names = {spelling.key for (spelling,) in group}
        for klass in siblings.members:
            holding = {m for m, member in enumerate(klass) for t in member if t.key in names}
            assert len(holding) <= 1, (group, klass)
