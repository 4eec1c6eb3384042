"""The WordNet minimal pairs: one word or collocation of a real question replaced, labelled by
construction. The text helpers are tested everywhere; the pairs themselves only where WordNet has
been fetched (scripts/fetch_wordnet.py; CI does not fetch it) and nltk (the train extra) is in."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from semcache_server.calibration import wordnet
from semcache_server.calibration.minimal_pairs import (
    ANTONYM,
    ORIGINS,
    SIBLING,
    SYNONYM,
    MinimalPairs,
    Word,
    article_agrees,
    candidate_pos,
    changed_span,
    form_of,
    inflect,
    match_case,
    replace,
    syllables,
    units,
    vocabulary,
    words,
)
from semcache_server.calibration.verifier_data import TrainingPair

# -- text helpers: no WordNet needed -------------------------------------------------------------


def test_words_and_replace_rejoin_the_text_exactly() -> None:
    text = "Which metal conducts electricity better, copper or aluminium?"
    found = words(text)
    assert [w.text for w in found][-2:] == ["or", "aluminium"]
    copper = next(w for w in found if w.text == "copper")
    assert replace(text, copper.start, copper.end, "zinc") == (
        "Which metal conducts electricity better, zinc or aluminium?"
    )
    assert replace(text, 0, 5, "what") == "What" + text[5:]


def test_words_glued_to_other_characters_are_not_standalone() -> None:
    found = {w.text: w.standalone for w in words("Is node.js an e-mail tool (or not)?")}
    assert found["node"] is False and found["js"] is False
    assert found["e"] is False and found["mail"] is False
    assert found["tool"] is True and found["or"] is True and found["not"] is True


def test_match_case_keeps_a_capital_first_letter_only() -> None:
    assert match_case("Copper", "zinc") == "Zinc"
    assert match_case("copper", "zinc") == "zinc"
    assert match_case("SQL", "zinc") == "zinc"


def test_changed_span_is_the_differing_words() -> None:
    assert changed_span("Is tea good?", "Is coffee good?") == (["tea"], ["coffee"])
    assert changed_span("a hard disk here", "a diskette here") == (["hard", "disk"], ["diskette"])
    assert changed_span("same", "same") == ([], [])


@pytest.mark.parametrize(
    ("base", "form", "expected"),
    [
        ("zinc", "plural", "zincs"),
        ("box", "plural", "boxes"),
        ("city", "plural", "cities"),
        ("day", "plural", "days"),
        ("solid state drive", "plural", "solid state drives"),
        ("photo", "plural", None),
        ("knife", "plural", None),
        ("human", "plural", None),
        ("go", "third", "goes"),
        ("fix", "third", "fixes"),
        ("carry", "third", "carries"),
        ("make", "ing", "making"),
        ("die", "ing", "dying"),
        ("see", "ing", "seeing"),
        ("visit", "ing", "visiting"),
        ("stop", "ing", None),
        ("look up", "ing", "looking up"),
        ("bake", "past", "baked"),
        ("carry", "past", "carried"),
        ("stop", "past", None),
        ("slow", "superlative", "slowest"),
        ("slow", "comparative", "slower"),
        ("wide", "superlative", "widest"),
        ("dangerous", "superlative", None),
        ("zinc", "base", "zinc"),
    ],
)
def test_inflect_by_rule(base: str, form: str, expected: str | None) -> None:
    assert inflect(base, form) == expected


def test_inflect_prefers_the_exception_lists() -> None:
    irregular = {
        "mouse": ["mice"],
        "stop": ["stopped", "stopping"],
        "go": ["went", "gone"],
        "good": ["better", "best"],
        "bad": ["worse", "worst"],
        "big": ["bigger", "biggest"],
        "send": ["sent"],
    }
    assert inflect("mouse", "plural", irregular) == "mice"
    assert inflect("stop", "ing", irregular) == "stopping"
    assert inflect("stop", "past", irregular) == "stopped"
    assert inflect("send", "past", irregular) == "sent"
    assert inflect("go", "past", irregular) is None  # "went" or "gone": unknown which
    assert inflect("good", "superlative", irregular) == "best"
    assert inflect("bad", "comparative", irregular) == "worse"
    assert inflect("big", "superlative", irregular) == "biggest"


def test_form_of_names_the_inflection() -> None:
    assert form_of("Metals", "metal", "n") == "plural"
    assert form_of("metal", "metal", "n") == "base"
    assert form_of("boiling", "boil", "v") == "ing"
    assert form_of("boils", "boil", "v") == "third"
    assert form_of("boiled", "boil", "v") == "past"
    assert form_of("fastest", "fast", "a") == "superlative"
    assert form_of("faster", "fast", "a") == "comparative"
    assert form_of("best", "good", "a") == "superlative"
    assert form_of("elder", "old", "r") is None


def test_syllables_roughly() -> None:
    assert syllables("slow") == 1
    assert syllables("wide") == 1
    assert syllables("dangerous") == 3
    assert syllables("simple") == 2


def test_candidate_pos_reads_the_neighbour_then_the_counts() -> None:
    assert candidate_pos("to", {"n": 5, "v": 3}) == "v"
    assert candidate_pos("the", {"n": 1, "v": 9}) == "n"
    assert candidate_pos("is", {"n": 2, "a": 1}) == "a"
    assert candidate_pos("is", {"n": 2, "v": 1}, participle=True) == "v"
    # "why do cats": "do" asks for a bare verb; "cats" is not one
    assert candidate_pos("do", {"n": 18, "v": 1}, bare=False) == "n"
    # a reading WordNet never saw used does not win on the neighbour alone
    assert candidate_pos("do", {"n": 18, "v": 0}) == "n"
    # "they looking for": no verb reading, no slot
    assert candidate_pos("they", {"n": 3}) is None
    assert candidate_pos(None, {"n": 0, "v": 0}) == "n"
    assert candidate_pos(None, {}) is None


def test_candidate_pos_tells_participles_from_adjectives() -> None:
    boiling = {"n": 1, "v": 4}
    assert candidate_pos("is", boiling, participle=True, as_is=frozenset("n")) == "v"
    interesting = {"a": 30, "v": 20}
    assert candidate_pos("is", interesting, participle=True, as_is=frozenset("a")) == "a"
    assert candidate_pos("too", {"a": 3, "v": 9}, participle=True, as_is=frozenset("a")) == "a"


def test_candidate_pos_reads_a_lemma_as_it_stands() -> None:
    # "mortgage broker": the noun "broker", not the adjective "broke" + "-er"
    assert candidate_pos("mortgage", {"n": 1, "a": 9}, as_is=frozenset("n")) == "n"
    assert candidate_pos("mortgage", {"n": 1, "a": 9}) == "a"
    # "the fastest": WordNet's adverb "fastest" is a lemma too, but not the reading
    assert candidate_pos("the", {"a": 18, "r": 30}, as_is=frozenset("r")) == "a"
    assert candidate_pos("land", {"a": 18, "r": 3}, as_is=frozenset("r")) == "a"


def test_article_agreement() -> None:
    assert article_agrees("a", "grandiose", "modest")
    assert not article_agrees("a", "grandiose", "unimpressive")
    assert not article_agrees("An", "apple", "pear")
    assert article_agrees("the", "apple", "pear")
    assert article_agrees(None, "apple", "pear")


def test_units_skip_function_and_name_words_and_keep_collocations_whole() -> None:
    text = "What is the difference between a hard disk and Linux on my laptop?"
    found = units(
        text,
        frozenset({"what", "is", "the", "between", "and", "on", "my"}),
        lambda name: name == "hard_disk",
    )
    assert [u.text for u in found] == ["difference", "hard disk", "laptop"]
    assert found[1].previous == "a"


def test_vocabulary_counts_words_and_word_pairs() -> None:
    counts = vocabulary(["The freezing point of water", "freezing point"])
    assert counts["freezing_point"] == 2
    assert counts["water"] == 1


def test_counts_file_is_sorted_and_keeps_the_tag_counts() -> None:
    index_sense = "zinc%1:27:00:: 06 1 3\ncar%1:06:00:: 02958343 1 71\n"
    assert wordnet.counts_file(index_sense) == "car%1:06:00:: 1 71\nzinc%1:27:00:: 1 3\n"


def test_an_unfetched_cache_is_not_taken_for_wordnet(tmp_path: Path) -> None:
    assert wordnet.find_dict(tmp_path) is None
    (tmp_path / "dict").mkdir()
    (tmp_path / "dict" / "data.noun").write_text("", encoding="utf-8")
    assert wordnet.find_dict(tmp_path) is None


# -- the pairs: WordNet needed -------------------------------------------------------------------

QUESTIONS = (
    "Which metal conducts electricity better, copper or aluminium?",
    "What is the fastest land animal?",
    "How do I upgrade my router firmware?",
    "How do I buy a used car?",
    "Should I drink tea before bed?",
    "What are the best books for learning Python?",
    "Why do cats hate water?",
    "How do I stop smoking cigarettes?",
    "Is the vertical line longer than the horizontal one?",
    "What is the difference between a hard disk and a solid state drive?",
)


@pytest.fixture(scope="module")
def reader() -> Iterator[object]:
    pytest.importorskip("nltk", reason="nltk is in the train extra: pip install '.[train]'")
    found = wordnet.find_dict()
    if found is None:
        pytest.skip(
            f"WordNet is not fetched into {wordnet.default_dir()}: scripts/fetch_wordnet.py"
        )
    yield wordnet.open_wordnet(found)


def source_and_changed(pair: TrainingPair) -> tuple[str, str]:
    if pair.query in QUESTIONS:
        return pair.query, pair.cached
    assert pair.cached in QUESTIONS
    return pair.cached, pair.query


def make(reader: object, seed: int = 0, per_question: int = 10) -> list[TrainingPair]:
    return MinimalPairs(reader, seed=seed, per_question=per_question).make(QUESTIONS)


def test_each_pair_changes_one_word_or_collocation_and_nothing_else(reader: object) -> None:
    made = make(reader)
    assert len(made) >= len(QUESTIONS)
    for pair in made:
        source, changed = source_and_changed(pair)
        old, new = changed_span(source, changed)
        assert 1 <= len(old) <= 2 and 1 <= len(new) <= 2, pair
        if len(old) == 2:  # a collocation WordNet lists, replaced as one
            assert any(reader.lemmas("_".join(old).lower(), pos) for pos in "nva")  # type: ignore[attr-defined]
        # outside the changed words, every character is the same
        before, after = words(source), words(changed)
        head = len(before) - len(old) - tail_length(before, after)
        tail = tail_length(before, after)
        assert source[: before[head].start] == changed[: after[head].start], pair
        assert source[before[-1 - tail].end :] == changed[after[-1 - tail].end :], pair


def tail_length(before: list[Word], after: list[Word]) -> int:
    """How many words two texts share at their end."""
    tail = 0
    while tail < min(len(before), len(after)) and before[-1 - tail].text == after[-1 - tail].text:
        tail += 1
    return tail


def test_no_pair_is_its_own_source(reader: object) -> None:
    for pair in make(reader):
        assert pair.query != pair.cached
        assert pair.query.lower() != pair.cached.lower()


def test_labels_follow_the_origin(reader: object) -> None:
    made = make(reader)
    assert {pair.origin for pair in made} <= set(ORIGINS)
    for pair in made:
        assert pair.label == (1.0 if pair.origin == SYNONYM else 0.0), pair


def test_two_metals_make_a_sibling_negative(reader: object) -> None:
    changed_metal = []
    for pair in make(reader):
        source, changed = source_and_changed(pair)
        old, new = changed_span(source, changed)
        if pair.origin == SIBLING and old in (["copper"], ["aluminium"]):
            changed_metal.append(new)
    assert changed_metal, "no metal replaced by another"
    for (metal,) in changed_metal:
        classes = {h.name() for s in reader.synsets(metal, "n") for h in s.hypernyms()}  # type: ignore[attr-defined]
        assert "metallic_element.n.01" in classes, metal


@pytest.mark.parametrize(
    ("question", "origin", "expected"),
    [
        ("What is the fastest land animal?", ANTONYM, "What is the slowest land animal?"),
        ("How do I upgrade my router firmware?", ANTONYM, "How do I downgrade my router firmware?"),
        ("How do I buy a used car?", SYNONYM, "How do I buy a used automobile?"),
    ],
)
def test_known_pairs(reader: object, question: str, origin: str, expected: str) -> None:
    made = MinimalPairs(reader, per_question=10).pairs(question)
    assert any(
        pair.origin == origin and {pair.query, pair.cached} == {question, expected} for pair in made
    ), made


def test_plural_stays_plural(reader: object) -> None:
    for pair in MinimalPairs(reader, per_question=10).pairs("How do I stop smoking cigarettes?"):
        old, new = changed_span(*source_and_changed_of(pair, "How do I stop smoking cigarettes?"))
        if old == ["cigarettes"]:
            assert new[-1].endswith("s"), new


def source_and_changed_of(pair: TrainingPair, question: str) -> tuple[str, str]:
    return (pair.query, pair.cached) if pair.query == question else (pair.cached, pair.query)


def test_the_same_seed_gives_the_same_pairs_whatever_the_batch(reader: object) -> None:
    first = make(reader, seed=3)
    assert make(reader, seed=3) == first
    alone = MinimalPairs(reader, seed=3, per_question=10).pairs(QUESTIONS[0])
    assert alone == [p for p in first if QUESTIONS[0] in (p.query, p.cached)]


def test_pairs_per_question_are_capped(reader: object) -> None:
    maker = MinimalPairs(reader, per_question=2)
    for question in QUESTIONS:
        assert len(maker.pairs(question)) <= 2


def test_replacements_never_repeat_a_word_of_the_question(reader: object) -> None:
    for pair in make(reader):
        source, changed = source_and_changed(pair)
        _old, new = changed_span(source, changed)
        rest = {w.lower() for w in re.findall(r"[A-Za-z]+", source)}
        assert not rest & {w.lower() for w in new}, pair
