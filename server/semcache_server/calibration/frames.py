"""Frame rewrites, aliases and frame-keeping sibling swaps: training pairs labelled by construction.

A question has a *frame* (what is asked: "how tall is", "who wrote", "how do I") and *slots* (about
what). A paraphrase rewords the frame and keeps every slot ("How tall is X?" / "What is the height
of X?"); a look-alike keeps the frame and changes one slot ("the boiling point of water" / "of
milk"). A verifier has to learn which words are frame, so this module writes both kinds from real
questions, with labels known from how they were made:

- `parse` reads a question as one family's pattern with its slots, and `rewrites` writes it with
  the family's other patterns: positives, origin "frames:<family>"; `fronted` moves a trailing
  "in Python" to the front: positives, origin "frames:fronted";
- `alias_swaps` trades a name for another of its group (``core/policies/words/aliases.txt``,
  shared with the guards): positives, origin "aliases";
- `sibling_swaps` trades one word inside a slot for a sibling from the classes of
  ``siblings.txt``: negatives, origin "frames:sibling"; "frames:sibling_reworded" also rewords
  the frame, so that a new frame never reads as proof of the same question.

Slots are copied verbatim (only an article's capital moves when a slot leaves the sentence start,
and a "Which command lists ..." verb is conjugated). Offline only: the serving path never imports
calibration/. ``python -m semcache_server.calibration.frames`` prints a sample, coverage and the
frame rewrites mined from Quora's labelled duplicates.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from semcache_server.calibration.verifier_data import TrainingPair

_CALIBRATION = resources.files("semcache_server.calibration")
_WORDS = resources.files("semcache_server.core") / "policies" / "words"

Validator = Callable[[str], bool]
Condition = Callable[["Parsed"], bool]


# --- word lists -------------------------------------------------------------------------------


def _data_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


@cache
def _stopwords() -> frozenset[str]:
    return frozenset(_data_lines((_WORDS / "stopwords.txt").read_text(encoding="utf-8")))


@dataclass(frozen=True)
class _Term:
    """One spelling of a name: matched ignoring case unless `exact`."""

    text: str
    exact: bool

    @staticmethod
    def read(raw: str) -> _Term:
        raw = raw.strip()
        return _Term(raw[1:], True) if raw.startswith("=") else _Term(raw, False)

    @property
    def key(self) -> str:
        return self.text if self.exact else _fold(self.text)


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass(frozen=True)
class _Groups:
    """Groups of terms (alias groups, or the members of sibling classes) and a finder for them.

    `members[g][m]` holds the spellings of member m of group g; `where[key]` the (group, member)
    places of a spelling, since a name may sit in two classes (Facebook: company, social network).
    """

    names: tuple[str, ...]
    members: tuple[tuple[tuple[_Term, ...], ...], ...]
    where: Mapping[str, tuple[tuple[int, int], ...]]
    finders: tuple[re.Pattern[str], ...]

    @staticmethod
    def build(names: Sequence[str], members: Sequence[Sequence[Sequence[_Term]]]) -> _Groups:
        where: dict[str, list[tuple[int, int]]] = {}
        for g, group in enumerate(members):
            for m, spellings in enumerate(group):
                for term in spellings:
                    where.setdefault(term.key, []).append((g, m))
        terms = [t for group in members for spellings in group for t in spellings]
        finders = tuple(
            _term_finder([t.text for t in terms if t.exact == exact], ignore_case=not exact)
            for exact in (False, True)
        )
        return _Groups(
            tuple(names),
            tuple(tuple(tuple(s) for s in group) for group in members),
            {key: tuple(places) for key, places in where.items()},
            finders,
        )

    def find(self, text: str, start: int = 0, end: int | None = None) -> list[_Found]:
        """Every whole-word occurrence of a term in text[start:end], leftmost-longest."""
        stop = len(text) if end is None else end
        found: list[_Found] = []
        for finder in self.finders:
            for match in finder.finditer(text, start, stop):
                raw = match.group()
                key = raw if finder.flags & re.IGNORECASE == 0 else _fold(raw)
                for group, member in self.where.get(key, ()):
                    found.append(_Found(match.start(), match.end(), raw, group, member))
        found.sort(key=lambda f: (f.start, -f.end))
        kept: list[_Found] = []
        for hit in found:  # "the Earth" hides the "Earth" inside it
            last = kept[-1] if kept else None
            if (
                last is None
                or hit.start >= last.end
                or (hit.start, hit.end) == (last.start, last.end)
            ):
                kept.append(hit)
        return kept


@dataclass(frozen=True)
class _Found:
    start: int
    end: int
    raw: str
    group: int
    member: int


def _term_finder(terms: Iterable[str], *, ignore_case: bool) -> re.Pattern[str]:
    """A regex for whole-word occurrences: "js" not in "Node.js", "os" not in "os.path"."""
    spelled = sorted(set(terms), key=len, reverse=True) or ["(?!x)x"]
    body = "|".join(re.escape(t).replace(r"\ ", r"\s+") for t in spelled)
    flags = re.IGNORECASE if ignore_case else 0
    return re.compile(rf"(?<![\w.+#/\[-])(?:{body})(?![\w+#\]]|[.\-/'\u2019]\w)", flags)


@cache
def aliases() -> _Groups:
    """The alias groups of ``core/policies/words/aliases.txt``: each group one member."""
    groups = [
        [[_Term.read(part)] for part in line.split("|")]
        for line in _data_lines((_WORDS / "aliases.txt").read_text(encoding="utf-8"))
    ]
    return _Groups.build([g[0][0].text for g in groups], groups)


@cache
def siblings() -> _Groups:
    """The sibling classes of ``siblings.txt``: members of one class name different things."""
    names: list[str] = []
    classes: list[list[list[_Term]]] = []
    for line in _data_lines((_CALIBRATION / "siblings.txt").read_text(encoding="utf-8")):
        name, _, body = line.partition(":")
        names.append(name.strip())
        classes.append([[_Term.read(v) for v in member.split("~")] for member in body.split("|")])
    return _Groups.build(names, classes)


# --- small grammar ----------------------------------------------------------------------------


def _word_set(words: str) -> frozenset[str]:
    return frozenset(words.split())


_PRONOUN_HEADS = _word_set(
    "i me you he him she it we us they them there here too so very enough something anything "
    "everything nothing someone anyone everyone somebody anybody nobody one myself yourself "
    "himself herself itself ourselves themselves"
)
_DEMONSTRATIVES = _word_set("this that these those")
_CLAUSE_WORDS = _word_set(
    "to if when whether because than that which who whom whose what why how where should would "
    "could can will shall may might must do does did is are was were be been being have has had "
    "not don't doesn't didn't isn't aren't can't won't i you he she we they it"
)
_AUXILIARIES = _word_set(
    "do does did is are was were be can could should would will shall may might must have has "
    "had am"
)
_CLAUSE_OPENERS_DENIED = _word_set(
    "not to i you he she it we they there so really the a an my your also even just actually still"
)
_TAIL_PREPOSITIONS = _word_set(
    "in on for when if to with at during from by using under after before without"
)
_PREPOSITIONS = _word_set(
    "of in on at for from with to by about during under over into between among"
)
_DETERMINERS = _word_set("the a an my your our his her their its this that these those")
_FIRST_PERSON = _word_set("i me my mine myself i'm i've i'd we us our")
_PERSONAL = _word_set("i me my mine myself you your yours we us our he she his her they")
_IRREGULAR_PLURALS = _word_set(
    "people children men women teeth feet mice geese data media police cattle"
)
_S_SINGULARS = _word_set("states news physics mathematics economics series species")
_TERM_DENIED = _word_set(
    "best worst good bad wrong right new next better worse happening going up down more less "
    "most least real true false difference like meaning purpose point use way reason happened "
    "life love"
)
_NUMBER_WORDS = _word_set("one two three four five six seven eight nine ten hundred")
_TECH_MARKERS = (
    *_word_set("git github terminal bash zsh linux unix docker kubectl npm pip sql vim cli ssh"),
    "command line",
    "command prompt",
    "shell script",
)
"""Words that make "Which command ...?" a fair way to ask (with the "tech-" sibling classes)."""


_PUNCTUATION = string.punctuation + "\u2018\u2019\u201c\u201d"


def _tokens(text: str) -> list[str]:
    """Lower-case words with the punctuation around them removed."""
    return [w.strip(_PUNCTUATION).lower() for w in text.split() if w.strip(_PUNCTUATION)]


def _any(text: str) -> bool:
    return bool(text.strip()) and "?" not in text


def _noun_phrase(max_words: int) -> Validator:
    """A slot that names a thing: short, no verbs or clause words, not a bare pronoun."""

    def check(text: str) -> bool:
        words = _tokens(text)
        if not 1 <= len(words) <= max_words or "?" in text:
            return False
        if words[0] in _PRONOUN_HEADS or (len(words) == 1 and words[0] in _DEMONSTRATIVES):
            return False
        if words[0] in _PREPOSITIONS or ":" in text or ";" in text or text[0] in "-/":
            return False
        return not any(w in _CLAUSE_WORDS for w in words) and any(c.isalpha() for c in text)

    return check


def _clause(min_words: int, max_words: int = 24) -> Validator:
    """A slot that does something ("undo my last commit"): opens with what reads as a verb."""

    def check(text: str) -> bool:
        words = _tokens(text)
        return (
            min_words <= len(words) <= max_words
            and "?" not in text
            and words[0].isalpha()
            and words[0] not in _CLAUSE_OPENERS_DENIED
            and words[0] not in _AUXILIARIES
        )

    return check


def _term(max_words: int) -> Validator:
    """A slot that a definition answers: a short name, no opinion or quantity in it."""
    noun_phrase = _noun_phrase(max_words)
    allowed = _word_set("a an the of and")

    def check(text: str) -> bool:
        words = _tokens(text)
        return (
            noun_phrase(text)
            and not any(w in _stopwords() and w not in allowed for w in words)
            and not any(w in _TERM_DENIED or w in _superlatives() for w in words)
            and not any(c in "+=*/^%<>" for c in text)
            and not any(w.isdigit() for w in words)
        )

    return check


def _defined(text: str) -> bool:
    """What "What is Y?" asks to define; "alternate of X" is an attribute, not a name."""
    words = _tokens(text)
    if "of" in words and words[0] not in ("a", "an", "the") and not text[:1].isupper():
        return False
    return _term(4)(text)


def _content_words(max_words: int) -> Validator:
    """A slot of content words only ("programming language"): no function word at all."""

    def check(text: str) -> bool:
        words = _tokens(text)
        return (
            1 <= len(words) <= max_words
            and all(w[0].isalpha() and w not in _stopwords() for w in words)
            and not any(w in _NUMBER_WORDS for w in words)
        )

    return check


def _counted(text: str) -> bool:
    """What "how many" counts: content words ending in a plural ("calories", "bones")."""
    words = _tokens(text)
    return _content_words(3)(text) and (
        words[-1] in _IRREGULAR_PLURALS or (words[-1].endswith("s") and len(words[-1]) > 3)
    )


def _words(min_words: int, max_words: int) -> Validator:
    return lambda text: _any(text) and min_words <= len(_tokens(text)) <= max_words


def _not(validator: Validator, *denied: str) -> Validator:
    """validator, refusing any of the denied words (or marks, such as ",") in the slot."""
    marks = [d for d in denied if not d.isalnum()]

    def check(text: str) -> bool:
        words = _tokens(text)
        return (
            validator(text)
            and not any(w in denied for w in words)
            and not any(m in text for m in marks)
        )

    return check


def _plural(phrase: str) -> bool:
    """A guess at a noun phrase's number, for "is"/"are" and "does"/"do"."""
    words = phrase.split()
    if not words:
        return False
    low = [w.lower().strip(".,'\"") for w in words]
    if low[0] in ("these", "those", "many", "several", "both", "few"):
        return True
    head_index = next((i for i, w in enumerate(low) if w in _PREPOSITIONS and i > 0), len(low))
    head, head_low = words[head_index - 1].strip(".,'\""), low[head_index - 1]
    if head_low in _IRREGULAR_PLURALS:
        return True
    if (
        not head_low.endswith("s")
        or head_low.endswith(("ss", "us", "is", "ics", "ous"))
        or len(head_low) <= 3
        or head_low in _S_SINGULARS
    ):
        return False
    return not (head[:1].isupper() and low[0] != "the")  # Paris, Mars, Netflix


def _third_person(clause: str) -> str:
    """ "list the files" -> "lists the files": a command's verb after "Which command"."""
    first, _, rest = clause.partition(" ")
    low = first.lower()
    irregular = {"be": "is", "have": "has", "do": "does", "go": "goes"}
    if low in irregular:
        verb = irregular[low]
    elif low.endswith(("s", "sh", "ch", "x", "z", "o")):
        verb = first + "es"
    elif low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        verb = first[:-1] + "ies"
    else:
        verb = first + "s"
    return f"{verb} {rest}" if rest else verb


def _base_form(clause: str) -> str | None:
    """The inverse of `_third_person`, or None when the first word is not a -s verb."""
    first, _, rest = clause.partition(" ")
    low = first.lower()
    irregular = {"is": "be", "has": "have", "does": "do", "goes": "go"}
    if low in irregular:
        verb = irregular[low]
    elif low.endswith("ies") and len(low) > 4:
        verb = first[:-3] + "y"
    elif low.endswith(("sses", "shes", "ches", "xes", "zes", "oes")):
        verb = first[:-2]
    elif low.endswith("s") and not low.endswith("ss") and len(low) > 2:
        verb = first[:-1]
    else:
        return None
    return f"{verb} {rest}" if rest else verb


def _article_for(word: str) -> str:
    """ "a" or "an" by sound: "an SSD", "a URL", "an hour", "a user"."""
    if len(word) > 1 and word.isupper():
        return "an" if word[0] in "AEFHILMNORSX" else "a"
    low = word.lower()
    if low.startswith(("uni", "use", "usu", "one", "eu", "ur")):
        return "a"
    if low.startswith(("hour", "honest", "heir")):
        return "an"
    return "an" if low[:1] in ("a", "e", "i", "o", "u") else "a"


def _capitalised(text: str) -> str:
    """A sentence's first letter up, leaving "iPhone" and "macOS" as they are."""
    if text[:1].islower() and not (len(text) > 1 and text[1].isupper()):
        return text[0].upper() + text[1:]
    return text


def _in_sentence(text: str) -> str:
    """A slot that opened the question, moved inside one: "The Nile" -> "the Nile"."""
    first, _, rest = text.partition(" ")
    if rest and first[:1].isupper() and first.lower() in _DETERMINERS:
        return first.lower() + " " + rest
    return text


def _replace(text: str, start: int, end: int, new: str) -> str:
    """text with text[start:end] replaced, and an "a"/"an" right before it made to agree."""
    before = text[:start]
    article = re.search(r"\b(a|an|A|An)\s+$", before)
    if article:
        right = _article_for(new)
        if article.group(1)[0].isupper():
            right = right.capitalize()
        before = before[: article.start(1)] + right + before[article.end(1) :]
    return before + new + text[end:]


def _cased_like(new: str, written: str, raw: str) -> str:
    """new spelled as the user spelled raw: all lower stays lower, a capital stays a capital."""
    if raw == written:
        return new
    plain = not any(c.isupper() for c in new[1:])
    if raw.islower() and plain:
        return new.lower()
    if raw[:1].isupper() and new[:1].islower() and plain:
        return new[0].upper() + new[1:]
    return new


# --- the frame table --------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """Patterns that ask one thing in different words, and what their slots may hold.

    A pattern is text with tokens: ``{X}`` a slot (``{X3}``: slot X with its verb conjugated),
    a lexicon form (``{adj}``, ``{noun}``: words that change together, one row of `lexicon`),
    or grammar that agrees with the `subject` slot: ``{be}`` is/are/was/were, ``{be1}`` is/was,
    ``{do}`` does/do/did, ``{has}`` has/have, ``{s}`` a verb's -s, ``{pos}`` 's or '.
    """

    name: str
    patterns: tuple[str, ...]
    slots: Mapping[str, Validator] = field(default_factory=dict)
    subject: str | None = None
    lexicon: tuple[Mapping[str, str | None], ...] = ()
    tense: str = "any"
    """ "present" or "past" when some pattern's literal words fix the tense, else "any"."""
    symmetric: tuple[str, str] | None = None
    """Two slots that may trade places and still ask the same ("between A and B")."""
    optional: frozenset[str] = frozenset()
    slot_regex: Mapping[str, str] = field(default_factory=dict)
    when: Mapping[str, Condition] = field(default_factory=dict)
    """Conditions for writing a pattern (the pattern's text is the key)."""

    @property
    def forms(self) -> frozenset[str]:
        return frozenset(form for row in self.lexicon for form in row)


_GRAMMAR: dict[str, dict[str, tuple[str, ...]]] = {
    "be": {"any": ("is", "are", "was", "were"), "present": ("is", "are"), "past": ("was", "were")},
    "be1": {"any": ("is", "was"), "present": ("is",), "past": ("was",)},
    "do": {"any": ("does", "do", "did"), "present": ("does", "do"), "past": ("did",)},
    "has": {"any": ("has", "have", "had"), "present": ("has", "have"), "past": ("had",)},
}
_SINGULAR_FORMS = frozenset({"is", "was", "does", "has", "s"})
_PLURAL_FORMS = frozenset({"are", "were", "do", "have", ""})
_PAST_FORMS = frozenset({"was", "were", "did", "had"})


def _present(parsed: Parsed) -> bool:
    return not parsed.past


def _one_now(parsed: Parsed) -> bool:
    """ "What's" reads "what is": present tense, and one thing ("What's the effects" is not)."""
    subject = parsed.family.subject
    if parsed.past or subject is None:
        return not parsed.past
    plural = parsed.plural if parsed.plural is not None else _plural(parsed.slots[subject])
    return not plural


def _no_first_person(slot: str) -> Condition:
    return lambda p: not any(w in _FIRST_PERSON for w in _tokens(p.slots[slot]))


def _short_owner(slot: str, attribute: str | None = None) -> Condition:
    """ "X's capital" reads well only for a short X and an attribute a thing has."""

    def check(p: Parsed) -> bool:
        words = _tokens(p.slots[slot])
        if not 1 <= len(words) <= 4 or "," in p.slots[slot] or "and" in words:
            return False
        if any(w in _stopwords() and w not in ("the", "a", "an", "of") for w in words):
            return False
        if any(c.isdigit() for c in p.slots[slot]) or re.search(r"['\u2019]s\b", p.slots[slot]):
            return False  # "60 mbps' speed", "China's copying ability's strength"
        if "of" in words and not any(w[:1].isupper() for w in p.slots[slot].split()):
            return False  # "rotation of the earth's speed"; "the Statue of Liberty's height"
        return attribute is None or p.slots[attribute].lower() in _OWNED_ATTRIBUTES

    return check


_HOW_TO_PATTERNS = (
    "How do I {X}?",
    "How can I {X}?",
    "How should I {X}?",
    "How would I {X}?",
    "How do you {X}?",
    "How does one {X}?",
    "How can one {X}?",
    "How to {X}?",
    "What is the best way to {X}?",
    "What's the best way to {X}?",
    "What's the way to {X}?",
    "What is the way to {X}?",
    "Which is the best way to {X}?",
    "What are some ways to {X}?",
    "What are the best ways to {X}?",
    "What should I do to {X}?",
    "What can I do to {X}?",
    "Is there a way to {X}?",
    "What steps should I take to {X}?",
    "What does it take to {X}?",
)
_CATCHING = _word_set("get catch contract develop")


def _all(*conditions: Condition) -> Condition:
    return lambda p: all(condition(p) for condition in conditions)


def _a_goal(p: Parsed) -> bool:
    """ "How do you get pimples?" asks what causes them; "the best way to get pimples" does not."""
    opened_generic = p.pattern.text.startswith(("How do you", "How does one", "How can one"))
    return not (opened_generic and _tokens(p.slots["X"])[0] in _CATCHING)


_DIFFERENCE = (
    "What {be1} the difference between {A} and {B}?",
    "What's the difference between {A} and {B}?",
    "What are the differences between {A} and {B}?",
    "How {do} {A} differ from {B}?",
    "How {be} {A} different from {B}?",
    "How do {A} and {B} differ?",
    "What distinguishes {A} from {B}?",
)
_NOT_EVENTS = _word_set(
    "time first last century centuries age ages era period day days night morning evening sleep "
    "and who how why what usually"
)
_PARTICIPLE_ENDINGS = _word_set(
    "born made built found kept held hidden sold shown taken given seen"
)


def _parallel(p: Parsed) -> bool:
    """ "between intensive and extensive properties" shares one noun: A alone is no thing."""
    a, b = _tokens(p.slots["A"]), _tokens(p.slots["B"])
    return not (
        len(a) == 1 and p.slots["A"][:1].islower() and len(b) >= 2 and b[0] not in _DETERMINERS
    )


def _a_word(slot: str) -> Condition:
    """ "Define W" asks for a word's definition: not for a phrase's meaning ("a tattoo")."""
    return lambda p: _content_words(2)(p.slots[slot].strip("\"'\u2018\u2019"))


def _no_gerund(validator: Validator) -> Validator:
    """ "having sleep paralysis every night" is an activity, not a thing that happens."""

    def check(text: str) -> bool:
        words = _tokens(text)
        return validator(text) and not (len(words) >= 2 and words[0].endswith("ing"))

    return check


def _place_of(text: str) -> bool:
    """What "Where is Y" asks the place of: a thing, not "Rahul Gandhi born", not "the best"."""
    words = _tokens(text)
    return (
        _noun_phrase(4)(text)
        and not any(w in _superlatives() or w in ("favorite", "favourite") for w in words)
        and not (words[-1].endswith(("ed", "ing")) or words[-1] in _PARTICIPLE_ENDINGS)
        and words[-1] not in _PREPOSITIONS
    )


def _technical(p: Parsed) -> bool:
    return _mentions_tech(p.text)


def _command_verb(p: Parsed) -> bool:
    first = _tokens(p.slots["X"])[0]
    return _mentions_tech(p.text) and not first.endswith("ly") and first.isalpha()


def _becoming(p: Parsed) -> bool:
    return _tokens(p.slots["X"])[0] in ("become", "be")


def _unit(p: Parsed) -> bool:
    return any(siblings().names[f.group].endswith("units-plural") for f in _sib(p.slots["N"]))


def _sib(text: str) -> list[_Found]:
    return siblings().find(text)


def _mentions_tech(text: str) -> bool:
    if any(siblings().names[f.group].startswith("tech-") for f in siblings().find(text)):
        return True
    return bool(_tech_finder().search(text))


@cache
def _tech_finder() -> re.Pattern[str]:
    return _term_finder(_TECH_MARKERS, ignore_case=True)


@cache
def _superlatives() -> frozenset[str]:
    found = {"best", "worst", "greatest", "easiest", "hardest", "most", "least"}
    groups = siblings()
    for g, name in enumerate(groups.names):
        if name.startswith("superlatives"):
            found |= {t.text.lower() for member in groups.members[g] for t in member}
    return frozenset(found)


def _superlative(text: str) -> bool:
    words = _tokens(text)
    if len(words) == 1:
        return words[0] in _superlatives()
    return len(words) == 2 and words[0] in ("most", "least") and words[1] not in _stopwords()


_OWNED_ATTRIBUTES = _word_set(
    "capital population currency name age height weight size length area price cost speed "
    "temperature diameter radius mass density color colour language flag anthem president founder "
    "ceo author owner address birthday symbol formula value origin title motto gdp location salary "
    "nickname slogan logo religion leader mayor governor capacity volume budget revenue lifespan "
    "diet habitat climate"
)

_SLOT = r"[^?!\n]+?(?<![,;:])"
_NP = _noun_phrase(7)
_SHORT_NP = _noun_phrase(5)
_HOW_TO = _clause(2)


def _families() -> tuple[Family, ...]:
    """The frame table: each family a set of patterns that ask the same thing."""
    tech = {
        "What is the command to {X}?": _technical,
        "What's the command to {X}?": _technical,
        "Which command do I use to {X}?": _technical,
        "Which command {X3}?": _command_verb,
        "What command {X3}?": _command_verb,
    }
    return (
        Family(
            "how_to",
            (*_HOW_TO_PATTERNS, *tech),
            slots={"X": _HOW_TO},
            when={
                **{p: _a_goal for p in _HOW_TO_PATTERNS},
                "How do you {X}?": _all(_a_goal, _no_first_person("X")),
                "How does one {X}?": _all(_a_goal, _no_first_person("X")),
                "How can one {X}?": _all(_a_goal, _no_first_person("X")),
                "What does it take to {X}?": _all(_a_goal, _becoming),
                **tech,
            },
        ),
        Family(
            "possible",
            (
                "Is it possible to {X}?",
                "Can I {X}?",
                "Can one {X}?",
                "Is it possible for me to {X}?",
            ),
            slots={"X": _HOW_TO},
            when={"Can one {X}?": _no_first_person("X")},
        ),
        Family(
            "experience",
            (
                "What is it like to {X}?",
                "What's it like to {X}?",
                "How does it feel to {X}?",
                "What does it feel like to {X}?",
            ),
            slots={"X": _clause(1)},
        ),
        Family(
            "opinion",
            (
                "What do you think of {Y}?",
                "What do you think about {Y}?",
                "What is your opinion of {Y}?",
                "What is your opinion on {Y}?",
                "What are your thoughts on {Y}?",
                "How do you feel about {Y}?",
            ),
            slots={"Y": _noun_phrase(8)},
        ),
        Family(
            "about",
            (
                "Tell me about {Y}.",
                "What can you tell me about {Y}?",
                "Can you tell me about {Y}?",
                "What do you know about {Y}?",
            ),
            slots={"Y": _noun_phrase(8)},
        ),
        Family(
            "define",
            (
                "What {be} {Y}?",
                "What's {Y}?",
                "What exactly {be} {Y}?",
                "Can you explain what {Y} {be}?",
                "Please explain what {Y} {be}.",
                "Can you tell me what {Y} {be}?",
                "Explain {Y}.",
                "Can you explain {Y}?",
                "How would you define {Y}?",
            ),
            slots={"Y": _defined},
            subject="Y",
            when={"What's {Y}?": _one_now, "How would you define {Y}?": _present},
        ),
        Family(
            "meaning",
            (
                "What does {W} mean?",
                "What is the meaning of {W}?",
                "What's the meaning of {W}?",
                "What is the definition of {W}?",
                "What is meant by {W}?",
                "What do you mean by {W}?",
                "Define {W}.",
            ),
            slots={"W": _noun_phrase(5)},
            tense="present",
            when={
                "What is the definition of {W}?": _a_word("W"),
                "Define {W}.": _a_word("W"),
            },
        ),
        Family(
            "attribute",
            (
                "What {be} the {A} of {Y}?",
                "What's the {A} of {Y}?",
                "Tell me the {A} of {Y}.",
                "Can you tell me the {A} of {Y}?",
                "What {be} {Y}{pos} {A}?",
                "The {A} of {Y} {be} what?",
                "{Y}{pos} {A} {be} what?",
            ),
            slots={"A": _content_words(3), "Y": _noun_phrase(8)},
            subject="A",
            when={
                "What's the {A} of {Y}?": _one_now,
                "What {be} {Y}{pos} {A}?": _short_owner("Y", "A"),
                "The {A} of {Y} {be} what?": _short_owner("Y"),
                "{Y}{pos} {A} {be} what?": _short_owner("Y", "A"),
            },
        ),
        Family(
            "measure",
            (
                "How {adj} {be} {Y}?",
                "What {be1} the {noun} of {Y}?",
                "What's the {noun} of {Y}?",
                "What {be1} {Y}{pos} {noun}?",
                "{Y} {be} how {adj}?",
            ),
            slots={"Y": _NP},
            subject="Y",
            lexicon=tuple(
                {"adj": adj, "noun": noun}
                for adj, noun in (
                    ("tall", "height"),
                    ("old", "age"),
                    ("big", "size"),
                    ("large", "size"),
                    ("long", "length"),
                    ("deep", "depth"),
                    ("fast", "speed"),
                    ("hot", "temperature"),
                    ("wide", "width"),
                    ("thick", "thickness"),
                    ("dense", "density"),
                    ("bright", "brightness"),
                    ("strong", "strength"),
                )
            ),
            when={
                "What's the {noun} of {Y}?": _present,
                "What {be1} {Y}{pos} {noun}?": _short_owner("Y"),
            },
        ),
        Family(
            "weight",
            (
                "How much {do} {Y} weigh?",
                "How heavy {be} {Y}?",
                "What {be1} the weight of {Y}?",
                "What {be1} {Y}{pos} weight?",
            ),
            slots={"Y": _NP},
            subject="Y",
            tense="present",
            when={"What {be1} {Y}{pos} weight?": _short_owner("Y")},
        ),
        Family(
            "agent",
            (
                "Who {past} {Y}?",
                "Who is the {agent} of {Y}?",
                "Who was the {agent} of {Y}?",
                "Who {be} {Y} {part} by?",
                "By whom {be} {Y} {part}?",
                "{Y} {be} {part} by whom?",
                "Which {kind} {past} {Y}?",
            ),
            slots={"Y": _noun_phrase(8)},
            subject="Y",
            tense="past",
            lexicon=tuple(
                {"past": past, "part": part, "agent": agent, "kind": kind}
                for past, part, agent, kind in (
                    ("wrote", "written", "author", "author"),
                    ("wrote", "written", "writer", "writer"),
                    ("painted", "painted", "painter", "artist"),
                    ("invented", "invented", "inventor", None),
                    ("founded", "founded", "founder", None),
                    ("discovered", "discovered", "discoverer", None),
                    ("directed", "directed", "director", None),
                    ("composed", "composed", "composer", None),
                    ("designed", "designed", "designer", None),
                    ("built", "built", "builder", None),
                    ("created", "created", "creator", None),
                    ("sang", "sung", "singer", "singer"),
                    ("produced", "produced", "producer", None),
                    ("developed", "developed", "developer", None),
                    ("sculpted", "sculpted", "sculptor", None),
                    ("illustrated", "illustrated", "illustrator", None),
                    ("translated", "translated", "translator", None),
                )
            ),
        ),
        Family(
            "cause",
            (
                "What causes {Y}?",
                "Why {do} {Y} happen?",
                "What {be1} the cause of {Y}?",
                "What are the causes of {Y}?",
                "What leads to {Y}?",
                "Why {do} {Y} occur?",
            ),
            slots={"Y": _no_gerund(_not(_noun_phrase(5), "my", "your", "people"))},
            subject="Y",
            tense="present",
        ),
        Family(
            "difference",
            _DIFFERENCE,
            slots={
                "A": _not(_noun_phrase(6), "and", "between", ","),
                "B": _not(_noun_phrase(8), "and", ","),
            },
            when={p: _parallel for p in _DIFFERENCE},
            subject="A",
            tense="present",
            symmetric=("A", "B"),
        ),
        Family(
            "which_better",
            (
                "Which is better, {A} or {B}?",
                "Which one is better, {A} or {B}?",
                "Which is better: {A} or {B}?",
                "{A} or {B}: which is better?",
                "{A} or {B}, which is better?",
            ),
            slots={"A": _not(_noun_phrase(4), "or"), "B": _not(_noun_phrase(4), "or")},
            tense="present",
            symmetric=("A", "B"),
        ),
        Family(
            "purpose",
            (
                "What {be1} the purpose of {Y}?",
                "What {be} {Y} used for?",
                "What {be1} the use of {Y}?",
                "Why do we use {Y}?",
                "What do we use {Y} for?",
            ),
            slots={"Y": _SHORT_NP},
            subject="Y",
            tense="present",
        ),
        Family(
            "how_works",
            (
                "How {do} {Y} work?",
                "Can you explain how {Y} work{s}?",
                "Explain how {Y} work{s}.",
                "How exactly {do} {Y} work?",
                "How {do} {Y} function?",
            ),
            slots={"Y": _NP},
            subject="Y",
            tense="present",
        ),
        Family(
            "reason_so",
            (
                "Why {be} {Y} so {Z}?",
                "What makes {Y} so {Z}?",
                "How come {Y} {be} so {Z}?",
                "What is the reason {Y} {be} so {Z}?",
            ),
            slots={"Y": _SHORT_NP, "Z": _any},
            subject="Y",
            tense="present",
        ),
        Family(
            "count",
            (
                "How many {N} are there in {Y}?",
                "How many {N} are in {Y}?",
                "How many {N} in {Y}?",
                "What is the number of {N} in {Y}?",
                "What is the total number of {N} in {Y}?",
                "How many {N} {do} {Y} have?",
                "{Y} {has} how many {N}?",
                "{Y} {be} how many {N}?",
            ),
            slots={"N": _counted, "Y": _NP},
            subject="Y",
            tense="present",
            when={"{Y} {be} how many {N}?": _unit},
        ),
        Family(
            "population",
            (
                "What {be1} the population of {Y}?",
                "What's the population of {Y}?",
                "How many people live in {Y}?",
                "How populous is {Y}?",
                "What {be1} {Y}{pos} population?",
            ),
            slots={"Y": _SHORT_NP},
            tense="present",
            when={"What {be1} {Y}{pos} population?": _short_owner("Y")},
        ),
        Family(
            "price",
            (
                "How much {do} {Y} cost?",
                "What {be1} the price of {Y}?",
                "What {be1} the cost of {Y}?",
                "How expensive {be} {Y}?",
                "What {do} {Y} cost?",
            ),
            slots={"Y": _no_gerund(_NP)},
            subject="Y",
            tense="present",
        ),
        Family(
            "distance",
            (
                "How far {be} {A} from {B}?",
                "How far away {be} {A} from {B}?",
                "What {be1} the distance from {A} to {B}?",
                "What {be1} the distance between {A} and {B}?",
            ),
            slots={"A": _not(_SHORT_NP, "and"), "B": _not(_SHORT_NP, "and")},
            subject="A",
            tense="present",
            symmetric=("A", "B"),
        ),
        Family(
            "location",
            ("Where {be} {Y} located?", "Where {be} {Y}?", "What {be1} the location of {Y}?"),
            slots={"Y": _place_of},
            subject="Y",
        ),
        Family(
            "default",
            (
                "What {be1} the default {A} for {Y}?",
                "What {be1} the default {A} of {Y}?",
                "What's the default {A} for {Y}?",
                "Which {A} {do} {Y} use by default?",
                "What {A} {do} {Y} use by default?",
                "By default, which {A} {do} {Y} use?",
            ),
            slots={"A": _content_words(2), "Y": _SHORT_NP},
            subject="Y",
            tense="present",
        ),
        Family(
            "superlative",
            (
                "What {be} the {S} {C}{T}?",
                "What's the {S} {C}{T}?",
                "Which {C} {be} the {S}{T}?",
                "Which {be} the {S} {C}{T}?",
            ),
            slots={"S": _superlative, "C": _content_words(3), "T": lambda t: "?" not in t},
            subject="C",
            optional=frozenset({"T"}),
            slot_regex={
                "S": r"(?:most|least)\s+[A-Za-z]+|[A-Za-z]+",
                "C": r"[A-Za-z][\w-]*(?:\s+[A-Za-z][\w-]*){0,2}?",
                "T": r"(?:in|on|of|among|ever|for|from|to|under|since)\b[^?!\n]*?",
            },
            when={"What's the {S} {C}{T}?": _one_now},
        ),
        Family(
            "best_plural",
            (
                "What are the best {Z}?",
                "What are some of the best {Z}?",
                "Which are the best {Z}?",
                "What are the top {Z}?",
                "What are some good {Z}?",
            ),
            slots={
                "Z": lambda z: (
                    _any(z) and not _tokens(z)[0].isdigit() and _tokens(z)[0] not in _NUMBER_WORDS
                )
            },
            tense="present",
        ),
        Family(
            "which_what",
            ("Which {C} {R}?", "What {C} {R}?"),
            slots={
                "C": _not(
                    _content_words(2),
                    "time",
                    "else",
                    "kind",
                    "sort",
                    "type",
                    "happens",
                    "happened",
                    "makes",
                    "made",
                    "causes",
                    "caused",
                    "exactly",
                    "much",
                    "many",
                    "if",
                ),
                "R": _any,
            },
            slot_regex={
                "C": r"[A-Za-z][\w-]*(?:\s+[A-Za-z][\w-]*)?",
                "R": r"(?:is|are|was|were|do|does|did|can|could|should|would|will|has|have)\b"
                r"[^?!\n]*?",
            },
        ),
        Family(
            "if",
            (
                "What should I do if {X}?",
                "If {X}, what should I do?",
                "What do I do if {X}?",
                "What can I do if {X}?",
            ),
            slots={"X": lambda x: _any(x) and 2 <= len(_tokens(x)) <= 20},
        ),
        Family(
            "duration",
            ("How long does it take to {X}?", "How much time does it take to {X}?"),
            slots={"X": _clause(1)},
        ),
        Family(
            "year",
            (
                "When {do} {R}?",
                "In what year {do} {R}?",
                "In which year {do} {R}?",
                "What year {do} {R}?",
            ),
            slots={"R": _not(_words(2, 14), *_PERSONAL, *_NOT_EVENTS)},
            tense="past",
        ),
        Family(
            "year_passive",
            ("When {be} {R}?", "In what year {be} {R}?", "What year {be} {R}?"),
            slots={"R": _not(_noun_phrase(7), "time")},
            tense="past",
            slot_regex={
                "R": r"[^?!\n]+?\s(?:born|built|founded|invented|discovered|written|made|"
                r"created|released|established|signed|launched|introduced|published|"
                r"formed|completed|painted|assassinated|elected|abolished|opened)"
            },
        ),
    )


# --- parsing and writing ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Pattern:
    family: Family
    text: str
    end: str
    parts: tuple[tuple[str, str], ...]
    """("literal", text), ("slot", name), ("grammar", name) or ("lexicon", form), in order."""
    regex: re.Pattern[str]
    weight: int
    """How much of the pattern is fixed words: the most specific matching pattern wins."""
    opener: str | None


def _literal_regex(text: str) -> str:
    out: list[str] = []
    for char in text:
        if char.isspace():
            if not out or out[-1] != r"\s+":
                out.append(r"\s+")
        elif char in "'\u2019":
            out.append(r"['\u2019]?")
        elif char == ",":
            out.append(r"(?:,|\s+[-\u2013])?")  # "Which is better, A or B" / "better - A or B"
        elif char == ":":
            out.append(":?")
        else:
            out.append(re.escape(char))
    return "".join(out)


def _compile(family: Family, text: str) -> _Pattern:
    end = text[-1] if text[-1] in "?." else ""
    body = text[:-1] if end else text
    parts: list[tuple[str, str]] = []
    regex = [r"^\s*"]
    weight = 0
    for chunk in re.split(r"(\{\w+\})", body):
        if not chunk:
            continue
        if not chunk.startswith("{"):
            parts.append(("literal", chunk))
            regex.append(_literal_regex(chunk))
            weight += sum(c.isalpha() for c in chunk)
            continue
        name = chunk[1:-1]
        if name in _GRAMMAR:
            parts.append(("grammar", name))
            regex.append(f"(?P<_{name}>{'|'.join(_GRAMMAR[name][family.tense])})")
            weight += 2
        elif name == "s":
            parts.append(("grammar", name))
            regex.append(r"(?P<_s>s?)")
        elif name == "pos":
            parts.append(("grammar", name))
            regex.append(r"(?P<_pos>['\u2019]s|['\u2019])")
            weight += 1
        elif name in family.forms:
            parts.append(("lexicon", name))
            words = sorted({row[name] or "" for row in family.lexicon} - {""}, key=len)[::-1]
            regex.append(rf"\b(?P<_lex_{name}>{'|'.join(map(re.escape, words))})\b")
        elif name in family.optional:
            parts.append(("slot", name))
            if regex[-1].endswith(r"\s+"):
                regex[-1] = regex[-1][: -len(r"\s+")]
            regex.append(rf"(?:\s+(?P<{name}>{family.slot_regex.get(name, _SLOT)}))?")
        else:
            parts.append(("slot", name))
            slot = name[:-1] if name.endswith("3") else name
            regex.append(f"(?P<{name}>{family.slot_regex.get(slot, _SLOT)})")
    regex.append(r"\s*[?.!]*\s*$")
    opener = parts[0][1].split()[0] if parts[0][0] == "literal" else None
    return _Pattern(
        family,
        text,
        end or "?",
        tuple(parts),
        re.compile("".join(regex), re.IGNORECASE),
        weight,
        _first_word(opener) if opener else None,
    )


def _first_word(text: str) -> str:
    match = re.match(r"\s*([A-Za-z]+)", text)
    return match.group(1).lower() if match else ""


@cache
def _patterns() -> tuple[_Pattern, ...]:
    return tuple(_compile(family, text) for family in _families() for text in family.patterns)


@cache
def _patterns_by_opener() -> Mapping[str | None, tuple[_Pattern, ...]]:
    index: dict[str | None, list[_Pattern]] = {}
    for pattern in _patterns():
        index.setdefault(pattern.opener, []).append(pattern)
    return {opener: tuple(found) for opener, found in index.items()}


@dataclass(frozen=True)
class Parsed:
    """A question read as one pattern of a family: its slots, where they are, and its grammar."""

    text: str
    family: Family
    pattern: _Pattern
    slots: Mapping[str, str]
    spans: Mapping[str, tuple[int, int]]
    lexical: Mapping[str, str]
    plural: bool | None
    past: bool
    opening_slots: frozenset[str]
    """Slots that opened the question (their article may need a small letter elsewhere)."""


def _read(pattern: _Pattern, match: re.Match[str], text: str) -> Parsed | None:
    family = pattern.family
    slots: dict[str, str] = {}
    spans: dict[str, tuple[int, int]] = {}
    opening: set[str] = set()
    lexical: dict[str, str] = {}
    plural: bool | None = None
    past = family.tense == "past"
    first = len(text) - len(text.lstrip())
    for kind, name in pattern.parts:
        if kind == "slot":
            raw = match.group(name) or ""
            key = name[:-1] if name.endswith("3") else name
            value = raw.strip()
            start = (match.start(name) if raw else 0) + len(raw) - len(raw.lstrip())
            if name.endswith("3"):
                base = _base_form(value)
                if base is None:
                    return None
                value = base
            if not family.slots.get(key, _any)(value):
                return None
            slots[key] = value
            spans[key] = (start, start + len(raw.strip()))
            if raw and start == first:
                opening.add(key)
        elif (kind == "grammar" and name in _GRAMMAR) or name == "s":
            word = match.group(f"_{name}").lower()
            if name != "be1" and word in _SINGULAR_FORMS | {"s"}:
                plural = False
            elif name != "be1" and (word in _PLURAL_FORMS):
                plural = True
            if word in _PAST_FORMS:
                past = True
            elif family.tense == "any" and name != "s":
                past = False
        elif kind == "lexicon":
            lexical[name] = match.group(f"_lex_{name}").lower()
    if family.lexicon and not _rows(family, lexical):
        return None
    return Parsed(text, family, pattern, slots, spans, lexical, plural, past, frozenset(opening))


def _rows(family: Family, lexical: Mapping[str, str]) -> list[Mapping[str, str | None]]:
    return [r for r in family.lexicon if all(r.get(f) == w for f, w in lexical.items())]


def parse(question: str) -> Parsed | None:
    """The question as (family, slots) when the most specific matching pattern is unambiguous."""
    if not question.strip() or len(question) > 300:
        return None
    candidates: list[tuple[int, Parsed]] = []
    by_opener = _patterns_by_opener()
    for pattern in by_opener.get(_first_word(question), ()) + by_opener.get(None, ()):
        match = pattern.regex.match(question)
        if match is None:
            continue
        parsed = _read(pattern, match, question)
        if parsed is not None:
            weight = pattern.weight + sum(len(w) for w in parsed.lexical.values())
            candidates.append((weight, parsed))
    if not candidates:
        return None
    top = max(weight for weight, _ in candidates)
    best = [parsed for weight, parsed in candidates if weight == top]
    if len({parsed.family.name for parsed in best}) > 1:
        return None
    return best[0]


def render(
    parsed: Parsed, pattern: _Pattern, rng: random.Random, *, swap: bool = False
) -> str | None:
    """The parsed question written with pattern (of its family), or None where it cannot be."""
    family = parsed.family
    condition = family.when.get(pattern.text)
    if condition is not None and not condition(parsed):
        return None
    slots = dict(parsed.slots)
    if swap and family.symmetric is not None:
        a, b = family.symmetric
        slots[a], slots[b] = slots[b], slots[a]
    if family.subject is not None and (parsed.plural is None or swap):
        plural = _plural(slots[family.subject])
    else:
        plural = bool(parsed.plural)
    rows = _rows(family, parsed.lexical)
    lexical = {form: w for form in family.forms if (w := _choose(rows, form, rng)) is not None}
    out: list[str] = []
    for index, (kind, name) in enumerate(pattern.parts):
        if kind == "literal":
            out.append(name)
        elif kind == "slot":
            key = name[:-1] if name.endswith("3") else name
            value = _third_person(slots[key]) if name.endswith("3") else slots[key]
            if index > 0 and key in parsed.opening_slots and not swap:
                value = _in_sentence(value)
            if key in family.optional:
                value = f" {value}" if value else ""
            out.append(value)
        elif kind == "lexicon":
            if name not in lexical:
                return None
            out.append(lexical[name])
        else:
            out.append(_grammar(name, plural, parsed.past, "".join(out)))
    text = re.sub(r"\s+", " ", "".join(out)).strip()
    if text.endswith(".") and pattern.end == ".":
        text = text[:-1]  # "Tell me the IQ of Martin Luther King Jr.."
    return _capitalised(text) + pattern.end


def _choose(rows: Sequence[Mapping[str, str | None]], form: str, rng: random.Random) -> str | None:
    words = sorted({w for r in rows if (w := r.get(form))})
    return rng.choice(words) if words else None


def _grammar(name: str, plural: bool, past: bool, before: str) -> str:
    if name == "pos":
        return "'" if before.endswith("s") else "'s"
    if name == "s":
        return "" if plural else "s"
    if name == "be1":
        return "was" if past else "is"
    forms = {
        "be": (("is", "are"), ("was", "were")),
        "do": (("does", "do"), ("did", "did")),
        "has": (("has", "have"), ("had", "had")),
    }[name]
    return forms[past][plural]


def _swappable(parsed: Parsed) -> bool:
    """Whether the symmetric slots can trade places: neither carries a tail ("B in Python")."""
    if parsed.family.symmetric is None:
        return False
    return not any(
        w in _TAIL_PREPOSITIONS for s in parsed.family.symmetric for w in _tokens(parsed.slots[s])
    )


def _same(a: str, b: str) -> bool:
    return _fold(re.sub(r"[^\w\s]", "", a)) == _fold(re.sub(r"[^\w\s]", "", b))


def rewrites(parsed: Parsed, rng: random.Random) -> list[str]:
    """The question in every other pattern of its family: same slots, another frame."""
    found: list[str] = []
    patterns = [p for p in _patterns() if p.family is parsed.family]
    for pattern in patterns:
        for swap in (False, True) if _swappable(parsed) else (False,):
            if pattern is parsed.pattern and not swap:
                continue
            text = render(parsed, pattern, rng, swap=swap)
            if text is not None and not _same(text, parsed.text) and text not in found:
                found.append(text)
    return found


_FRONTABLE_CLASSES = _word_set(
    "tech-languages tech-databases tech-clouds tech-os tech-distros tech-browsers tech-editors "
    "tech-frameworks tech-vcs tech-containers tech-orchestrators tech-shells countries cities "
    "us-states continents languages"
)
_QUESTION_OPENERS = _word_set(
    "how what which who why when where is are can could should do does will would"
)


def fronted(question: str) -> list[str]:
    """ "How do I parse a date in Kotlin?" <-> "In Kotlin, how do I parse a date?"."""
    back = re.match(
        r"^\s*(?P<q>[^?]+)\s+(?P<prep>in|on|using)\s+(?P<ctx>[^?,]+?)\s*\?\s*$", question, re.I
    )
    front = re.match(
        r"^\s*(?P<prep>in|on|using)\s+(?P<ctx>[^?,]+?),\s*(?P<q>[^?]+?)\s*\?\s*$", question, re.I
    )
    match = back or front
    if match is None or not _context(match.group("ctx")):
        return []
    q, prep, ctx = match.group("q"), match.group("prep"), match.group("ctx")
    words = _tokens(q)
    if _first_word(q) not in _QUESTION_OPENERS or len(words) < 3 or "," in q:
        return []
    if any(w in ("and", "or", "compare", "compared") for w in words):
        return []  # two clauses: the place may belong to either
    if back:
        opener, _, rest = q.partition(" ")
        q_inside = (opener.lower() if opener != "I" else opener) + " " + rest
        return [f"{prep.capitalize()} {ctx}, {q_inside}?"]
    return [f"{_capitalised(q)} {prep.lower()} {ctx}?"]


def _context(text: str) -> bool:
    """A whole phrase naming a place, a language or a tool ("Python", "the United States")."""
    bare = re.sub(r"^the\s+", "", text.strip(), flags=re.I)
    found = siblings().find(bare)
    return (
        len(found) > 0
        and found[0].start == 0
        and found[0].end == len(bare)
        and any(siblings().names[f.group] in _FRONTABLE_CLASSES for f in found)
    )


def alias_swaps(text: str) -> list[str]:
    """text with one name traded for another of its alias group: the same question.

    Left alone: a name inside `code`, a constant in capitals ("INFO"), and a group named twice
    ("Why was Calcutta renamed Kolkata?" is about the names themselves).
    """
    groups = aliases()
    hits = groups.find(text)
    code = [m.span() for m in re.finditer(r"`[^`]*`", text)]
    found: list[str] = []
    taken = -1
    for hit in hits:
        if hit.start < taken:
            continue
        taken = hit.end
        written = groups.members[hit.group][hit.member][0].text
        if any(a <= hit.start < b for a, b in code) or _constant(hit.raw, written):
            continue
        if any(h.group == hit.group and h.member != hit.member for h in hits):
            continue
        for other, (term,) in enumerate(groups.members[hit.group]):
            if other == hit.member:
                continue
            new_word = _cased_like(term.text, written, hit.raw)
            following = _tokens(text[hit.end :])[:1]
            if following and following[0] == _tokens(new_word)[-1]:
                continue  # "RAM memory" would read "random access memory memory"
            new = _replace(text, hit.start, hit.end, new_word)
            if not _same(new, text) and new not in found:
                found.append(new)
    return found


def _constant(raw: str, written: str) -> bool:
    """ "INFO" for "info": a name in capitals that is not an acronym reads as code."""
    return len(raw) > 1 and raw.isupper() and not written.isupper()


def sibling_swaps(parsed: Parsed, rng: random.Random) -> list[str]:
    """The question with one class member inside a slot traded for a sibling: another question.

    Everything else stays as it was, so the pair differs in that one word or phrase; a sibling
    already named elsewhere in the question is never used ("Python or Java" stays two names).
    """
    groups = siblings()
    text = parsed.text
    present = {(f.group, f.member) for f in groups.find(text)}
    found: list[str] = []
    for start, end in parsed.spans.values():
        for hit in groups.find(text, start, end):
            written = groups.members[hit.group][hit.member][0].text
            options = [
                m
                for m in range(len(groups.members[hit.group]))
                if m != hit.member and (hit.group, m) not in present
            ]
            for other in rng.sample(options, min(3, len(options))):
                term = groups.members[hit.group][other][0].text
                new = _replace(text, hit.start, hit.end, _cased_like(term, written, hit.raw))
                if not _same(new, text) and new not in found:
                    found.append(new)
    return found


def sibling_reworded(parsed: Parsed, rng: random.Random) -> list[str]:
    """A sibling swap written in another pattern: a new frame and one changed slot."""
    found: list[str] = []
    for swapped in sibling_swaps(parsed, rng):
        again = parse(swapped)
        if again is not None and again.family is parsed.family:
            options = [t for t in rewrites(again, rng) if not _same(t, parsed.text)]
            if options:
                found.append(rng.choice(options))
    return found


def frame_pairs(questions: Sequence[str], seed: int, per_question: int) -> list[TrainingPair]:
    """Pairs built from each question, up to per_question of each origin, in question order.

    Positives: frame rewrites ("frames:<family>", "frames:fronted") and alias swaps ("aliases").
    Negatives: sibling swaps inside a slot ("frames:sibling"), also with the frame reworded
    ("frames:sibling_reworded"). Each question draws from its own generator seeded by seed and
    its text, so a question's pairs do not depend on the others; the order within a pair (which
    side is the cached prompt) is drawn too, since the cache meets both.
    """
    made: list[TrainingPair] = []
    seen: set[frozenset[str]] = set()
    for question in questions:
        rng = random.Random(f"{seed}\x00{question}")
        groups: list[tuple[str, float, list[str]]] = []
        parsed = parse(question)
        if parsed is not None:
            groups.append((f"frames:{parsed.family.name}", 1.0, rewrites(parsed, rng)))
            groups.append(("frames:sibling", 0.0, sibling_swaps(parsed, rng)))
            groups.append(("frames:sibling_reworded", 0.0, sibling_reworded(parsed, rng)))
        groups.append(("frames:fronted", 1.0, fronted(question)))
        groups.append(("aliases", 1.0, alias_swaps(question)))
        for origin, label, texts in groups:
            for text in rng.sample(texts, min(per_question, len(texts))):
                key = frozenset((question, text))
                if key in seen:
                    continue
                seen.add(key)
                query, cached = (text, question) if rng.random() < 0.5 else (question, text)
                made.append(TrainingPair(query, cached, label, origin))
    return made


# --- mining Quora's duplicates and the report -------------------------------------------------


def mine_frame_rewrites(pairs: Iterable[tuple[str, str]], top: int) -> list[tuple[int, str, str]]:
    """The most frequent openings that differ between duplicates sharing everything after them.

    For each labelled duplicate, the longest common word suffix (at least two words, one of them
    a content word) is taken as the slot, and the two different openings as a frame rewrite.
    """
    counts: Counter[tuple[str, str]] = Counter()
    for query, cached in pairs:
        a = re.findall(r"[a-z0-9]+(?:'[a-z]+)?", query.lower().replace("\u2019", "'"))
        b = re.findall(r"[a-z0-9]+(?:'[a-z]+)?", cached.lower().replace("\u2019", "'"))
        common = 0
        while common < min(len(a), len(b)) and a[-1 - common] == b[-1 - common]:
            common += 1
        head_a, head_b = a[: len(a) - common], b[: len(b) - common]
        if common < 2 or not (head_a or head_b) or max(len(head_a), len(head_b)) > 7:
            continue
        if all(w in _stopwords() for w in a[len(a) - common :]):
            continue
        first, second = sorted((" ".join(head_a), " ".join(head_b)))
        counts[(first, second)] += 1
    return [(n, first, second) for (first, second), n in counts.most_common(top)]


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


_OWN_KINDS = ("frames:sibling", "frames:sibling_reworded", "frames:fronted", "aliases")


def _report_kind(origin: str) -> str:
    """The sample's sections: each family's rewrites together, every other origin alone."""
    return origin if origin in _OWN_KINDS else "frames:<family>"


def main(argv: Sequence[str] | None = None) -> int:
    """Print what frame_pairs makes from the shared questions, for a person to judge."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--questions", type=int, default=4000, help="Quora questions sampled")
    parser.add_argument("--per-question", type=int, default=2)
    parser.add_argument("--examples", type=int, default=15)
    parser.add_argument("--mined", type=int, default=40)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    quora = _read_jsonl(args.data_dir / "qqp_train.jsonl")
    mined = mine_frame_rewrites(
        ((str(r["query"]), str(r["cached"])) for r in quora if r["duplicate"]), args.mined
    )
    print("frame rewrites mined from Quora duplicates (count: opening | opening)")
    for count, first, second in mined:
        print(f"  {count:4d}: {first or '(none)'} | {second or '(none)'}")
    every = sorted({str(r[k]) for r in quora for k in ("query", "cached")})
    sets = {
        "qqp_train": rng.sample(every, min(args.questions, len(every))),
        "gptcache_mock": sorted(
            {
                str(r[k])
                for r in _read_jsonl(args.data_dir / "gptcache_mock_dev.jsonl")
                for k in ("query", "cached")
            }
        ),
    }
    for name, questions in sets.items():
        parsed = [p for q in questions if (p := parse(q)) is not None]
        families = Counter(p.family.name for p in parsed)
        print(
            f"\n{name}: {len(questions)} texts, {len(parsed)} match a frame "
            f"({len(parsed) / max(1, len(questions)):.1%})"
        )
        print("  " + ", ".join(f"{f} {n}" for f, n in families.most_common()))
        pairs = frame_pairs(questions, args.seed, args.per_question)
        origins = Counter(p.origin for p in pairs)
        for origin, count in sorted(origins.items()):
            print(f"  {origin:<28} {count:6d}")
        by_kind: dict[str, list[TrainingPair]] = {}
        for pair in pairs:
            by_kind.setdefault(_report_kind(pair.origin), []).append(pair)
        for kind, chosen in sorted(by_kind.items()):
            shown = rng.sample(chosen, min(args.examples, len(chosen)))
            print(f"\n  {kind}: {len(chosen)} pairs, {len(shown)} at random")
            for pair in shown:
                label = pair.origin.removeprefix("frames:")
                print(f"    [{label}] {pair.query}  ||  {pair.cached}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
