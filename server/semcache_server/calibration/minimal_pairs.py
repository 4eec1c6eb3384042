"""Minimal pairs from WordNet: one content word of a real question replaced, the rest identical,
labelled by construction.

A look-alike that a cosine threshold serves keeps the question's frame and changes one slot to a
sibling or an opposite ("copper" / "zinc", "fastest" / "slowest", "upgrade" / "downgrade"); a
paraphrase may swap a word for its synonym ("car" / "automobile"). WordNet knows all three
relations, so a real question with one word swapped gives a pair whose label needs no annotator:

- ``wordnet:sibling`` (0.0): a co-hyponym, another member of the word's direct class;
- ``wordnet:antonym`` (0.0): the word's own antonym in that sense;
- ``wordnet:synonym`` (1.0): another lemma of the same synset, only when both words are common
  (WordNet's tagged counts) and both mean that synset first, so a rare or misleading synonym
  ("car" / "machine") never makes a positive.

The word's sense is its most frequent synset for a part of speech guessed from its neighbours,
its suffix and WordNet's counts. Inflection is kept (plural nouns stay plural, -ing, -ed and -s
verbs keep their ending, -er and -est adjectives theirs); a word that cannot be inflected reliably
is skipped rather than made into broken text.

Training only: WordNet comes from `wordnet` (fetched with npm, read with nltk from the `train`
extra). The text helpers here need neither, so their tests run anywhere.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semcache_server.calibration import wordnet
from semcache_server.calibration.verifier_data import WORDS, TrainingPair

SIBLING = "wordnet:sibling"
ANTONYM = "wordnet:antonym"
SYNONYM = "wordnet:synonym"
ORIGINS = (SIBLING, ANTONYM, SYNONYM)

MIN_SYNONYM_COUNT = 3
"""Tagged occurrences (WordNet's SemCor counts) each lemma of a synonym pair needs."""
DOMINANT_SHARE = 0.6
"""The synset must hold this share of a synonym's counts over all its senses and parts of speech."""
MAX_CLASS = 150
"""A class with more members than this (a "device", a "person") is too broad to give a sibling
that a reader would confuse with the original."""
TOP_SIBLINGS = 6
"""A sibling is drawn from this many of the most common members, so the pairs read naturally."""


_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_BEFORE_OK = re.compile(r"(?:^|[\s(\"'])$")
_AFTER_OK = re.compile(r"[.,?!;:)\"']*(?:\s|$)")


@dataclass(frozen=True)
class Word:
    """A word of the text and where it sits, so that it can be replaced in place."""

    text: str
    start: int
    end: int
    standalone: bool
    """Not glued to other characters ("e-mail", "node.js", "C++" are left alone)."""


def words(text: str) -> list[Word]:
    """The words of a text with their spans; rejoining is slicing around a span (`replace`)."""
    found = []
    for match in _WORD.finditer(text):
        start, end = match.span()
        standalone = bool(_BEFORE_OK.search(text[:start])) and bool(_AFTER_OK.match(text, end))
        found.append(Word(match.group(), start, end, standalone))
    return found


def replace(text: str, start: int, end: int, new: str) -> str:
    """The text with the span [start, end) replaced, in the case of the word it replaces."""
    return text[:start] + match_case(text[start:end], new) + text[end:]


def match_case(original: str, new: str) -> str:
    """ "Copper" -> "Zinc": a capital first letter (a question's first word) is kept."""
    if original[:1].isupper() and not original.isupper():
        return new[:1].upper() + new[1:]
    return new


def changed_span(a: str, b: str) -> tuple[list[str], list[str]]:
    """The words that differ between two texts once their common head and tail are removed:
    a minimal pair differs in one word or collocation, and that is what the tests check."""
    left = [w.text for w in words(a)]
    right = [w.text for w in words(b)]
    head = 0
    while head < min(len(left), len(right)) and left[head] == right[head]:
        head += 1
    tail = 0
    while tail < min(len(left), len(right)) - head and left[-1 - tail] == right[-1 - tail]:
        tail += 1
    return left[head : len(left) - tail], right[head : len(right) - tail]


def article_agrees(article: str | None, old: str, new: str) -> bool:
    """False when "a" / "an" before the word would have to change ("a grandiose" -> "an
    unimpressive"): such a pair would differ in two words, so it is skipped. Judged by the first
    letter, as the article was (words like "hour" or "unit" are rare enough here)."""
    if article is None or article.lower() not in ("a", "an"):
        return True
    return (old[:1].lower() in _VOWELS) == (new[:1].lower() in _VOWELS)


# Inflection. WordNet's exception lists give every irregular form its morphology rules could not
# undo (doubled consonants, "mice", "better"); the rules below cover the rest, and return None
# wherever English is not regular enough to guess.

_VOWELS = frozenset("aeiou")


def syllables(word: str) -> int:
    """A rough count of vowel groups, a final silent "e" not counted."""
    groups = len(re.findall(r"[aeiouy]+", word))
    if word.endswith("e") and not word.endswith(("le", "ee", "ye")) and groups > 1:
        groups -= 1
    return max(1, groups)


def _ends_cvc(word: str) -> bool:
    """Consonant-vowel-consonant: the shape whose last letter English may double."""
    return (
        len(word) >= 3
        and word[-1] not in _VOWELS
        and word[-1] not in "wxy"
        and word[-2] in _VOWELS
        and word[-3] not in _VOWELS
    )


def _s_form(word: str, *, verb: bool) -> str | None:
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if len(word) > 1 and word.endswith("y") and word[-2] not in _VOWELS:
        return word[:-1] + "ies"
    if word.endswith("o") and word[-2:-1] not in _VOWELS:
        return word + "es" if verb else None  # "goes", but "photos" / "potatoes"
    if not verb and (word.endswith(("f", "fe")) or word.endswith("man")):
        return None  # "roofs" / "knives", "humans" / "women": the regular one is unsure
    return word + "s"


def _ing_form(word: str) -> str | None:
    if word.endswith("ie"):
        return word[:-2] + "ying"
    if word.endswith(("ee", "oe", "ye")):
        return word + "ing"
    if word.endswith("e") and len(word) > 2:
        return word[:-1] + "ing"
    if _ends_cvc(word) and syllables(word) == 1:
        return None  # "stopping": the exception list has it when it doubles
    return word + "ing"


def _ed_form(word: str) -> str | None:
    if word.endswith("e"):
        return word + "d"
    if len(word) > 1 and word.endswith("y") and word[-2] not in _VOWELS:
        return word[:-1] + "ied"
    if _ends_cvc(word) and syllables(word) == 1:
        return None
    return word + "ed"


def _graded(word: str, suffix: str) -> str | None:
    """ "slow" -> "slower" / "slowest"; longer adjectives take "more" / "most": skipped."""
    if syllables(word) > 1 or _ends_cvc(word):
        return None  # "happier", "bigger": in the exception list when they exist
    if word.endswith("e"):
        return word + suffix[1:]
    return word + suffix


def inflect(
    base: str, form: str, irregular: Mapping[str, Sequence[str]] | None = None
) -> str | None:
    """The form of a lemma ("zinc", "plural" -> "zincs"), or None when it is not sure.

    Forms: "base", "plural", "third" (-s), "ing", "past" (-ed), "comparative", "superlative".
    ``irregular`` maps a lemma to its exception-list forms (WordNet's ``*.exc`` read backwards).
    A collocation inflects its head: a noun's last word, a verb's first ("looking up").
    """
    if form == "base":
        return base
    parts = base.split(" ")
    head_index = 0 if form in ("third", "ing", "past") else len(parts) - 1
    head = parts[head_index]
    known = list((irregular or {}).get(base if len(parts) == 1 else head, ()))
    made: str | None
    if form in ("plural", "third"):
        ending_s = [f for f in known if f.endswith("s")]
        if form == "plural" and known:
            made = sorted(known)[0]
        elif ending_s:
            made = sorted(ending_s)[0]
        else:
            made = _s_form(head, verb=form == "third")
    elif form == "ing":
        ending_ing = sorted(f for f in known if f.endswith("ing"))
        made = ending_ing[0] if ending_ing else _ing_form(head)
    elif form == "past":
        past = sorted({f for f in known if not f.endswith(("ing", "s"))})
        if len(past) > 1:
            return None  # "wrote" / "written": which one the sentence needs is not known
        made = past[0] if past else _ed_form(head)
    elif form == "comparative":
        graded = sorted(f for f in known if not f.endswith("st"))  # "better", "worse"
        made = graded[0] if graded else _graded(head, "er")
    elif form == "superlative":
        graded = sorted(f for f in known if f.endswith("st"))
        made = graded[0] if graded else _graded(head, "est")
    else:
        raise ValueError(f"unknown form {form!r}")
    if made is None:
        return None
    parts[head_index] = made
    return " ".join(parts)


def form_of(word: str, base: str, pos: str) -> str | None:
    """Which form of its lemma a word is ("zincs" of "zinc": "plural"), or None if unsure."""
    word = word.lower()
    if word == base:
        return "base"
    if pos == "n":
        return "plural"
    if pos == "v":
        if word.endswith("ing"):
            return "ing"
        if word.endswith("s"):
            return "third"
        return "past"  # "-ed", or an irregular past ("went", "made")
    if pos == "a":
        if word.endswith("est") or word in ("best", "worst"):
            return "superlative"
        if word.endswith("er") or word in ("better",):
            return "comparative"
    return None


# Which words are content words, and of which part of speech.


def _listed(text: str) -> frozenset[str]:
    """A word list written as text, for lists easier to read as prose than as literals."""
    return frozenset(text.split())


_QUESTION_WORDS = _listed("what which who whom whose when where why how whats")
_VAGUE = _listed(
    """
    able make makes made making take takes took taken taking give gives gave given find finds
    found think thinks thought mean means meant become becomes became happen happens happened
    come comes came see sees saw seen say says said put puts keep keeps let lets start
    people person someone thing things way ways kind kinds type types lot lots part example
    examples difference differences reason reasons question questions answer answers quora
    year years day days time times many much good bad new old
    several various certain same different own other another such enough one ones pros cons
    even off away back down near
    """
)
"""Too vague or too common to make a telling pair (a "thing" has no useful sibling), Quora's
own name, and particles and prepositions WordNet reads as adjectives ("peeling off" / "peeling
on", "near Boston" / "far Boston"); "good" / "bad" stay out as their senses are many and odd."""
_PRONOUNS = _listed("i you we they")
_VERB_BEFORE = _listed(
    "to can could should would will shall may might must do does did not never one"
)
_NOMINAL_BEFORE = _listed(
    """
    a an the my your his her its our their this these those some any each every no whose
    another other several few
    """
)
_COPULAS = _listed("is are was were be been being am")
_DEGREE_WORDS = _listed("very so too how more most less least quite rather")


def stopwords() -> frozenset[str]:
    """The guards' function words and number words (numbers have their own look-alikes),
    question words and the vague ones above."""
    listed = {
        line.strip()
        for line in (WORDS / "stopwords.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    numbers = {
        line.split()[0]
        for line in (WORDS / "number-words.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    return frozenset(listed) | frozenset(numbers) | _QUESTION_WORDS | _VAGUE


def candidate_pos(
    previous: str | None,
    possible: Mapping[str, int],
    *,
    participle: bool = False,
    bare: bool = True,
    as_is: frozenset[str] = frozenset(),
) -> str | None:
    """The part of speech to read a word as: its neighbour first, then WordNet's counts.

    ``possible`` maps each part of speech WordNet has the word in ("n", "v", "a", "r") to its
    tagged count there; ``participle``: the word is an -ing or -ed form of a verb; ``bare``: it
    is a verb's bare form; ``as_is``: the parts of speech it is a lemma in as it stands.

    A determiner before the word rules out a verb or an adverb. A subject pronoun asks for a
    verb (and a word that cannot be one is no slot: "they looking for"), and so do a modal,
    "do", "to" or "one" ("can one study") before a bare form. A degree word asks for an
    adjective; so does a copula, unless the word is a participle that is no adjective of its own
    ("is boiling", but "is interesting"). The neighbour decides only for a reading WordNet has
    seen used (a count above zero): in "why do cats hate water", "cats" stays a noun.
    """
    if not possible:
        return None
    previous = previous.lower() if previous else None
    choices = dict(possible)
    wanted: tuple[str, ...] = ()
    if previous in _PRONOUNS:
        if "v" not in choices:
            return None
        wanted = ("v",)
    elif previous in _VERB_BEFORE and bare:
        wanted = ("v",)
    elif previous in _DEGREE_WORDS:
        wanted = ("a",)
    elif previous in _COPULAS:
        wanted = ("v", "a") if participle and "a" not in as_is else ("a", "v")
    elif previous in _NOMINAL_BEFORE:
        choices.pop("v", None)
        choices.pop("r", None)
    elif participle:
        wanted = ("v",)
    for pos in wanted:
        if choices.get(pos, 0) > 0:
            return pos
    # With no telling neighbour, a word that is a noun, verb or adjective as it stands is read
    # as that lemma: "mortgage broker" is a noun, not "broke" + "-er". (Adverbs such as
    # "fastest" are lemmas too, and rarely what a question means.)
    if as_is & choices.keys() - {"r"}:
        choices = {pos: count for pos, count in choices.items() if pos in as_is - {"r"}}
    if not choices:
        return None
    order = {"n": 0, "v": 1, "a": 2, "r": 3}
    return max(choices, key=lambda pos: (choices[pos], -order[pos]))


@dataclass(frozen=True)
class Unit:
    """A word or a two-word collocation of the question that may be replaced."""

    start: int
    end: int
    text: str
    previous: str | None


def units(text: str, skip: frozenset[str], is_collocation: Callable[[str], bool]) -> list[Unit]:
    """The replaceable spans: standalone lower-case content words (the first word may be
    capitalised; other capitals are names, left to the entity look-alikes), and two-word
    collocations WordNet lists ("hard disk"), which are never split."""
    found = words(text)
    result: list[Unit] = []
    index = 0
    while index < len(found):
        word = found[index]
        previous = found[index - 1].text if index > 0 else None
        if not _content(word, index, skip):
            index += 1
            continue
        if index + 1 < len(found):
            following = found[index + 1]
            if (
                text[word.end : following.start] == " "
                and following.standalone
                and following.text.isalpha()
                and following.text.islower()
                and is_collocation(f"{word.text.lower()}_{following.text.lower()}")
            ):
                result.append(
                    Unit(word.start, following.end, text[word.start : following.end], previous)
                )
                index += 2
                continue
        result.append(Unit(word.start, word.end, word.text, previous))
        index += 1
    return result


def _content(word: Word, index: int, skip: frozenset[str]) -> bool:
    text = word.text
    if not word.standalone or not text.isalpha() or len(text) < 3:
        return False
    if text.lower() in skip:
        return False
    return text.islower() or (index == 0 and text[0].isupper() and text[1:].islower())


class MinimalPairs:
    """Makes the pairs from real questions with one WordNet reader, built once.

    Typical use, with the whole question set as the vocabulary::

        maker = MinimalPairs.open(vocabulary=vocabulary(texts), seed=seed)
        pairs = maker.make(texts)

    It reads two private parts of nltk's reader (``_morphy``: every lemma a form may be, and
    ``_exception_map``: the irregular forms), present in nltk 3.9 and later.
    """

    def __init__(
        self,
        reader: Any,
        *,
        seed: int = 0,
        per_question: int = 3,
        min_synonym_count: int = MIN_SYNONYM_COUNT,
        vocabulary: Mapping[str, int] | None = None,
    ) -> None:
        """``vocabulary``: how often words occur in real questions (`vocabulary`), so that a
        sibling WordNet has no count for ("zinc", "freezing point") can still be known common."""
        self._wn = reader
        self._vocabulary: Mapping[str, int] = vocabulary if vocabulary is not None else {}
        self._seed = seed
        self._per_question = per_question
        self._min_synonym_count = min_synonym_count
        self._skip = stopwords()
        self._irregular = {pos: _reverse(reader._exception_map[pos]) for pos in "nva"}
        self._counts: dict[tuple[str, str], int] = {}
        self._edits: dict[tuple[str, str], dict[str, list[tuple[str, int]]]] = {}

    @classmethod
    def open(cls, dict_path: Path | None = None, **options: Any) -> MinimalPairs:
        """Over the fetched WordNet (`wordnet.fetch`); raises if it has not been fetched."""
        folder = dict_path if dict_path is not None else wordnet.find_dict()
        if folder is None:
            raise FileNotFoundError(
                f"WordNet is not in {wordnet.default_dir()}: run scripts/fetch_wordnet.py"
            )
        return cls(wordnet.open_wordnet(folder), **options)

    def make(self, texts: Iterable[str]) -> list[TrainingPair]:
        """Every question's pairs, in the order of the questions."""
        return [pair for text in texts for pair in self.pairs(text)]

    def pairs(self, text: str) -> list[TrainingPair]:
        """Up to per_question pairs, at most one per replaced word, the rarer kinds first.

        The random choices depend on the seed and this question alone, so a question gives the
        same pairs whatever else is in the batch.
        """
        rng = random.Random(f"{self._seed}:{text}")
        by_origin: dict[str, list[tuple[Unit, str]]] = defaultdict(list)
        present = frozenset(word.text.lower() for word in words(text))
        for unit in units(text, self._skip, self._is_collocation):
            for origin, replacement in self._replacements(unit, rng, present).items():
                by_origin[origin].append((unit, replacement))
        made: list[TrainingPair] = []
        used: set[int] = set()
        for origin in (SYNONYM, ANTONYM, SIBLING):
            options = [(u, r) for u, r in by_origin[origin] if u.start not in used]
            if not options or len(made) >= self._per_question:
                continue
            rng.shuffle(options)
            for unit, replacement in options:
                if len(made) >= self._per_question:
                    break
                if unit.start in used:
                    continue
                if not article_agrees(unit.previous, unit.text, replacement):
                    continue
                changed = replace(text, unit.start, unit.end, replacement)
                if changed == text:
                    continue
                label = 1.0 if origin == SYNONYM else 0.0
                query, cached = (changed, text) if rng.random() < 0.5 else (text, changed)
                made.append(TrainingPair(query, cached, label, origin))
                used.add(unit.start)
                if origin != SIBLING:
                    break  # one of each rarer kind, then siblings fill the rest
        return made

    def _is_collocation(self, name: str) -> bool:
        return any(self._wn.morphy(name, pos) for pos in "nva")

    def _replacements(
        self, unit: Unit, rng: random.Random, present: frozenset[str]
    ) -> dict[str, str]:
        """One inflected replacement per kind this unit has, none of whose words is already in
        the question (``present``): "copper or aluminium" must not become "aluminium or
        aluminium"."""
        surface = unit.text.lower().replace(" ", "_")
        possible: dict[str, str] = {}
        as_is: set[str] = set()
        for part in "nvar":
            # "men": the lemma "men" (manpower) or "man"? The one WordNet has seen more.
            bases = [b for b in self._wn._morphy(surface, part) if self._wn.lemmas(b, part)]
            if bases:
                possible[part] = max(bases, key=lambda b: (self._count(b, part), b == surface))
            if surface in bases:
                as_is.add(part)
        verb = possible.get("v")
        participle = verb is not None and verb != surface and surface.endswith(("ing", "ed"))
        pos = candidate_pos(
            unit.previous,
            {p: self._count(base, p) for p, base in possible.items()},
            participle=participle,
            bare=verb == surface,
            as_is=frozenset(as_is),
        )
        if pos is None or pos == "r":
            return {}  # an adverb or a particle ("get away"): not a slot of the question
        base = possible[pos]
        form = form_of(surface, base, pos)
        if form is None:
            return {}
        chosen: dict[str, str] = {}
        for origin, options in self._edits_of(base, pos).items():
            for name in _shuffled_top(options, rng):
                made = inflect(name.replace("_", " "), form, self._irregular[pos])
                if made is None or present & set(made.lower().split()):
                    continue
                if form != "base" and not self._seen(made.split()[-1 if pos == "n" else 0]):
                    continue  # "inquisitivenesses", "press corpses": no real question says it
                if origin == SYNONYM and not all(self._seen(w) for w in made.split()):
                    continue  # "per centum": a positive must read like a real question
                chosen[origin] = made
                break
        return chosen

    def _edits_of(self, base: str, pos: str) -> dict[str, list[tuple[str, int]]]:
        """The lemma's siblings, antonyms and safe synonyms with their counts (cached)."""
        key = (base, pos)
        if key not in self._edits:
            self._edits[key] = self._find_edits(base, pos)
        return self._edits[key]

    def _find_edits(self, base: str, pos: str) -> dict[str, list[tuple[str, int]]]:
        senses = self._wn.lemmas(base, pos)
        lemma = senses[0]
        if lemma.count() < 1 and len(senses) > 1 and "_" not in base:
            # WordNet has never seen the word used and it has several senses: the first one
            # is a guess ("router": a worker who routes shipments). A collocation is kept: its
            # first sense is nearly always the one meant ("boiling point").
            return {}
        synset = lemma.synset()
        own = {name.lower() for name in synset.lemma_names()} | {base}
        edits: dict[str, list[tuple[str, int]]] = {}

        # Siblings of nouns only: verbs' classes in WordNet are loose ("drink" / "suck in"),
        # and adjectives have none.
        siblings: dict[str, int] = {}
        for hypernym in synset.hypernyms() if pos == "n" else []:
            members = hypernym.hyponyms()
            if len(members) > MAX_CLASS:
                continue
            for member in members:
                if member == synset:
                    continue
                best = max(member.lemmas(), key=lambda m: self._common(m))
                name, common = best.name(), self._common(best)
                if (
                    common > 0
                    and name not in own
                    and self._usable(name, pos, member)
                    and not self._share_sense(name, base, pos)
                ):
                    siblings[name] = max(siblings.get(name, 0), common)
        edits[SIBLING] = sorted(siblings.items(), key=lambda item: (-item[1], item[0]))

        # Direct antonyms only: a satellite adjective's head's antonym is often far off
        # ("the second quarter" -> "the cardinal quarter", "a grandiose" -> "an unimpressive").
        antonyms: dict[str, int] = {}
        for antonym in lemma.antonyms():
            name = antonym.name()
            if self._usable(name, pos, None) and name not in own:
                antonyms[name] = max(antonyms.get(name, 0), self._common(antonym))
        edits[ANTONYM] = sorted(antonyms.items(), key=lambda item: (-item[1], item[0]))

        synonyms: dict[str, int] = {}
        if self._dominant(lemma, base):
            for other in synset.lemmas():
                name = other.name()
                if name.lower() == base or not self._usable(name, pos, synset):
                    continue
                if pos == "v" and ("_" in name or "_" in base):
                    continue  # "marry" / "get married": a phrasal verb changes the grammar
                if set(name.split("_")) & set(base.split("_")):
                    continue  # "image" / "mental image": a narrower phrase, not a synonym
                if self._dominant(other, name):
                    synonyms[name] = other.count()
        edits[SYNONYM] = sorted(synonyms.items(), key=lambda item: (-item[1], item[0]))
        return edits

    def _usable(self, name: str, pos: str, synset: Any) -> bool:
        """A plain lower-case word or two-word collocation; if a synset is given, the word's
        first meaning in this part of speech must be it, so the pair reads as meant."""
        if not re.fullmatch(r"[a-z]+(?:_[a-z]+)?", name):
            return False
        if len(self._wn._morphy(name, pos)) > 1:
            return False  # a lemma that is also an inflected form ("acres", "glasses")
        if synset is None:
            return True
        first = self._wn.lemmas(name, pos)
        return bool(first) and first[0].synset() == synset

    def _seen(self, word: str) -> bool:
        """Whether real questions use the word; without a vocabulary every word passes."""
        return not self._vocabulary or self._vocabulary.get(word.lower(), 0) > 0

    def _share_sense(self, one: str, other: str, pos: str) -> bool:
        """Synonyms in some sense ("home" / "domicile" are both a dwelling): as siblings their
        pair's label would not be known."""
        senses = {lemma.synset() for lemma in self._wn.lemmas(one, pos)}
        return any(lemma.synset() in senses for lemma in self._wn.lemmas(other, pos))

    def _dominant(self, lemma: Any, name: str) -> bool:
        """Common, and this sense holds most of the word's uses across its parts of speech."""
        count = int(lemma.count())
        if count < self._min_synonym_count:
            return False
        total = sum(self._count(name.lower(), pos) for pos in "nvar")
        return count >= DOMINANT_SHARE * total

    def _common(self, lemma: Any) -> int:
        """How common a lemma is: WordNet's tagged count of the sense, plus how often its word
        occurs in the real questions given (either may know it when the other does not)."""
        name = lemma.name().lower()
        return (
            int(lemma.count()) + self._vocabulary.get(name, 0) + self._vocabulary.get(name + "s", 0)
        )

    def _count(self, name: str, pos: str) -> int:
        """A word's tagged count over all its senses in one part of speech."""
        key = (name, pos)
        if key not in self._counts:
            self._counts[key] = sum(int(lemma.count()) for lemma in self._wn.lemmas(name, pos))
        return self._counts[key]


def _shuffled_top(options: Sequence[tuple[str, int]], rng: random.Random) -> list[str]:
    """The most common options (they come most common first), in a random order: the first
    that can be inflected is taken."""
    top = [name for name, _count in options[:TOP_SIBLINGS]]
    rng.shuffle(top)
    return top


def _reverse(exceptions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """WordNet's "form -> lemmas" exception map read as "lemma -> irregular forms"."""
    forms: dict[str, list[str]] = defaultdict(list)
    for form, lemmas in exceptions.items():
        for lemma in lemmas:
            forms[lemma.replace("_", " ")].append(form.replace("_", " "))
    return dict(forms)


def vocabulary(texts: Iterable[str]) -> Counter[str]:
    """How often each lower-case word and two-word sequence ("freezing_point") occurs in texts:
    WordNet counts only the senses tagged in one old corpus, and real questions know "router"."""
    counts: Counter[str] = Counter()
    for text in texts:
        found = [word.text.lower() for word in words(text)]
        counts.update(found)
        counts.update(f"{a}_{b}" for a, b in itertools.pairwise(found))
    return counts


def read_questions(path: Path) -> list[str]:
    """The distinct questions of a pairs file (its "query" and "cached" fields), sorted."""
    seen: set[str] = set()
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            seen.update(str(row[field]).strip() for field in ("query", "cached"))
    return sorted(seen)


def main(argv: list[str] | None = None) -> int:
    """Prints a sample of the pairs made from a pairs file, for judging them by eye."""
    parser = argparse.ArgumentParser(description="a sample of WordNet minimal pairs")
    parser.add_argument(
        "questions",
        type=Path,
        help="a JSONL file with query and cached; all its questions make the vocabulary",
    )
    parser.add_argument("--limit", type=int, default=2000)
    parser.add_argument("--examples", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wordnet", type=Path, default=None, help="the fetched dict/ folder")
    args = parser.parse_args(argv)
    every = read_questions(args.questions)
    maker = MinimalPairs.open(args.wordnet, seed=args.seed, vocabulary=vocabulary(every))
    questions = random.Random(args.seed).sample(every, min(args.limit, len(every)))
    made = maker.make(questions)
    counts = Counter(pair.origin for pair in made)
    asked = set(questions)
    with_pairs = len({p.query if p.query in asked else p.cached for p in made})
    print(f"{len(questions)} questions, {with_pairs} with a pair, {len(made)} pairs")
    for origin in ORIGINS:
        print(f"  {origin:<18} {counts[origin]:5d}")
    rng = random.Random(args.seed)
    for origin in ORIGINS:
        kind = [pair for pair in made if pair.origin == origin]
        print(f"\n{origin} (label {1.0 if origin == SYNONYM else 0.0}):")
        for pair in rng.sample(kind, min(args.examples, len(kind))):
            print(f"  {pair.query}\n    {pair.cached}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
