"""Lexical guards: catch the look-alike prompts that a sentence embedding scores as near-identical.

A mean-pooled sentence embedding barely moves when one word changes, yet "capital of Austria" and
"capital of Australia", "Celsius to Fahrenheit" and "Fahrenheit to Celsius", "with" and "without"
ask different things. This module reads both prompts as words and reports two things:

- **mismatches**: hard evidence that the prompts ask different things (a different number, a
  negation on one side only, an antonym swapped in, two terms trading places, a different named
  entity, where two names of one thing in ``aliases.txt`` count as one). A hit policy vetoes a
  candidate on any of them.
- **features**: graded signals (how many content words lack a counterpart, word overlap, ...) that
  a learned gray-zone model weighs together with the cosine (see `semcache_server.calibration`).

Everything here is pure Python over short strings, so a comparison costs tens of microseconds;
analyses are cached by text because cached prompts are compared again and again.

The word lists (stopwords, negations, number words, opposites, ...) are package data, one plain-text
file each in ``core/policies/words/``, read once at import; each file says what its list is for
and what is deliberately left out. Only the tokenizer's grammar (contractions, clitics,
punctuation) stays in code.
"""

from __future__ import annotations

import enum
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


def _table(name: str) -> tuple[tuple[str, ...], ...]:
    """The rows of a word list in ``core/policies/words/``, each split into its fields.

    Read once at import, so no comparison touches the disk; blank lines and ``#`` comments are
    skipped. The callers unpack every row, so a line with the wrong number of fields fails loudly.
    """
    path = resources.files("semcache_server.core") / "policies" / "words" / name
    rows = (line.split() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(tuple(row) for row in rows if row and not row[0].startswith("#"))


# What each list is for, and what it deliberately leaves out, is written at the top of its file.
STOPWORDS = frozenset(word for (word,) in _table("stopwords.txt"))
NEGATIONS = frozenset(word for (word,) in _table("negations.txt"))
_NUMBER_WORDS = {word: value for word, value in _table("number-words.txt")}
_OPPOSITES = tuple((a, b) for a, b in _table("opposites.txt"))
_NEGATING_PREFIXES = tuple(prefix for (prefix,) in _table("negating-prefixes.txt"))
_MIN_NEGATED_BASE = 5
_SYMMETRIC_LINKS = frozenset(word for (word,) in _table("symmetric-links.txt"))
_MAX_LINK_WORDS = 3
_MAX_PHRASE_WORDS = 3
_MIN_NAME_PREFIX = 4
_ARTICLES = frozenset(word for (word,) in _table("articles.txt"))
_ANSWER_KINDS = frozenset(word for (word,) in _table("answer-kinds.txt"))
_ROMAN = {numeral: value for numeral, value in _table("roman-numerals.txt")}
_ROMAN_CUES = frozenset(word for (word,) in _table("roman-cues.txt"))

_TOKEN = re.compile(
    r"\d+(?:[.,:]\d+)*(?:st|nd|rd|th|s|k|m|x|%)?"  # numbers, 3rd, 1990s, 10k, 2x, 50%
    r"|[^\W\d_]+(?:'[^\W\d_]+)*"  # words with apostrophes: isn't, Fahrenheit's
    r"|[^\w\s]",  # punctuation, one mark a token
)
_CONTRACTION_BASES = {"ca": "can", "wo": "will", "sha": "shall", "ai": "is"}
_CLITICS = ("'s", "'re", "'ve", "'ll", "'d", "'m")
_SENTENCE_END = frozenset({".", "?", "!", ":", ";", '"', "“", "”", "(", ")"})


class Mismatch(enum.Enum):
    """A reason to believe two look-alike prompts ask different things."""

    NUMBER = "number"
    """Both mention numbers, and not the same ones ("3rd year" / "2nd year")."""
    NEGATION = "negation"
    """One side is negated and the other is not ("with" / "without", "is" / "isn't")."""
    OPPOSITE = "opposite"
    """A word is replaced by its opposite ("best" / "worst", "fold" / "unfold")."""
    SWAPPED_ROLES = "swapped_roles"
    """Two terms trade places around the same link ("Celsius to Fahrenheit" / the reverse)."""
    ENTITY = "entity"
    """Each side names something the other does not ("Austria" / "Australia")."""


@dataclass(frozen=True)
class Word:
    text: str
    """Lowercased, accents removed."""
    stem: str
    """What two forms of one word share ("rivers" -> "river")."""
    entity: bool
    """Capitalised mid-sentence, all capitals or mixing letters and digits: probably a name."""


@dataclass(frozen=True)
class Analysis:
    """One prompt read as words; computed once per text and cached."""

    words: tuple[Word, ...]
    content: tuple[Word, ...]
    """Words that carry the topic: not function words, negations or numbers."""
    sequence: tuple[str, ...]
    """Stems of every token in order, punctuation included (for the swapped-roles guard)."""
    numbers: tuple[str, ...]
    """Normalised numbers, sorted ("2nd" -> "2th", "1,000" -> "1000", "twelve" -> "12")."""
    negations: int
    answer_kinds: frozenset[str]
    stems: frozenset[str]
    alias_groups: frozenset[int] = frozenset()
    """The alias groups (``aliases.txt``) a member of which the prompt names."""
    aliased: frozenset[tuple[str, int]] = frozenset()
    """(word, group) for each word that is part of such a member ("js" of JS, "united" of
    United States)."""


def stem(word: str) -> str:
    """A deliberately light suffix stripper, enough to pair the forms of one word.

    It maps a word family onto one key ("make", "makes", "making" -> "mak"; "call", "called" ->
    "cal"); the keys are not words, only something two prompts can share.
    """
    w = word
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and w.endswith("es") and w[:-2].endswith(("s", "x", "z", "ch", "sh")):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    elif len(w) > 4 and w.endswith("ing") and any(c in "aeiouy" for c in w[:-3]):
        w = w[:-3]
    elif len(w) > 3 and w.endswith("ed") and not w.endswith("eed"):
        w = w[:-2]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiou":
        w = w[:-1]  # running -> runn -> run, called -> call -> cal
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]  # make / making
    return w


def _opposites_by_stem() -> dict[str, frozenset[str]]:
    """The opposites table keyed by stem, so "uploading" meets "downloads"."""
    table: dict[str, frozenset[str]] = {}
    for first, second in _OPPOSITES:
        a, b = stem(first), stem(second)
        table[a] = table.get(a, frozenset()) | {b}
        table[b] = table.get(b, frozenset()) | {a}
    return table


OPPOSITES = _opposites_by_stem()


_NUMBER = re.compile(r"(\d+(?:\.\d+)*)(st|nd|rd|th|s)?")


_ROMAN_CUE_STEMS = frozenset(stem(word) for word in _ROMAN_CUES)
"""The cues as `_roman` meets them: it stems the word before the numeral ("type" -> "typ")."""


def _roman(raw: str, previous: str) -> str | None:
    """The value of an upper-case Roman numeral ("World War II", "CFA level I"), else None."""
    value = _ROMAN.get(raw)
    if value is None or (len(raw) == 1 and stem(previous) not in _ROMAN_CUE_STEMS):
        return None
    return value


def _number(token: str) -> str | None:
    """A canonical spelling of a number token, or None when the token is no number."""
    if not token[0].isdigit():
        return _NUMBER_WORDS.get(token)
    value = token.replace(",", "").replace(":", ".")
    match = _NUMBER.fullmatch(value)
    if match is None:
        return value  # 10k, 2x, 50%: compare as written
    digits, suffix = match.groups()
    if "." not in digits:
        digits = digits.lstrip("0") or "0"
    if suffix in ("st", "nd", "rd", "th"):
        return f"{digits}th"
    return digits  # "1990s" and "1990's" name the same decade


def _fold(text: str) -> str:
    """Compatibility-normalised, accents removed ("Pokémon" -> "Pokemon"), curly quotes straight."""
    decomposed = unicodedata.normalize("NFKD", text.replace("\u2019", "'"))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _split_tokens(text: str) -> list[tuple[str, str]]:
    """(lowercased, original) tokens with contractions opened: "isn't" -> "is", "not"."""
    tokens: list[tuple[str, str]] = []
    for raw in _TOKEN.findall(_fold(text)):
        low = raw.lower()
        if low.endswith("n't") and len(low) > 3:
            base = low[:-3]
            tokens.append((_CONTRACTION_BASES.get(base, base), raw[:-3]))
            tokens.append(("not", "not"))
            continue
        if low == "cannot":
            tokens += [("can", raw[:3]), ("not", "not")]
            continue
        for clitic in _CLITICS:
            if low.endswith(clitic) and len(low) > len(clitic):
                low, raw = low[: -len(clitic)], raw[: -len(clitic)]
                break
        tokens.append((low, raw))
    return tokens


AliasMember = tuple[tuple[str, ...], bool, int]
"""A member's word tokens, whether its case must match exactly, and its group."""


def _alias_members() -> dict[str, tuple[AliasMember, ...]]:
    """``aliases.txt`` indexed by each member's first word (lowercased)."""
    path = resources.files("semcache_server.core") / "policies" / "words" / "aliases.txt"
    index: dict[str, list[AliasMember]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    groups = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for group, line in enumerate(groups):
        for member in line.split("|"):
            member = member.strip()
            exact = member.startswith("=")
            words = [
                raw if exact else low
                for low, raw in _split_tokens(member.removeprefix("="))
                if low[0].isalnum()
            ]
            if words:
                index.setdefault(words[0].lower(), []).append((tuple(words), exact, group))
    return {first: tuple(members) for first, members in index.items()}


def _aliases_named(
    tokens: list[tuple[str, str]],
) -> tuple[frozenset[int], frozenset[tuple[str, int]]]:
    """The alias groups whose members occur in tokens (word tokens, in order), and the words
    that make up each occurrence."""
    groups: set[int] = set()
    aliased: set[tuple[str, int]] = set()
    for start, (low, _) in enumerate(tokens):
        for words, exact, group in _ALIAS_MEMBERS.get(low, ()):
            end = start + len(words)
            found = [raw if exact else lowered for lowered, raw in tokens[start:end]]
            if tuple(found) == words:
                groups.add(group)
                aliased.update((lowered, group) for lowered, _ in tokens[start:end])
    return frozenset(groups), frozenset(aliased)


def _looks_like_name(raw: str, sentence_start: bool) -> bool:
    if any(c.isdigit() for c in raw) and any(c.isalpha() for c in raw):
        return True  # i5, Python3, COVID19
    if len(raw) > 1 and (raw.isupper() or any(c.isupper() for c in raw[1:])):
        return True  # USA, NASA, iPhone
    return raw[:1].isupper() and not sentence_start and raw != "I"


_ALIAS_MEMBERS = _alias_members()


@lru_cache(maxsize=8192)
def analyse(text: str) -> Analysis:
    """Read a prompt as words (cached: a cached prompt is compared with many queries)."""
    words: list[Word] = []
    content: list[Word] = []
    sequence: list[str] = []
    numbers: list[str] = []
    negations = 0
    sentence_start = True
    previous = ""
    word_tokens: list[tuple[str, str]] = []
    for low, raw in _split_tokens(text):
        if not low[0].isalnum():
            sequence.append(low)
            sentence_start = sentence_start or low in _SENTENCE_END
            continue
        word_tokens.append((low, raw))
        number = _roman(raw, previous) or _number(low)
        previous = low
        word = Word(low, number or stem(low), _looks_like_name(raw, sentence_start))
        sentence_start = False
        words.append(word)
        if low not in _ARTICLES:  # "string to an integer" reads as "string to a integer"
            sequence.append(word.stem)
        if number is not None:
            numbers.append(number)
        elif low in NEGATIONS:
            negations += 1
        elif low not in STOPWORDS:
            content.append(word)
    alias_groups, aliased = _aliases_named(word_tokens)
    return Analysis(
        words=tuple(words),
        content=tuple(content),
        sequence=tuple(sequence),
        numbers=tuple(sorted(numbers)),
        negations=negations,
        answer_kinds=frozenset(w.text for w in words if w.text in _ANSWER_KINDS),
        stems=frozenset(w.stem for w in words),
        alias_groups=alias_groups,
        aliased=aliased,
    )


def _negated_form(a: str, b: str) -> bool:
    """Whether one word is the other with a negating prefix ("unfold"/"fold")."""
    short, long = (a, b) if len(a) < len(b) else (b, a)
    if len(short) < _MIN_NEGATED_BASE:
        return False
    return any(long == prefix + short for prefix in _NEGATING_PREFIXES)


def _opposite_swapped_in(a: Analysis, b: Analysis) -> bool:
    """A word of one side is missing from the other, which has its opposite instead."""
    only_a, only_b = a.stems - b.stems, b.stems - a.stems
    if any(OPPOSITES.get(word, frozenset()) & only_b for word in only_a):
        return True
    # Negating prefixes are matched on whole words: stems would cut "folding" to "fold".
    texts_a, texts_b = {w.text for w in a.words}, {w.text for w in b.words}
    return any(
        _negated_form(word, other) for word in texts_a - texts_b for other in texts_b - texts_a
    )


def _swapped_roles(a: Analysis, b: Analysis) -> bool:
    """Some "X link Y" in a reads "Y link X" in b, with the same asymmetric link between them.

    The link is one to three tokens ("to", "better than", "prefer hairless"); a link holding a
    symmetric word ("and", "vs", "between", a comma) is skipped: "X and Y" asks what "Y and X" asks.
    """
    seq_a, seq_b = a.sequence, b.sequence
    positions_b: dict[str, list[int]] = {}
    for index, token in enumerate(seq_b):
        positions_b.setdefault(token, []).append(index)
    # Terms that occur once on each side: a repeated word has no single role to swap.
    counts_a, counts_b = Counter(seq_a), Counter(seq_b)
    terms = {
        term
        for term in {w.stem for w in a.content} | set(a.numbers)
        if counts_a[term] == 1 and counts_b[term] == 1
    }
    for i, x in enumerate(seq_a):
        if x not in terms or x not in positions_b:
            continue
        for gap in range(1, _MAX_LINK_WORDS + 1):
            j = i + gap + 1
            if j >= len(seq_a):
                break
            y = seq_a[j]
            link = seq_a[i + 1 : j]
            if y == x or y not in terms or y not in positions_b:
                continue
            if any(token in _SYMMETRIC_LINKS for token in link):
                continue
            if not any(token[0].isalnum() for token in link):
                continue  # quotes or brackets around a term relate nothing
            for start in positions_b[y]:
                end = start + gap + 1
                if seq_b[start + 1 : end] == link and _leads_to(seq_b, end, x):
                    return True
    return False


def _leads_to(sequence: tuple[str, ...], start: int, term: str) -> bool:
    """term opens the words at start, or ends a short phrase there ("to ethanoic acid")."""
    for index in range(start, min(start + _MAX_PHRASE_WORDS, len(sequence))):
        if sequence[index] == term:
            return True
        if not sequence[index][0].isalnum() or sequence[index] in _SYMMETRIC_LINKS:
            return False
    return False


def _mentions(name: str, stems: frozenset[str]) -> bool:
    """Whether a name occurs among stems, also as the start of a longer form ("India"/"Indian")."""
    if name in stems:
        return True
    return len(name) >= _MIN_NAME_PREFIX and any(
        other.startswith(name) or (len(other) >= _MIN_NAME_PREFIX and name.startswith(other))
        for other in stems
    )


def _unmentioned_names(a: Analysis, b: Analysis) -> set[str]:
    """Names of a that b does not mention, by themselves or by an alias ("JS"/"JavaScript")."""
    return {
        w.stem
        for w in a.content
        if w.entity
        and not _mentions(w.stem, b.stems)
        and not any((w.text, group) in a.aliased for group in b.alias_groups)
    }


def findings(prompt: str, candidate: str) -> tuple[str, ...]:
    """The mismatches between two prompts, named for a response that explains a refusal."""
    return tuple(m.value for m in mismatches(analyse(prompt), analyse(candidate)))


def mismatches(a: Analysis, b: Analysis) -> tuple[Mismatch, ...]:
    """Every hard reason to believe a and b ask different things (empty: none found)."""
    found: list[Mismatch] = []
    if a.numbers and b.numbers and Counter(a.numbers) != Counter(b.numbers):
        found.append(Mismatch.NUMBER)
    if bool(a.negations) != bool(b.negations):
        found.append(Mismatch.NEGATION)
    if _opposite_swapped_in(a, b):
        found.append(Mismatch.OPPOSITE)
    if _swapped_roles(a, b) or _swapped_roles(b, a):
        found.append(Mismatch.SWAPPED_ROLES)
    if _unmentioned_names(a, b) and _unmentioned_names(b, a):
        found.append(Mismatch.ENTITY)
    return tuple(found)


FEATURE_NAMES: tuple[str, ...] = (
    "cosine",
    "unmatched_share",
    "unmatched_max",
    "unmatched_min",
    "overlap",
    "name_only_one_side",
    "number_only_one_side",
    "answer_kind_differs",
    "length_ratio",
    "order_inversions",
)
"""The graded signals a learned gray-zone model sees, in the order `features` returns them."""


def _unmatched(words: tuple[Word, ...], other: frozenset[str]) -> int:
    return sum(1 for w in words if w.stem not in other)


def features(a: Analysis, b: Analysis, cosine: float) -> tuple[float, ...]:
    """Graded evidence about a pair, in FEATURE_NAMES order.

    Counts are squashed (log1p) or taken as shares so that long prompts, which differ in more
    words while asking the same thing, are not judged by the yardstick of short questions.
    """
    content_a = {w.stem for w in a.content}
    content_b = {w.stem for w in b.content}
    missing_a = _unmatched(a.content, b.stems)
    missing_b = _unmatched(b.content, a.stems)
    total = max(1, len(a.content) + len(b.content))
    union = content_a | content_b
    overlap = len(content_a & content_b) / len(union) if union else 1.0
    shorter, longer = sorted((len(a.words), len(b.words)))
    return (
        cosine,
        (missing_a + missing_b) / total,
        math.log1p(max(missing_a, missing_b)),
        math.log1p(min(missing_a, missing_b)),
        overlap,
        float(bool(_unmentioned_names(a, b)) != bool(_unmentioned_names(b, a))),
        float(bool(a.numbers) != bool(b.numbers)),
        float(a.answer_kinds != b.answer_kinds),
        shorter / max(1, longer),
        math.log1p(_order_inversions(a, b)),
    )


def _order_inversions(a: Analysis, b: Analysis) -> int:
    """Pairs of shared content words that appear in the opposite order on the other side."""
    first_b: dict[str, int] = {}
    for index, w in enumerate(b.content):
        first_b.setdefault(w.stem, index)
    order = [first_b[w.stem] for w in a.content if w.stem in first_b]
    return sum(1 for i, x in enumerate(order) for y in order[i + 1 :] if x > y)
